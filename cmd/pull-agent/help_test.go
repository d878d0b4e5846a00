package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/internal/cliconf"
)

// Every flag of every command names its environment variable in --help.
func TestEveryFlagHasAnEnvironmentVariable(t *testing.T) {
	flagLine := regexp.MustCompile(`^\s+-([a-z0-9-]+)`)
	for _, cmd := range []string{"once", "run", "plan", "validate", "master", "reap", "status", "suspend", "resume"} {
		var out bytes.Buffer
		if code := run(context.Background(), []string{cmd, "-h"}, &out, &out); code != 0 {
			t.Fatalf("%s -h exited %d", cmd, code)
		}
		lines := strings.Split(out.String(), "\n")
		n := 0
		for i, l := range lines {
			m := flagLine.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			n++
			text := l
			if i+1 < len(lines) {
				text += lines[i+1]
			}
			want := "(env " + cliconf.EnvName(m[1]) + ")"
			if !strings.Contains(text, want) {
				t.Errorf("%s -%s: help does not name %s:\n%s", cmd, m[1], want, text)
			}
		}
		if n == 0 {
			t.Errorf("%s -h lists no flags:\n%s", cmd, out.String())
		}
	}
}

func TestFlagsReadTheEnvironment(t *testing.T) {
	t.Setenv("PULL_AGENT_REPO", "file:///a,/b")
	t.Setenv("PULL_AGENT_PARALLEL", "7")
	t.Setenv("PULL_AGENT_HOST", "worker-z")
	var out bytes.Buffer
	c, err := parseAgentFlags("once", nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.repos, " ") != "file:///a /b" || c.parallel != 7 || c.host != "worker-z" {
		t.Errorf("env not applied: repos=%v parallel=%d host=%s", c.repos, c.parallel, c.host)
	}
	// The command line wins over the environment.
	c, err = parseAgentFlags("once", []string{"--repo", "/c", "--parallel", "2"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.repos, " ") != "/c" || c.parallel != 2 {
		t.Errorf("flags did not override env: repos=%v parallel=%d", c.repos, c.parallel)
	}
	t.Setenv("PULL_AGENT_PARALLEL", "many")
	if _, err := parseAgentFlags("once", nil, &out); err == nil || !strings.Contains(err.Error(), "PULL_AGENT_PARALLEL") {
		t.Errorf("a bad environment value must be an error naming it, got %v", err)
	}
}

// A configuration the agent cannot start with is a clear error and an
// exit code, never a crash, and leaves the state directory unlocked.
func TestBadConfigurationFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"once", "--repo", "ssh://git@127.0.0.1/fleet.git", "--host", "w", "--state-dir", dir},
		{"once", "--repo", "/nonexistent", "--host", "w", "--state-dir", dir, "--trust-gpg-keyring", "/nonexistent.asc"},
		{"once", "--repo", "/nonexistent", "--host", "w", "--state-dir", dir, "--pin", "abc"},
		{"plan", "--repo", "/nonexistent", "--host", "Bad_Name"},
	} {
		var out bytes.Buffer
		code := run(context.Background(), args, &out, &out)
		if code != exitNoStart && code != exitUsage {
			t.Errorf("%v: exit %d, want 2 or 3:\n%s", args, code, out.String())
		}
		if !strings.Contains(out.String(), "pull-agent:") {
			t.Errorf("%v: no error message:\n%s", args, out.String())
		}
	}
}

// One exit-code table: usage errors (an unknown flag too) are 64, distinct
// from plan's "changes" (2); plan takes every flag once and run take.
func TestExitCodesAndSharedFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want int
	}{
		{args: []string{"once", "--no-such-flag"}, want: exitUsage},
		{args: []string{"plan", "--no-such-flag"}, want: exitUsage},
		{args: []string{"nosuchcommand"}, want: exitUsage},
		{args: []string{"once", "--repo", "/x", "--host", "w", "--parallel", "0"}, want: exitUsage},
		// reporting and daemon flags are accepted by plan (and ignored)
		{args: []string{"plan", "--repo", "/nonexistent", "--host", "w", "--state-dir", dir, "--master", "https://m:8770",
			"--master-insecure", "--interval", "5m", "--metrics", "127.0.0.1:0", "--report-timeout", "1s"}, want: exitNoStart},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &out); code != tc.want {
			t.Errorf("%v: exit %d, want %d:\n%s", tc.args, code, tc.want, out.String())
		}
	}
	if exitUsage == exitChanges {
		t.Fatal("usage errors and plan's changes share an exit code")
	}
}

