package apply

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Builds never reach a network. The Engine pulls on its own whenever a
// Dockerfile names an image it does not hold (FROM, COPY --from, RUN
// --mount from=), fetches a frontend image for a `# syntax=` directive and
// downloads ADD URLs. So before a build is started, its Dockerfile is read
// and every image it names is resolved here: `scratch`, an earlier stage,
// an image present on the worker, or one built from the fleet repository
// in the same pass. Anything else refuses the build with the file, line
// and image, and the Engine is never asked.

// ErrBuildRefused classifies an offline-build refusal ([BuildRefusedError]).
var ErrBuildRefused = errors.New("build refused")

// BuildRefusedError is a Dockerfile that would make the Engine reach a
// network, or that cannot be resolved offline.
type BuildRefusedError struct {
	File   string // the Dockerfile, as a path in the fleet repository
	Line   int    // 1-based; 0 when it concerns the whole file
	Image  string // the image named, when one is at fault
	Reason string
}

func (e *BuildRefusedError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Image != "" {
		return fmt.Sprintf("%s: image %s: %s", loc, e.Image, e.Reason)
	}
	return fmt.Sprintf("%s: %s", loc, e.Reason)
}

// Is makes errors.Is(err, ErrBuildRefused) true.
func (e *BuildRefusedError) Is(target error) bool { return target == ErrBuildRefused }

// imageRef is an image a Dockerfile needs from outside itself.
type imageRef struct {
	Name string
	Line int
	What string // "FROM", "COPY --from", "RUN --mount from="
}

// dockerfileImages parses a Dockerfile and returns the images it needs
// from outside (not scratch, not an earlier stage), in order of
// appearance. args are the build arguments given to the build. file names
// the Dockerfile in errors.
func dockerfileImages(dt []byte, file string, args map[string]string) ([]imageRef, error) {
	refuse := func(line int, image, format string, a ...any) error {
		return &BuildRefusedError{File: file, Line: line, Image: image, Reason: fmt.Sprintf(format, a...)}
	}
	if syntax, _, loc, ok := parser.DetectSyntax(dt); ok {
		return nil, refuse(firstLine(loc), "", "the syntax directive %q would make the Engine fetch a Dockerfile frontend image; remove it (builds never reach a network)", syntax)
	}
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		line := 0
		var le *parser.LocationError
		if errors.As(err, &le) && len(le.Locations) > 0 {
			line = firstLine(le.Locations[0])
		}
		return nil, refuse(line, "", "cannot parse the Dockerfile: %v", err)
	}

	// The ARGs before the first FROM are the only variables a FROM may
	// use; a build argument overrides a declared one's default.
	lex := shell.NewLex(res.EscapeToken)
	env := mapEnv{}
	expand := func(word string, line int) (string, error) {
		if !strings.ContainsRune(word, '$') {
			return word, nil
		}
		r, err := lex.ProcessWordWithMatches(word, env)
		if err != nil {
			return "", refuse(line, "", "cannot resolve %q: %v", word, err)
		}
		if len(r.Unmatched) > 0 {
			return "", refuse(line, "", "%q uses %s, which is neither a build argument nor an ARG default before the first FROM: the image cannot be resolved offline", word, strings.Join(sortedKeys(r.Unmatched), ", "))
		}
		return r.Result, nil
	}

	var out []imageRef
	stageNames := map[string]bool{}
	stages := 0
	external := func(name string, line int, what string) {
		lname := strings.ToLower(name)
		if lname == "scratch" || stageNames[lname] {
			return
		}
		if isDigits(name) && atoi(name) < stages {
			return // COPY --from=0 names an earlier stage by index
		}
		out = append(out, imageRef{Name: name, Line: line, What: what})
	}
	var curStage string
	for _, n := range res.AST.Children {
		line := n.StartLine
		words := nodeWords(n)
		switch strings.ToLower(n.Value) {
		case "arg":
			if stages > 0 {
				continue // stage ARGs cannot reach a FROM
			}
			for _, w := range words {
				k, v, hasDefault := strings.Cut(w, "=")
				if given, ok := args[k]; ok {
					env[k] = given
					continue
				}
				if !hasDefault {
					continue // declared without a default: unset unless given
				}
				val, err := expand(v, line)
				if err != nil {
					return nil, err
				}
				env[k] = val
			}
		case "from":
			if curStage != "" {
				stageNames[curStage] = true
			}
			if v, ok := flagValue(n.Flags, "platform"); ok {
				return nil, refuse(line, "", "FROM --platform=%s: a platform other than the worker's own may make the Engine fetch a variant; remove the flag", v)
			}
			if len(words) == 0 {
				return nil, refuse(line, "", "FROM names no image")
			}
			base, err := expand(words[0], line)
			if err != nil {
				return nil, err
			}
			if base == "" {
				return nil, refuse(line, "", "FROM names no image")
			}
			external(base, line, "FROM")
			curStage = ""
			if len(words) == 3 && strings.EqualFold(words[1], "as") {
				curStage = strings.ToLower(words[2])
			}
			stages++
		case "copy":
			if v, ok := flagValue(n.Flags, "from"); ok {
				from, err := expand(v, line)
				if err != nil {
					return nil, err
				}
				if strings.TrimSpace(from) == "" {
					return nil, refuse(line, "", "COPY --from= names no stage or image")
				}
				external(from, line, "COPY --from")
			}
		case "add":
			srcs := words
			if len(srcs) > 0 {
				srcs = srcs[:len(srcs)-1] // the last word is the destination
			}
			for _, src := range srcs {
				if isRemote(src) {
					return nil, refuse(line, "", "ADD %s downloads from a network; put the file in the build context instead", src)
				}
			}
		case "run":
			for _, f := range n.Flags {
				v, ok := flagValue([]string{f}, "mount")
				if !ok {
					continue
				}
				for _, kv := range strings.Split(v, ",") {
					k, val, _ := strings.Cut(kv, "=")
					if strings.EqualFold(strings.TrimSpace(k), "from") {
						from, err := expand(strings.Trim(val, `"'`), line)
						if err != nil {
							return nil, err
						}
						if strings.TrimSpace(from) == "" {
							return nil, refuse(line, "", "RUN --mount from= names no stage or image")
						}
						external(from, line, "RUN --mount from=")
					}
				}
			}
		}
	}
	if stages == 0 {
		return nil, refuse(0, "", "no FROM instruction")
	}
	return out, nil
}

// nodeWords returns the arguments of an instruction node.
func nodeWords(n *parser.Node) []string {
	var out []string
	for w := n.Next; w != nil; w = w.Next {
		out = append(out, w.Value)
	}
	return out
}

// flagValue returns the value of --name=value among an instruction's flags.
func flagValue(flags []string, name string) (string, bool) {
	for _, f := range flags {
		if v, ok := strings.CutPrefix(f, "--"+name+"="); ok {
			return v, true
		}
		if f == "--"+name {
			return "", true
		}
	}
	return "", false
}

// isRemote reports whether an ADD source is fetched rather than copied
// from the context (a URL or a git repository).
func isRemote(src string) bool {
	l := strings.ToLower(src)
	for _, p := range []string{"http://", "https://", "git://", "git@", "ssh://"} {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

func firstLine(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func atoi(s string) int {
	n := 0
	for _, r := range s {
		n = n*10 + int(r-'0')
		if n > 1<<20 {
			return n
		}
	}
	return n
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// mapEnv adapts a map to the shell lexer's variable lookup.
type mapEnv map[string]string

func (m mapEnv) Get(k string) (string, bool) { v, ok := m[k]; return v, ok }
func (m mapEnv) Keys() []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
