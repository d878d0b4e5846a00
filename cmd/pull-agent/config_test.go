package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The config file maps keys one-to-one to flags; flag > env > file >
// default; `config show` prints a file that reads back to the same
// configuration, with URL credentials redacted; an unknown key fails with
// its line.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("# agent\nrepo: [https://bot:s3cret@git.example.org/fleet.git, /mnt/usb/fleet.git]\nhost: worker-a\nparallel: 2\ninterval: 90s\nprobe: false\nstate-dir: "+dir+"\n"), 0o600)
	show := func(args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(context.Background(), append([]string{"config", "show", "--config"}, args...), &out, &errb); code != 0 {
			t.Fatalf("config show %v: exit %d: %s", args, code, errb.String())
		}
		return out.String()
	}
	t.Setenv("PULL_AGENT_PARALLEL", "5")
	out := show(cfg, "--interval", "2m")
	for _, want := range []string{
		"host: worker-a  # " + cfg + ":3",
		"parallel: 5  # env PULL_AGENT_PARALLEL", // env beats the file
		"interval: 2m0s  # flag",                 // the flag beats both
		"probe: false  # " + cfg,
		"retry-budget: 3  # default",
		"repo: [https://***@git.example.org/fleet.git, /mnt/usb/fleet.git]",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret") {
		t.Fatalf("config show printed a secret:\n%s", out)
	}
	// Round trip: what show prints is a config file giving the same result.
	t.Setenv("PULL_AGENT_PARALLEL", "")
	os.Unsetenv("PULL_AGENT_PARALLEL")
	first := show(cfg)
	again := filepath.Join(dir, "again.yaml")
	os.WriteFile(again, []byte(strings.ReplaceAll(first, "https://***@", "https://")), 0o600)
	second := show(again)
	strip := func(s string) string {
		var lines []string
		for _, l := range strings.Split(s, "\n") {
			v, _, _ := strings.Cut(l, "  #")
			lines = append(lines, v)
		}
		return strings.ReplaceAll(strings.Join(lines, "\n"), "https://***@", "https://")
	}
	if strip(first) != strip(second) {
		t.Fatalf("config show does not round-trip:\n%s\n---\n%s", first, second)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("host: w\nrepo: /x\nintervall: 5m\n"), 0o600)
	var o bytes.Buffer
	if code := run(context.Background(), []string{"once", "--config", bad}, &o, &o); code != exitUsage || !strings.Contains(o.String(), bad+":3: unknown key \"intervall\"") {
		t.Fatalf("unknown key: exit %d:\n%s", code, o.String())
	}
	os.WriteFile(bad, []byte("host: w\nparallel: many\n"), 0o600)
	o.Reset()
	if code := run(context.Background(), []string{"plan", "--config=" + bad}, &o, &o); code != exitUsage || !strings.Contains(o.String(), bad+":2") {
		t.Fatalf("bad value: exit %d:\n%s", code, o.String())
	}
}
