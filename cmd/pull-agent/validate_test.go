package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/internal/fleettest"
)

// The example fleet repository must always validate: it cannot rot.
func TestValidateExample(t *testing.T) {
	var out, errOut bytes.Buffer
	dir := filepath.Join(fleettest.ModuleRoot(t), "examples", "fleet-repo")
	if code := run(context.Background(), []string{"validate", "--host", "worker-a", dir}, &out, &errOut); code != 0 {
		t.Fatalf("validate exited %d:\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(errOut.String(), "valid: 2 hosts, 6 deckies, 5 services") {
		t.Errorf("summary: %q", errOut.String())
	}
}

func TestValidateReportsEveryErrorAndExits1(t *testing.T) {
	dir := t.TempDir()
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("fleet.yaml", "version: 1\nservices:\n  ssh: {image: \"decoys/ssh:1\"}\n")
	write("hosts/w.yaml", "deckies:\n  - name: a\n    services: [ssh, rdp]\n  - name: A\n    services: [ssh]\n")
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"validate", dir}, &out, &errOut)
	want := "hosts/w.yaml:2: deckies[0].distro: no distro named and fleet.yaml sets no defaults.distro\n" +
		"hosts/w.yaml:2: deckies[0].services[1]: service \"rdp\" is not in the services catalog (known: ssh)\n" +
		"hosts/w.yaml:4: deckies[1].name: decky name \"A\" must match ^[a-z0-9][a-z0-9-]{0,62}$\n" +
		"hosts/w.yaml:4: deckies[1].distro: no distro named and fleet.yaml sets no defaults.distro\n"
	if code != 1 || out.String() != want {
		t.Fatalf("exit %d, output:\n%s\nwant exit 1 and:\n%s", code, out.String(), want)
	}
	if code := run(context.Background(), []string{"validate", "--host", "nosuch", filepath.Join(fleettest.ModuleRoot(t), "examples", "fleet-repo")}, &out, &errOut); code != 1 {
		t.Errorf("a missing host file must fail validation, got %d", code)
	}
}

// Flags may follow the directory, and a cancelled validate (Ctrl-C,
// SIGTERM) stops without calling the repository valid.
func TestValidateFlagsAfterDirAndCancel(t *testing.T) {
	dir := filepath.Join(fleettest.ModuleRoot(t), "examples", "fleet-repo")
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"validate", dir, "--host", "worker-a"}, &out, &errOut); code != 0 {
		t.Fatalf("validate DIR --host: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"validate", dir, "--host", "nosuch"}, &out, &errOut); code != 1 || !strings.Contains(out.String(), "nosuch.yaml") {
		t.Fatalf("validate DIR --host nosuch: exit %d\n%s", code, out.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out.Reset()
	code := run(ctx, []string{"validate", dir}, &out, &errOut)
	if code == 0 || strings.Contains(out.String(), "valid:") || !strings.Contains(out.String(), "canceled") {
		t.Fatalf("a cancelled validate must fail, not say valid: exit %d\n%s", code, out.String())
	}
}