func TestSuspendAndResumeCommands(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if code := run(context.Background(), []string{"suspend", "--state-dir", dir, "--reason", "maintenance"}, &out, &out); code != 0 {
		t.Fatalf("suspend: %d %s", code, out.String())
	}
	if b, err := os.ReadFile(filepath.Join(dir, agent.SuspendFile)); err != nil || !strings.Contains(string(b), "maintenance") {
		t.Fatalf("suspend file: %q %v", b, err)
	}
	out.Reset()
	if code := run(context.Background(), []string{"status", "--state-dir", dir, "--host", "w"}, &out, &out); code != 0 || !strings.Contains(out.String(), "suspended:       yes") {
		t.Fatalf("status while suspended: %d\n%s", code, out.String())
	}
	if code := run(context.Background(), []string{"resume", "--state-dir", dir}, &out, &out); code != 0 {
		t.Fatalf("resume: %d", code)
	}
	if _, err := os.Stat(filepath.Join(dir, agent.SuspendFile)); !os.IsNotExist(err) {
		t.Fatalf("suspend file after resume: %v", err)
	}
}

// version --json names the build; plain version keeps its first words.
func TestVersionCommand(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"version", "--json"}, &out, &out); code != 0 {
		t.Fatalf("version --json: exit %d\n%s", code, out.String())
	}
	var v map[string]string
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatalf("version --json is not JSON: %v\n%s", err, out.String())
	}
	for _, k := range []string{"version", "commit", "build_date", "go", "os", "arch"} {
		if v[k] == "" {
			t.Errorf("version --json: %q missing: %s", k, out.String())
		}
	}
	if v["version"] != version || v["go"] != runtime.Version() || v["arch"] != runtime.GOARCH {
		t.Errorf("version --json: %v (version %s)", v, version)
	}
	out.Reset()
	if code := run(context.Background(), []string{"version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "pull-agent "+version+" ") {
		t.Errorf("version: exit %d %q", code, out.String())
	}
}

// The completion scripts come from the commands' real flag sets: for
// every command of `pull-agent help`, what bash completes after `--` is
// exactly the flags its -h lists; both scripts pass the shells' syntax
// check (zsh's only where zsh is installed, which CI's setup does).
func TestCompletionMatchesTheFlagSets(t *testing.T) {
	// A broken config file does not hide the agent commands' flags.
	broken := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(broken, []byte("repo: [unclosed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PULL_AGENT_CONFIG", broken)
	scripts := map[string]string{}
	for _, shell := range []string{"bash", "zsh"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{"completion", shell}, &out, &errOut); code != 0 {
			t.Fatalf("completion %s: exit %d\n%s", shell, code, errOut.String())
		}
		scripts[shell] = filepath.Join(t.TempDir(), "pull-agent."+shell)
		if err := os.WriteFile(scripts[shell], out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := exec.LookPath(shell); err != nil && shell == "zsh" && os.Getenv("CI") != "true" {
			t.Logf("zsh is not installed: the zsh script's syntax is not checked (scripts/setup.sh installs zsh)")
			continue
		}
		if out, err := exec.Command(shell, "-n", scripts[shell]).CombinedOutput(); err != nil {
			t.Fatalf("%s -n: %v\n%s", shell, err, out)
		}
	}
	os.Unsetenv("PULL_AGENT_CONFIG") // t.Setenv restores it at the end
	if code := run(context.Background(), []string{"completion", "fish"}, io.Discard, io.Discard); code != exitUsage {
		t.Errorf("completion fish: exit %d, want %d", code, exitUsage)
	}
	bashComplete := func(words ...string) []string {
		prog := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _pull_agent; printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.Command("bash", append([]string{"-c", prog, "bash", scripts["bash"], "pull-agent"}, words...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("completing %q: %v\n%s", words, err, out)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		return got
	}
	// The commands: those `pull-agent help` lists.
	var commands []string
	_, list, _ := strings.Cut(usage, "commands:\n")
	list, _, _ = strings.Cut(list, "\n\n")
	for _, l := range strings.Split(list, "\n") {
		commands = append(commands, strings.Fields(l)[0])
	}
	offered := bashComplete("")
	for _, c := range commands {
		if !slices.Contains(offered, c) {
			t.Errorf("command %s is not completed (offered %q)", c, offered)
		}
	}
	flagLine := regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`)
	for _, path := range append(commands, "master token", "config show") {
		var help bytes.Buffer
		run(context.Background(), append(strings.Fields(path), "-h"), &help, &help)
		var want []string
		for _, m := range flagLine.FindAllStringSubmatch(help.String(), -1) {
			want = append(want, "--"+m[1])
		}
		slices.Sort(want)
		got := bashComplete(append(strings.Fields(path), "--")...)
		if !slices.Equal(got, want) {
			t.Errorf("pull-agent %s --<TAB>: offered\n  %q\nwant the flags of its -h\n  %q", path, got, want)
		}
	}
	if got := bashComplete("run", "--interv"); !slices.Equal(got, []string{"--interval"}) {
		t.Errorf("pull-agent run --interv<TAB>: %q", got)
	}
	if got := bashComplete("master", "token", ""); !slices.Equal(got, []string{"add", "list", "revoke"}) {
		t.Errorf("pull-agent master token <TAB>: %q", got)
	}
}
