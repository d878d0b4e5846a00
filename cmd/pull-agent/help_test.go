package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
)

// Every flag of every command names its environment variable in --help.
func TestEveryFlagHasAnEnvironmentVariable(t *testing.T) {
	flagLine := regexp.MustCompile(`^\s+-([a-z0-9-]+)`)
	for _, cmd := range []string{"once", "run", "plan", "validate", "master", "reap", "status"} {
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
