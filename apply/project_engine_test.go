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

// engineFleet is a fleet on a real Engine: a test LAN, the decoy network
// on it, and a fleet repository in a directory with the example's
// Dockerfiles and the decoy (services ssh and http).
type engineFleet struct {
	t      *testing.T
	docker *client.Client
	eng    *engine.Docker
	owner  string // agent identity; also the prefix of every decky name
	shared string // the fleet's Compose project
	net    engine.NetworkSpec
	lan    *testlan.LAN
	root   string
	addrs  map[string]relocalize.Assignment
}

func newEngineFleet(t *testing.T) *engineFleet {
	t.Helper()
	docker := testlan.RequireDocker(t)
	lan := testlan.New(t, testlan.Options{})
	sfx := testlan.Suffix()
	f := &engineFleet{t: t, docker: docker, lan: lan, owner: "e2e" + sfx, shared: "pa-e2e-" + sfx, root: t.TempDir(),
		addrs: map[string]relocalize.Assignment{}}
	f.net = engine.NetworkSpec{Name: "pa_e2e_" + sfx, Driver: "macvlan", Parent: lan.Parent, Subnet: lan.Subnet, Gateway: lan.Gateway}
	f.eng = f.engine()
	if _, err := f.eng.EnsureNetwork(t.Context(), f.net, NetworkSpecHash(f.net)); err != nil {
		t.Fatal(err)
	}
	ex := filepath.Join(fleettest.ModuleRoot(t), "examples", "fleet-repo")
	for _, dir := range []string{"images/base", "services/ssh", "services/http", "hosts"} {
		if err := os.MkdirAll(filepath.Join(f.root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if dir == "hosts" {
			continue
		}
		df, err := os.ReadFile(filepath.Join(ex, dir, "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(f.root, dir, "Dockerfile"), df, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(f.root, dir, "decoy"), fleettest.Decoy(t), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fleet := `version: 1
defaults: {compose_project: ` + f.shared + `, distro: base}
distros:
  base: {build: images/base, command: ["/decoy", "hold"]}
services:
  ssh: {build: services/ssh, ports: [22], cap_add: [NET_BIND_SERVICE]}
  http: {build: services/http, ports: [80]}
`
	if err := os.WriteFile(filepath.Join(f.root, "fleet.yaml"), []byte(fleet), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// engine connects to the Engine named by DOCKER_HOST as the fleet's
// agent; what it owns is removed at the end of the test.
func (f *engineFleet) engine() *engine.Docker {
	eng, err := engine.New(f.t.Context(), f.owner, engine.Options{StopGrace: time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() {
		if _, err := reaper.All(context.Background(), eng, f.owner, []string{f.net.Name}); err != nil {
			f.t.Errorf("cleanup: %v", err)
		}
		eng.Close()
	})
	return eng
}

func (f *engineFleet) tree() checkout { return checkout(f.root) }

// render writes the host file and renders it; each decky gets the next
// free address of the LAN from the 20th on.
func (f *engineFleet) render(hostFile string) []*DeckySpec {
	t := f.t
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.root, "hosts", "w.yaml"), []byte(hostFile), 0o644); err != nil {
		t.Fatal(err)
	}
	fl, err := desired.Load(os.DirFS(f.root))
	if err != nil {
		t.Fatal(err)
	}
	h := fl.Hosts["w"]
	for _, d := range h.Deckies {
		if _, ok := f.addrs[d.Name]; !ok {
			f.addrs[d.Name] = relocalize.Assignment{IP: addrIn(t, f.lan.Subnet, 20+len(f.addrs)), MAC: relocalize.MAC(f.owner, d.Name)}
		}
	}
	imgs, err := ResolveImages(t.Context(), fl, h, f.tree(), f.eng)
	if err != nil {
		t.Fatal(err)
	}
	specs, errs := Render(RenderInput{Owner: f.owner, Project: f.shared, WorkingDir: f.root, Fleet: fl, Host: h,
		Network: f.net, Addresses: f.addrs, Images: imgs})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return specs
}

func (f *engineFleet) applier(eng Engine) *Applier {
	return NewApplier(eng, f.shared, f.root, f.net, Options{ContextDir: f.t.TempDir(),
		Steady: SteadyOptions{Samples: 2, Interval: 200 * time.Millisecond, Timeout: 60 * time.Second}}, slog.New(slog.DiscardHandler))
}

// pass plans specs against what runs, checks the plan, and applies it.
func (f *engineFleet) pass(a *Applier, specs []*DeckySpec, want string) {
	t := f.t
	t.Helper()
	observed, err := f.eng.ListContainers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cs := Diff(DiffInput{Owner: f.owner, Project: f.shared, Desired: specs, Observed: observed})
	if got := summary(cs); got != want {
		t.Fatalf("plan\n got: %s\nwant: %s", got, want)
	}
	for _, r := range a.Apply(t.Context(), cs, f.tree()) {
		if r.Status != Succeeded {
			t.Fatalf("%s: %s", r.Decky, r.Error)
		}
	}
}

// buildImages builds the images of specs (what a first pass does).
func (f *engineFleet) buildImages(a *Applier, specs []*DeckySpec) {
	f.t.Helper()
	entries := Diff(DiffInput{Owner: f.owner, Desired: specs}).Entries
	if errs := a.ensureImages(f.t.Context(), entries, entries, f.tree()); len(errs) > 0 {
		f.t.Fatal(errs)
	}
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
	f := newEngineFleet(t)
	ctx := t.Context()
	docker, eng, shared, root, netSpec := f.docker, f.eng, f.shared, f.root, f.net
	oldName, newName := f.owner+"-old", f.owner+"-new"
	a := f.applier(eng)
	render := f.render
	pass := func(specs []*DeckySpec, want string) { t.Helper(); f.pass(a, specs, want) }

	// The older agent: one decky, in the shared project (what applyOne
	// did before deckies had projects of their own).
	v1 := render("deckies:\n  - name: " + oldName + "\n    services: [ssh]\n")
	f.buildImages(a, v1)
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
