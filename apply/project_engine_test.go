package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/compose/v2/pkg/api"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/fleettest"
	"github.com/decnet/pull-agent/internal/testlan"
	"github.com/decnet/pull-agent/reaper"
	"github.com/decnet/pull-agent/relocalize"
)

// checkout is a fleet repository checked out in a directory.
type checkout string

// ContextHash hashes every file under dir (names, modes and contents).
func (t checkout) ContextHash(dir string) (string, error) {
	h := sha256.New()
	root := filepath.Join(string(t), filepath.FromSlash(dir))
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", rel, info.Mode().Perm(), len(b))
		h.Write(b)
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// Materialize copies dir to dst (execute bits kept: the decoy runs).
func (t checkout) Materialize(dir, dst string) error {
	return os.CopyFS(dst, os.DirFS(filepath.Join(string(t), filepath.FromSlash(dir))))
}

// TestUpgradeKeepsSharedProjectDecky runs on a real Engine what an agent
// upgrade meets: a decky created by an older agent, in the one Compose
// project shared by every decky. The new agent leaves it alone (same
// container IDs), puts a new decky in a Compose project of its own (a
// Compose listing of either project does not show the other decky), adds
// a service to the old decky in the old project without touching its
// other containers, and moves it to its own project when its base is
// replaced anyway.
func TestUpgradeKeepsSharedProjectDecky(t *testing.T) {
	docker := testlan.RequireDocker(t)
	lan := testlan.New(t, testlan.Options{})
	ctx := t.Context()
	sfx := testlan.Suffix()
	owner, shared := "e2e"+sfx, "pa-e2e-"+sfx
	netSpec := engine.NetworkSpec{Name: "pa_e2e_" + sfx, Driver: "macvlan", Parent: lan.Parent, Subnet: lan.Subnet, Gateway: lan.Gateway}
	eng, err := engine.New(ctx, owner, engine.Options{StopGrace: time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := reaper.All(context.Background(), eng, owner, []string{netSpec.Name}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		eng.Close()
	})
	if _, err := eng.EnsureNetwork(ctx, netSpec, NetworkSpecHash(netSpec)); err != nil {
		t.Fatal(err)
	}

	// A fleet repository with the example's Dockerfiles and the decoy.
	root := t.TempDir()
	ex := filepath.Join(fleettest.ModuleRoot(t), "examples", "fleet-repo")
	for _, dir := range []string{"images/base", "services/ssh", "services/http"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		df, err := os.ReadFile(filepath.Join(ex, dir, "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dir, "Dockerfile"), df, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dir, "decoy"), fleettest.Decoy(t), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fleet := `version: 1
defaults: {compose_project: ` + shared + `, distro: base}
distros:
  base: {build: images/base, command: ["/decoy", "hold"]}
services:
  ssh: {build: services/ssh, ports: [22], cap_add: [NET_BIND_SERVICE]}
  http: {build: services/http, ports: [80]}
`
	if err := os.WriteFile(filepath.Join(root, "fleet.yaml"), []byte(fleet), 0o644); err != nil {
		t.Fatal(err)
	}
	oldName, newName := owner+"-old", owner+"-new"
	addrs := map[string]relocalize.Assignment{
		oldName: {IP: addrIn(t, lan.Subnet, 20), MAC: relocalize.MAC(owner, oldName)},
		newName: {IP: addrIn(t, lan.Subnet, 21), MAC: relocalize.MAC(owner, newName)},
	}
	tree := checkout(root)
	render := func(hostFile string) []*DeckySpec {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, "hosts", "w.yaml"), []byte(hostFile), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := desired.Load(os.DirFS(root))
		if err != nil {
			t.Fatal(err)
		}
		imgs, err := ResolveImages(ctx, f, f.Hosts["w"], tree, eng)
		if err != nil {
			t.Fatal(err)
		}
		specs, errs := Render(RenderInput{Owner: owner, Project: shared, WorkingDir: root, Fleet: f, Host: f.Hosts["w"],
			Network: netSpec, Addresses: addrs, Images: imgs})
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		return specs
	}
	if err := os.MkdirAll(filepath.Join(root, "hosts"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := NewApplier(eng, shared, root, netSpec, Options{ContextDir: t.TempDir(),
		Steady: SteadyOptions{Samples: 2, Interval: 200 * time.Millisecond, Timeout: 60 * time.Second}}, slog.New(slog.DiscardHandler))
	pass := func(specs []*DeckySpec, want string) {
		t.Helper()
		observed, err := eng.ListContainers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cs := Diff(DiffInput{Owner: owner, Project: shared, Desired: specs, Observed: observed})
		if got := summary(cs); got != want {
			t.Fatalf("plan\n got: %s\nwant: %s", got, want)
		}
		for _, r := range a.Apply(ctx, cs, tree) {
			if r.Status != Succeeded {
				t.Fatalf("%s: %s", r.Decky, r.Error)
			}
		}
	}

	// The older agent: one decky, in the shared project (what applyOne
	// did before deckies had projects of their own).
	v1 := render("deckies:\n  - name: " + oldName + "\n    services: [ssh]\n")
	entries := Diff(DiffInput{Owner: owner, Desired: v1}).Entries
	if errs := a.ensureImages(ctx, entries, entries, tree); len(errs) > 0 {
		t.Fatal(errs)
	}
	old := v1[0]
	if err := eng.Up(ctx, old.Project(shared, root, netSpec), nil, []string{oldName, oldName + "-ssh"}); err != nil {
		t.Fatal(err)
	}
	if err := a.waitSteady(ctx, old); err != nil {
		t.Fatal(err)
	}
	before := projectOf(t, docker, shared)
	if want := []string{oldName, oldName + "-ssh"}; !slices.Equal(names(before), want) {
		t.Fatalf("the older agent's project holds %v, want %v", names(before), want)
	}

	// The upgraded agent: the old decky is unchanged, the new one is
	// created in its own project.
	v2 := render("deckies:\n  - name: " + oldName + "\n    services: [ssh]\n  - name: " + newName + "\n    services: [ssh]\n")
	pass(v2, newName+":create/deploy base svc=ssh; "+oldName+":unchanged")
	if got := projectOf(t, docker, shared); !slices.Equal(got, before) {
		t.Errorf("the upgrade touched the older decky:\n got: %v\nwant: %v", got, before)
	}
	if got, want := names(projectOf(t, docker, DeckyProject(shared, newName))), []string{newName, newName + "-ssh"}; !slices.Equal(got, want) {
		t.Errorf("Compose project %s holds %v, want the new decky alone %v", DeckyProject(shared, newName), got, want)
	}
	if got := projectOf(t, docker, DeckyProject(shared, oldName)); len(got) != 0 {
		t.Errorf("the older decky has containers in a project of its own: %v", got)
	}

	// A mutate of the older decky (one more service) stays in its project
	// and leaves its running containers alone.
	v3 := render("deckies:\n  - name: " + oldName + "\n    services: [ssh, http]\n  - name: " + newName + "\n    services: [ssh]\n")
	pass(v3, newName+":unchanged; "+oldName+":update/mutate svc=http")
	after := projectOf(t, docker, shared)
	if got, want := names(after), []string{oldName, oldName + "-http", oldName + "-ssh"}; !slices.Equal(got, want) {
		t.Fatalf("the older decky's project holds %v after the mutate, want %v", got, want)
	}
	for _, c := range before {
		if !slices.Contains(after, c) {
			t.Errorf("the mutate recreated %s (%s)", c, strings.Join(after, " "))
		}
	}

	// Its base replaced (a new hostname): every container goes, and the
	// decky moves to its own project.
	v4 := render("deckies:\n  - name: " + oldName + "\n    hostname: moved\n    services: [ssh, http]\n  - name: " + newName + "\n    services: [ssh]\n")
	pass(v4, newName+":unchanged; "+oldName+":update/mutate base svc=http,ssh")
	if got := projectOf(t, docker, shared); len(got) != 0 {
		t.Errorf("the shared project still holds %v", got)
	}
	if got, want := names(projectOf(t, docker, DeckyProject(shared, oldName))), []string{oldName, oldName + "-http", oldName + "-ssh"}; !slices.Equal(got, want) {
		t.Errorf("Compose project %s holds %v, want %v", DeckyProject(shared, oldName), got, want)
	}
}

// projectOf lists a Compose project's containers as Compose does (by its
// project label), as "name id" in name order.
func projectOf(t *testing.T, docker *client.Client, project string) []string {
	t.Helper()
	list, err := docker.ContainerList(t.Context(), container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", api.ProjectLabel+"="+project))})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range list {
		out = append(out, strings.TrimPrefix(c.Names[0], "/")+" "+c.ID)
	}
	slices.Sort(out)
	return out
}

func names(cs []string) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i], _, _ = strings.Cut(c, " ")
	}
	return out
}

// addrIn returns the n-th address of a subnet.
func addrIn(t *testing.T, p netip.Prefix, n int) netip.Addr {
	t.Helper()
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	if !p.Contains(a) {
		t.Fatalf("%s has no address %d", p, n)
	}
	return a
}
