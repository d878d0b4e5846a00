package completion

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Command is one node of the command tree.
type Command struct {
	Name  string
	Flags []Flag
	Args  []string // fixed words its positional arguments take; none: file names
	Sub   []*Command
}

// Flag is one flag of a command.
type Flag struct {
	Name  string
	Usage string
	Bool  bool // takes no value
}

// Lookup returns the node at path (nil: none).
func (c *Command) Lookup(path ...string) *Command {
	for _, name := range path {
		i := slices.IndexFunc(c.Sub, func(s *Command) bool { return s.Name == name })
		if i < 0 {
			return nil
		}
		c = c.Sub[i]
	}
	return c
}

// observer discards the command's output and keeps its flag sets.
type observer struct{ sets []*flag.FlagSet }

func (o *observer) Write(p []byte) (int, error)     { return len(p), nil }
func (o *observer) ObserveFlagSet(fs *flag.FlagSet) { o.sets = append(o.sets, fs) }

// Build returns the tree of the program named prog. Each spec entry is a
// command path, optionally followed by ": " and the fixed words of its
// arguments ("master token: add list revoke"); parents come before their
// children. probe runs the command at path with -h, writing to out; every
// flag set the command makes with out as its output becomes the node's
// flags.
func Build(prog string, spec []string, probe func(path []string, out io.Writer)) (*Command, error) {
	root := &Command{Name: prog}
	for _, line := range spec {
		p, args, _ := strings.Cut(line, ":")
		path := strings.Fields(p)
		if len(path) == 0 {
			return nil, fmt.Errorf("completion spec %q: no command", line)
		}
		parent := root.Lookup(path[:len(path)-1]...)
		if parent == nil {
			return nil, fmt.Errorf("completion spec %q: parent command not listed before it", line)
		}
		c := &Command{Name: path[len(path)-1], Args: strings.Fields(args)}
		o := &observer{}
		probe(path, o)
		for _, fs := range o.sets {
			fs.VisitAll(func(f *flag.Flag) {
				if slices.ContainsFunc(c.Flags, func(g Flag) bool { return g.Name == f.Name }) {
					return
				}
				b, ok := f.Value.(interface{ IsBoolFlag() bool })
				c.Flags = append(c.Flags, Flag{Name: f.Name, Usage: firstLine(f.Usage), Bool: ok && b.IsBoolFlag()})
			})
		}
		parent.Sub = append(parent.Sub, c)
	}
	return root, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// Write writes the script of shell ("bash" or "zsh").
func Write(w io.Writer, shell string, root *Command) error {
	switch shell {
	case "bash":
		return Bash(w, root)
	case "zsh":
		return Zsh(w, root)
	}
	return fmt.Errorf("completion: unknown shell %q (want bash or zsh)", shell)
}

// node is a command with its path, as the scripts' case labels see it.
type node struct {
	path string // "" for the program, "master token"
	*Command
}

func (c *Command) walk() []node {
	var out []node
	var rec func(prefix string, c *Command)
	rec = func(prefix string, c *Command) {
		out = append(out, node{prefix, c})
		for _, s := range c.Sub {
			rec(strings.TrimSpace(prefix+" "+s.Name), s)
		}
	}
	rec("", c)
	return out
}

// words are the subcommands and fixed arguments offered at a node.
func (n node) words() []string {
	var w []string
	for _, s := range n.Sub {
		w = append(w, s.Name)
	}
	return append(w, n.Args...)
}

func (n node) subs() []string {
	var w []string
	for _, s := range n.Sub {
		w = append(w, s.Name)
	}
	return w
}

// flagNames are --name for every flag; valueFlags the names (no dashes)
// of those that take a value.
func (n node) flagNames() []string {
	var w []string
	for _, f := range n.Flags {
		w = append(w, "--"+f.Name)
	}
	return w
}

func (n node) valueFlags() []string {
	var w []string
	for _, f := range n.Flags {
		if !f.Bool {
			w = append(w, f.Name)
		}
	}
	return w
}

// quote is a single-quoted shell word (bash and zsh alike).
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// funcName is the shell function prefix of the program: pull-agent ->
// _pull_agent.
func funcName(prog string) string {
	return "_" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, prog)
}

// caseTable writes a shell function that prints, for the command path in
// $1, the words list(n) gives.
func caseTable(b *strings.Builder, fn string, nodes []node, list func(node) []string) {
	fmt.Fprintf(b, "%s() {\n    case \"$1\" in\n", fn)
	for _, n := range nodes {
		if w := list(n); len(w) > 0 {
			fmt.Fprintf(b, "    %s) echo %s ;;\n", quote(n.path), quote(strings.Join(w, " ")))
		}
	}
	b.WriteString("    esac\n}\n\n")
}
