package completion

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/internal/cliconf"
)

// A toy program whose commands make their flag sets as pull-agent's do.
func toyProbe(path []string, out io.Writer) {
	f := cliconf.Env(strings.Join(path, " "), "x", out)
	var s string
	var b bool
	switch strings.Join(path, " ") {
	case "run":
		f.String(&s, "host", "", "this worker's name")
		f.String(&s, "state-dir", "", "the state directory")
		f.Bool(&b, "allow-pull", false, "let Compose pull: it's 'risky'")
	case "master":
		f.String(&s, "db", "", "the store")
	case "master token":
		f.String(&s, "db", "", "the store")
		f.Bool(&b, "operator", false, "an operator's token")
	}
	_ = f.Parse([]string{"-h"})
}

var toySpec = []string{"run", "master", "master token: add list revoke", "completion: bash zsh", "validate"}

func toyTree(t *testing.T) *Command {
	t.Helper()
	root, err := Build("toy-agent", toySpec, toyProbe)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestBuild(t *testing.T) {
	root := toyTree(t)
	run := root.Lookup("run")
	if run == nil || len(run.Flags) != 3 {
		t.Fatalf("run: %+v", run)
	}
	if f := run.Flags[slices.IndexFunc(run.Flags, func(f Flag) bool { return f.Name == "allow-pull" })]; !f.Bool {
		t.Errorf("allow-pull is a boolean flag: %+v", f)
	}
	if tok := root.Lookup("master", "token"); tok == nil || !slices.Equal(tok.Args, []string{"add", "list", "revoke"}) || len(tok.Flags) != 2 {
		t.Errorf("master token: %+v", tok)
	}
	if _, err := Build("x", []string{"master token"}, toyProbe); err == nil {
		t.Error("a child listed before its parent must be an error")
	}
}

func script(t *testing.T, shell string) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, shell, toyTree(t)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "toy."+shell)
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// complete runs the script's function in a real shell on the words typed
// (the last one is under the cursor) and returns what it offers.
func complete(t *testing.T, shell, file string, words ...string) []string {
	t.Helper()
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = quote(w)
	}
	var prog string
	if shell == "bash" {
		prog = `source "$1"; COMP_WORDS=(` + strings.Join(quoted, " ") + `); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _toy_agent; printf '%s\n' "${COMPREPLY[@]}"`
	} else {
		// compsys is not loaded: its offering functions are stood in for
		// by ones that print what they were given.
		prog = `compdef() { :; }; _describe() { local x; for x in "${(@P)4}"; do print -r -- "${x%%:*}"; done; }
compadd() { print -rl -- "${(@P)2}"; }; _files() { print -r -- FILES; }
source "$1"; words=(` + strings.Join(quoted, " ") + `); CURRENT=${#words}; _toy_agent`
	}
	out, err := exec.Command(shell, "-c", prog, shell, file).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", shell, words, err, out)
	}
	var got []string
	cur := words[len(words)-1]
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// zsh's compsys matches the prefix itself; its stand-in does not
		if l != "" && (shell == "bash" || l == "FILES" || strings.HasPrefix(l, cur)) {
			got = append(got, l)
		}
	}
	slices.Sort(got)
	return got
}

func TestScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		t.Run(shell, func(t *testing.T) {
			if _, err := exec.LookPath(shell); err != nil {
				if shell == "bash" || os.Getenv("CI") == "true" {
					t.Fatalf("%s is needed: %v", shell, err)
				}
				t.Skipf("%s is not installed (scripts/setup.sh installs it)", shell)
			}
			file := script(t, shell)
			if out, err := exec.Command(shell, "-n", file).CombinedOutput(); err != nil {
				t.Fatalf("%s -n: %v\n%s", shell, err, out)
			}
			for _, tc := range []struct {
				words []string
				want  []string
			}{
				{[]string{"toy-agent", ""}, []string{"completion", "master", "run", "validate"}},
				{[]string{"toy-agent", "ma"}, []string{"master"}},
				{[]string{"toy-agent", "run", "--"}, []string{"--allow-pull", "--host", "--state-dir"}},
				{[]string{"toy-agent", "run", "--s"}, []string{"--state-dir"}},
				// a flag's value is not a command word
				{[]string{"toy-agent", "master", "--db", "token", "--"}, []string{"--db"}},
				{[]string{"toy-agent", "master", ""}, []string{"token"}},
				{[]string{"toy-agent", "master", "--db", "m.db", "token", ""}, []string{"add", "list", "revoke"}},
				{[]string{"toy-agent", "master", "token", "add", "--"}, []string{"--db", "--operator"}},
				{[]string{"toy-agent", "completion", "z"}, []string{"zsh"}},
			} {
				if got := complete(t, shell, file, tc.words...); !slices.Equal(got, tc.want) {
					t.Errorf("%q: offered %q, want %q", tc.words, got, tc.want)
				}
			}
			// the value of a flag is a file name, never a command word
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "FILES"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if got := complete(t, shell, file, "toy-agent", "run", "--state-dir", dir+"/F"); !slices.Equal(got, []string{dir + "/FILES"}) && !slices.Equal(got, []string{"FILES"}) {
				t.Errorf("--state-dir value: offered %q, want file names", got)
			}
		})
	}
	var b bytes.Buffer
	if err := Write(&b, "fish", toyTree(t)); err == nil {
		t.Error("an unknown shell must be an error")
	}
}
