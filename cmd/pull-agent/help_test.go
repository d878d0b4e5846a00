package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/agent"
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
			want := "(env " + envName(m[1]) + ")"
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
