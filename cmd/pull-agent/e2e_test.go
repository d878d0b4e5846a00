package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/fleettest"
	"github.com/decnet/pull-agent/internal/gittest"
	"github.com/decnet/pull-agent/internal/testlan"
	"github.com/decnet/pull-agent/master"
)

// world is one end-to-end setup: a simulated LAN, a fleet repository as
// the remote, a real master over HTTP and the agent's state directory.
type world struct {
	t       testing.TB
	lan     *testlan.LAN
	repo    *gittest.Repo
	host    string // agent identity, also the prefix of every decky name
	net     string // Docker network name, unique per test
	state   string
	master  string
	store   *master.Store
	eng     *engine.Docker
	project string
	helper  string // host helper link, unique per test
	iface   string // the worker's decoy NIC (default the LAN's parent)
	docker  string // DOCKER_HOST of the worker's engine ("" = the default)
}

func newWorld(t testing.TB) *world { return newWorldLAN(t, testlan.Options{}) }

func newWorldLAN(t testing.TB, lanOpt testlan.Options) *world {
	t.Helper()
	testlan.RequireDocker(t)
	sfx := testlan.Suffix()
	w := &world{t: t, host: "e2e" + sfx, net: "pa_e2e_" + sfx, project: "pa-e2e-" + sfx, state: filepath.Join(t.TempDir(), "state"), helper: "hl" + sfx}
	w.lan = testlan.New(t, lanOpt)
	w.iface = w.lan.Parent
	fleet := strings.NewReplacer("compose_project: decnet", "compose_project: "+w.project, "name: decnet_lan", "name: "+w.net)
	w.repo = fleettest.Example(t, t.TempDir(), nil)
	w.repo.Write(map[string]string{"fleet.yaml": fleet.Replace(readFile(t, filepath.Join(w.repo.Work, "fleet.yaml")))})

	ctx := context.Background()
	store, err := master.OpenStore(ctx, filepath.Join(t.TempDir(), "master.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv := httptest.NewServer(master.NewServer(store, master.Options{InsecureNoAuth: true}, slog.New(slog.DiscardHandler)))
	t.Cleanup(srv.Close)
	w.store, w.master = store, srv.URL

	w.eng, err = engine.New(ctx, w.host, engine.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var out bytes.Buffer
		if code := run(context.Background(), []string{"reap", "--yes", "--host", w.host, "--network", w.net, "--helper", w.helper, "--state-dir", w.state}, &out, &out); code != 0 {
			t.Errorf("reap failed (%d): %s", code, out.String())
		}
		w.eng.Close()
	})
	return w
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := readAll(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decky names are prefixed with the host identity so parallel runs and
// leftovers never collide on the Engine's global container names.
func (w *world) name(short string) string { return w.host + "-" + short }

// hostFile writes hosts/<host>.yaml with the given deckies (short name ->
// services, in order) and commits it.
func (w *world) commit(msg string, deckies [][2]string, extra map[string]string) string {
	w.t.Helper()
	var b strings.Builder
	b.WriteString("deckies:\n")
	for _, d := range deckies {
		fmt.Fprintf(&b, "  - name: %s\n    services: [%s]\n", w.name(d[0]), d[1])
	}
	files := map[string]string{"hosts/" + w.host + ".yaml": b.String()}
	for k, v := range extra {
		files[k] = v
	}
	w.repo.Write(files)
	return w.repo.Commit(msg)
}

func (w *world) once(args ...string) (int, string) {
	w.t.Helper()
	var out bytes.Buffer
	if w.docker != "" {
		prev, had := os.LookupEnv("DOCKER_HOST")
		os.Setenv("DOCKER_HOST", w.docker)
		defer func() {
			if had {
				os.Setenv("DOCKER_HOST", prev)
			} else {
				os.Unsetenv("DOCKER_HOST")
			}
		}()
	}
	code := run(context.Background(), append(w.onceArgs(), args...), &out, &out)
	return code, out.String()
}

// onceArgs is the command line of a pass of this world's agent.
func (w *world) onceArgs() []string {
	return []string{"once", "--repo", w.repo.FileURL(), "--host", w.host, "--state-dir", w.state,
		"--master", w.master, "--master-insecure", "--interface", w.iface, "--gateway", w.lan.Gateway.String(),
		"--steady-interval", "300ms", "--steady-timeout", "20s", "--log-level", "warn", "--helper", w.helper}
}

// owned returns this agent's containers by name.
func (w *world) owned() map[string]engine.Container {
	w.t.Helper()
	cs, err := w.eng.ListContainers(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	out := map[string]engine.Container{}
	for _, c := range cs {
		if c.Owner() == w.host {
			out[c.Name] = c
		}
	}
	return out
}

func (w *world) addr(c engine.Container) netip.Addr { return c.Networks[w.net] }

func ids(cs map[string]engine.Container, prefix string) map[string]string {
	out := map[string]string{}
	for n, c := range cs {
		if n == prefix || strings.HasPrefix(n, prefix+"-") {
			out[n] = c.ID
		}
	}
	return out
}

func names(cs map[string]engine.Container) []string {
	var out []string
	for n := range cs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// events returns "decky operation status" for every recorded event of the
// commit, sorted.
func (w *world) events(commit string) []string {
	w.t.Helper()
	rows, err := w.store.Events(context.Background(), master.EventFilter{Host: w.host})
	if err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, r := range rows {
		if r.Commit == commit {
			out = append(out, strings.TrimPrefix(r.DeckyName, w.host+"-")+" "+r.Operation+" "+r.Status)
		}
	}
	sort.Strings(out)
	return out
}

func sameStrings(a, b []string) bool { return strings.Join(a, "|") == strings.Join(b, "|") }

func TestEndToEndConverge(t *testing.T) {
	w := newWorld(t)

	// Commit 1: three deckies come up.
	c1 := w.commit("three deckies", [][2]string{{"ssh", "ssh"}, {"web", "http"}, {"ftp", "ftp"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("first pass exited %d:\n%s", code, out)
	}
	cs := w.owned()
	want := []string{w.name("ftp"), w.name("ftp") + "-ftp", w.name("ssh"), w.name("ssh") + "-ssh", w.name("web"), w.name("web") + "-http"}
	if !sameStrings(names(cs), want) {
		t.Fatalf("containers = %v, want %v", names(cs), want)
	}
	sshIP := w.addr(cs[w.name("ssh")])
	if !w.lan.Subnet.Contains(sshIP) || sshIP == w.lan.Peer || sshIP == w.lan.Host || sshIP == w.lan.Gateway {
		t.Fatalf("decky address %s is not a free address of %s", sshIP, w.lan.Subnet)
	}
	banner, err := w.lan.WaitBanner(sshIP, 22, "", 10*time.Second)
	if err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Fatalf("ssh banner from the LAN = %q, %v", banner, err)
	}
	webIP := w.addr(cs[w.name("web")])
	if resp, err := w.lan.WaitBanner(webIP, 80, "GET / HTTP/1.0\r\n\r\n", 10*time.Second); err != nil || resp != "HTTP/1.1 200 OK" {
		t.Fatalf("http answer from the LAN = %q, %v", resp, err)
	}
	if got := w.events(c1); !sameStrings(got, []string{"ftp deploy succeeded", "ssh deploy succeeded", "web deploy succeeded"}) {
		t.Fatalf("master events for commit 1 = %v", got)
	}

	// A pass over an unchanged fleet touches nothing and reports nothing new.
	if code, out := w.once(); code != 0 {
		t.Fatalf("no-op pass exited %d:\n%s", code, out)
	}
	if got := w.owned(); fmt.Sprint(ids(got, "")) != fmt.Sprint(ids(cs, "")) {
		t.Fatalf("an unchanged pass recreated containers")
	}

	// Commit 2: a decky is added; the others keep their containers.
	c2 := w.commit("add smtp", [][2]string{{"ssh", "ssh"}, {"web", "http"}, {"ftp", "ftp"}, {"mail", "smtp"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("pass after adding a decky exited %d:\n%s", code, out)
	}
	cs2 := w.owned()
	for _, d := range []string{"ssh", "web", "ftp"} {
		if fmt.Sprint(ids(cs2, w.name(d))) != fmt.Sprint(ids(cs, w.name(d))) {
			t.Errorf("decky %s was touched by adding another decky", d)
		}
	}
	mailIP := w.addr(cs2[w.name("mail")])
	if b, err := w.lan.WaitBanner(mailIP, 25, "", 10*time.Second); err != nil || !strings.HasPrefix(b, "220 ") {
		t.Fatalf("smtp banner = %q, %v", b, err)
	}
	if got := w.events(c2); !sameStrings(got, []string{"mail deploy succeeded"}) {
		t.Fatalf("master events for commit 2 = %v", got)
	}

	// Commit 3: one decky's services change; only that decky is touched,
	// and only its new service container is created.
	c3 := w.commit("web gets ftp", [][2]string{{"ssh", "ssh"}, {"web", "http,ftp"}, {"ftp", "ftp"}, {"mail", "smtp"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("pass after changing a decky exited %d:\n%s", code, out)
	}
	cs3 := w.owned()
	for _, d := range []string{"ssh", "ftp", "mail"} {
		if fmt.Sprint(ids(cs3, w.name(d))) != fmt.Sprint(ids(cs2, w.name(d))) {
			t.Errorf("decky %s was touched by changing another decky", d)
		}
	}
	if cs3[w.name("web")].ID != cs2[w.name("web")].ID || cs3[w.name("web")+"-http"].ID != cs2[w.name("web")+"-http"].ID {
		t.Errorf("adding a service recreated the web decky's base or http container")
	}
	if _, ok := cs3[w.name("web")+"-ftp"]; !ok {
		t.Fatalf("web decky has no ftp container: %v", names(cs3))
	}
	if b, err := w.lan.WaitBanner(webIP, 21, "", 10*time.Second); err != nil || !strings.HasPrefix(b, "220 ") {
		t.Fatalf("ftp banner on the web decky = %q, %v", b, err)
	}
	if got := w.events(c3); !sameStrings(got, []string{"web mutate succeeded"}) {
		t.Fatalf("master events for commit 3 = %v", got)
	}

	// Commit 4: a decky is removed, base and services; the rest stays.
	c4 := w.commit("drop ftp decky", [][2]string{{"ssh", "ssh"}, {"web", "http,ftp"}, {"mail", "smtp"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("pass after removing a decky exited %d:\n%s", code, out)
	}
	cs4 := w.owned()
	if len(ids(cs4, w.name("ftp"))) != 0 {
		t.Fatalf("removed decky still has containers: %v", names(cs4))
	}
	for _, d := range []string{"ssh", "web", "mail"} {
		if fmt.Sprint(ids(cs4, w.name(d))) != fmt.Sprint(ids(cs3, w.name(d))) {
			t.Errorf("decky %s was touched by removing another decky", d)
		}
	}
	if got := w.events(c4); !sameStrings(got, []string{"ftp teardown succeeded"}) {
		t.Fatalf("master events for commit 4 = %v", got)
	}
	// The addresses stayed where they were through all of it.
	if w.addr(cs4[w.name("ssh")]) != sshIP || w.addr(cs4[w.name("mail")]) != mailIP {
		t.Errorf("addresses moved: ssh %s->%s mail %s->%s", sshIP, w.addr(cs4[w.name("ssh")]), mailIP, w.addr(cs4[w.name("mail")]))
	}
}

func TestEndToEndBrokenBuildFailsAlone(t *testing.T) {
	w := newWorld(t)
	fleet := readFile(t, filepath.Join(w.repo.Work, "fleet.yaml"))
	fleet = strings.Replace(fleet, "services:\n", "services:\n  broken:\n    build: services/broken\n    ports: [8080]\n", 1)
	fleettest.AddDecoy(t, w.repo, "services/broken")
	c := w.commit("a broken service", [][2]string{{"good", "ssh"}, {"bad", "broken"}, {"fine", "http"}}, map[string]string{
		"fleet.yaml": fleet,
		// COPY of a file the context does not have: the build fails.
		"services/broken/Dockerfile": "FROM scratch\nCOPY decoy-missing /decoy\nENTRYPOINT [\"/decoy\"]\n",
	})
	code, out := w.once()
	if code != 1 {
		t.Fatalf("a pass with a failing decky must exit 1, got %d:\n%s", code, out)
	}
	cs := w.owned()
	for _, d := range []string{"good", "fine"} {
		if _, ok := cs[w.name(d)]; !ok {
			t.Errorf("decky %s did not come up next to the broken one: %v", d, names(cs))
		}
	}
	if len(ids(cs, w.name("bad"))) != 0 {
		t.Errorf("the broken decky has containers: %v", names(cs))
	}
	if got := w.events(c); !sameStrings(got, []string{"bad deploy failed", "fine deploy succeeded", "good deploy succeeded"}) {
		t.Fatalf("master events = %v", got)
	}
	rows, err := w.store.Events(context.Background(), master.EventFilter{Host: w.host, Status: "failed"})
	if err != nil || len(rows) != 1 {
		t.Fatalf("failed events = %v, %v", rows, err)
	}
	if !strings.Contains(rows[0].Error, "services/broken") || !strings.Contains(rows[0].Error, "decoy-missing") {
		t.Errorf("the failure's error text does not say what broke: %q", rows[0].Error)
	}
}

func testDocker(t testing.TB) *client.Client { return testlan.RequireDocker(t) }

// A commit the agent refuses (unsigned; rewritten history) is reported to
// the master as a failed pass with its reason, and nothing running changes.
func TestEndToEndRefusedCommits(t *testing.T) {
	w := newWorld(t)
	signer := gittest.NewSSHSigner(t, "ops")
	w.repo.Signer = signer
	trust := []string{"--trust-ssh-allowed-signers", signer.Trust}
	c1 := w.commit("signed", [][2]string{{"ssh", "ssh"}}, nil)
	if code, out := w.once(trust...); code != 0 {
		t.Fatalf("signed commit: exit %d\n%s", code, out)
	}
	before := ids(w.owned(), "")

	passError := func() string {
		hosts, err := w.store.Hosts(context.Background(), time.Now(), time.Hour)
		if err != nil || len(hosts) != 1 {
			t.Fatalf("hosts: %v %v", hosts, err)
		}
		return hosts[0].PassError
	}

	w.repo.Signer = nil
	w.commit("unsigned: adds a decky", [][2]string{{"ssh", "ssh"}, {"web", "http"}}, nil)
	code, out := w.once(trust...)
	if code != 3 || !strings.Contains(out, "is not signed") {
		t.Fatalf("unsigned commit: exit %d, want 3 and the reason:\n%s", code, out)
	}
	if pe := passError(); !strings.Contains(pe, "is not signed") || !strings.Contains(pe, "keep running") {
		t.Fatalf("master's pass_error = %q", pe)
	}
	if after := ids(w.owned(), ""); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused commit changed containers: %v -> %v", before, after)
	}

	// The unsigned commit is pushed away; a signed one on c1 follows.
	w.repo.Signer = signer
	w.repo.Reset(c1)
	c3 := w.commit("signed again", [][2]string{{"ssh", "ssh"}, {"ftp", "ftp"}}, nil)
	// c3 descends from c1, which was applied: accepted.
	if code, out := w.once(trust...); code != 0 {
		t.Fatalf("a signed descendant of the applied commit: exit %d\n%s", code, out)
	}
	// Force-push rewriting c3 away.
	w.repo.Reset(c1)
	w.commit("rewrites c3 away", [][2]string{{"ssh", "ssh"}}, nil)
	code, out = w.once(trust...)
	if code != 3 || !strings.Contains(out, "does not descend from the last applied commit "+c3[:12]) {
		t.Fatalf("force-push: exit %d, want 3 and a rollback refusal:\n%s", code, out)
	}
	if _, ok := w.owned()[w.name("ftp")]; !ok {
		t.Fatal("a refused rollback removed a decky")
	}
	if code, out := w.once(append(trust, "--allow-rollback")...); code != 0 {
		t.Fatalf("rollback with the override: exit %d\n%s", code, out)
	}
	if _, ok := w.owned()[w.name("ftp")]; ok {
		t.Fatal("the accepted rollback did not remove the decky it dropped")
	}
}
