package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/master"
)

// started returns name -> "ID startedAt" for the agent's containers.
func (w *world) started(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, c := range w.owned() {
		st, err := w.eng.Inspect(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = c.ID[:12] + " " + st.StartedAt.Format(time.RFC3339Nano)
	}
	return out
}

// engineEvents returns the Engine's events between since and now about
// containers of this world's agent (other tests may share the Engine).
func (w *world) engineEvents(t *testing.T, since time.Time) []string {
	t.Helper()
	c := testDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msgs, errs := c.Events(ctx, events.ListOptions{Since: fmt.Sprint(since.Unix()), Until: fmt.Sprint(time.Now().Add(time.Second).Unix()),
		Filters: filters.NewArgs(filters.Arg("type", "container"), filters.Arg("label", engine.LabelOwner+"="+w.host))})
	var out []string
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return out
			}
			if time.Unix(0, m.TimeNano).Before(since) {
				continue
			}
			out = append(out, string(m.Action)+" "+m.Actor.Attributes["name"])
		case err := <-errs:
			if err != nil && ctx.Err() == nil && !strings.Contains(err.Error(), "EOF") {
				t.Fatal(err)
			}
			return out
		}
	}
}

// agentMutations are the calls among calls that change containers or
// networks (create, start, stop, kill, remove, connect, build); reads and
// the exec-free attach/wait/log streams are not changes.
func agentMutations(calls []string) []string {
	var out []string
	for _, c := range mutating(calls) {
		if strings.HasSuffix(c, "/wait") || strings.HasSuffix(c, "/attach") {
			continue
		}
		out = append(out, c)
	}
	return out
}

func mutating(calls []string) []string {
	var out []string
	for _, c := range calls {
		if !strings.HasPrefix(c, "GET ") && !strings.HasPrefix(c, "HEAD ") {
			out = append(out, c)
		}
	}
	return out
}

func TestEndToEndApplyPrecision(t *testing.T) {
	spy := newDockerSpy(t)
	w := newWorld(t)
	hostFile := func(header string) map[string]string {
		return map[string]string{"hosts/" + w.host + ".yaml": fmt.Sprintf(`deckies:
  - name: %s
    services: [ssh, http]
    service_config:
      http: {server_header: %q}
  - name: %s
    services: [ftp]
`, w.name("a"), header, w.name("b"))}
	}
	w.repo.Write(hostFile("nginx/1.18.0"))
	w.repo.Commit("two deckies")
	if code, out := w.once(); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	before := w.started(t)

	// Unchanged fleet: no Docker mutation, no container event, same IDs
	// and start times.
	calls, since := spy.count(), time.Now()
	if code, out := w.once(); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if m := mutating(spy.since(calls)); len(m) != 0 {
		t.Fatalf("an unchanged pass mutated Docker: %v", m)
	}
	if ev := w.engineEvents(t, since); len(ev) != 0 {
		t.Fatalf("an unchanged pass caused container events: %v", ev)
	}
	if after := w.started(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("containers changed:\n%v\n%v", before, after)
	}

	// One service's config changes: exactly that container is recreated,
	// and no image is rebuilt (no build context changed).
	w.repo.Write(hostFile("Apache/2.4.52"))
	c2 := w.repo.Commit("a's http header")
	calls, since = spy.count(), time.Now()
	if code, out := w.once(); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	after := w.started(t)
	for name := range before {
		changed := before[name] != after[name]
		if want := name == w.name("a")+"-http"; changed != want {
			t.Errorf("%s: changed=%v, want %v", name, changed, want)
		}
	}
	for _, c := range spy.since(calls) {
		if isBuildCall(c) {
			t.Errorf("an unchanged build context was rebuilt: %s", c)
		}
	}
	var created []string
	for _, e := range w.engineEvents(t, since) {
		if name, ok := strings.CutPrefix(e, "create "); ok {
			// Compose creates a replacement as <old-id>_<name>, then renames it.
			if _, n, found := strings.Cut(name, "_"); found {
				name = n
			}
			created = append(created, name)
		}
	}
	if strings.Join(created, ",") != w.name("a")+"-http" {
		t.Errorf("containers created by the pass: %v", created)
	}
	if resp, err := w.lan.WaitBanner(w.addr(w.owned()[w.name("a")]), 80, "GET / HTTP/1.0\r\n\r\n", 10*time.Second); err != nil || resp != "HTTP/1.1 200 OK" {
		t.Fatalf("recreated service unreachable: %q %v", resp, err)
	}
	if got := w.events(c2); strings.Join(got, ",") != "a mutate succeeded" {
		t.Errorf("events for the change: %v", got)
	}

	// Drift by hand: a service killed, a base removed. Repaired next pass.
	d := testDocker(t)
	ctx := context.Background()
	cs := w.owned()
	if err := d.ContainerKill(ctx, cs[w.name("a")+"-ssh"].ID, "KILL"); err != nil {
		t.Fatal(err)
	}
	if err := d.ContainerRemove(ctx, cs[w.name("b")].ID, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if code, out := w.once(); code != 0 {
		t.Fatalf("repair pass: exit %d\n%s", code, out)
	}
	rows, _ := w.store.Events(ctx, master.EventFilter{Host: w.host, Status: "succeeded"})
	var repairs []string
	for _, r := range rows {
		if r.Operation == "repair" {
			repairs = append(repairs, strings.TrimPrefix(r.DeckyName, w.host+"-"))
		}
	}
	if strings.Join(repairs, ",") != "a,b" {
		t.Fatalf("repairs reported: %v", repairs)
	}
	cs2 := w.owned()
	if cs2[w.name("a")+"-ssh"].ID != cs[w.name("a")+"-ssh"].ID || cs2[w.name("a")+"-ssh"].State != "running" {
		t.Errorf("a killed container must be started again in place")
	}
	bIP := w.addr(cs[w.name("b")])
	if w.addr(cs2[w.name("b")]) != bIP {
		t.Errorf("repaired base moved: %s -> %s", bIP, w.addr(cs2[w.name("b")]))
	}
	if b, err := w.lan.WaitBanner(bIP, 21, "", 10*time.Second); err != nil || !strings.HasPrefix(b, "220 ") {
		t.Fatalf("after its base was removed by hand, b's service must answer in the new namespace: %q %v", b, err)
	}

	// A build context's content changes: its image is rebuilt under a new
	// tag and exactly the containers built from it are recreated.
	ftpBefore := w.owned()[w.name("b")+"-ftp"]
	df := readFile(t, w.repo.Work+"/services/ftp/Dockerfile")
	// The banner names this run: contexts are content-addressed, and an
	// image of identical content from an earlier run would be reused.
	banner := "220 ProFTPD Server " + w.host
	w.repo.Write(map[string]string{"services/ftp/Dockerfile": strings.Replace(df, "ENV ", "ENV DECOY_BANNER=\""+banner+"\" ", 1)})
	w.repo.Commit("new ftp image")
	calls, before = spy.count(), w.started(t)
	if code, out := w.once(); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	builds := 0
	for _, c := range spy.since(calls) {
		if isBuildCall(c) {
			builds++
		}
	}
	if builds == 0 {
		t.Errorf("a changed build context was not rebuilt; Docker calls: %v", spy.since(calls))
	}
	ftpAfter := w.owned()[w.name("b")+"-ftp"]
	if ftpAfter.Image == ftpBefore.Image || ftpAfter.ID == ftpBefore.ID {
		t.Errorf("the ftp service was not recreated on a new image tag: %s -> %s", ftpBefore.Image, ftpAfter.Image)
	}
	for name, v := range w.started(t) {
		if name != w.name("b")+"-ftp" && before[name] != v {
			t.Errorf("%s changed although its image did not", name)
		}
	}
	if b, err := w.lan.WaitBanner(bIP, 21, "", 10*time.Second); err != nil || b != banner {
		t.Fatalf("the rebuilt image is not the one running: %q %v", b, err)
	}

	// plan --json is the typed change set.
	var out strings.Builder
	code := run(ctx, []string{"plan", "--json", "--repo", w.repo.FileURL(), "--host", w.host, "--state-dir", w.state,
		"--interface", w.iface, "--gateway", w.lan.Gateway.String(), "--helper", w.helper, "--log-level", "error"}, &out, &out)
	var cset apply.ChangeSet
	if err := json.Unmarshal([]byte(out.String()), &cset); err != nil || code != 0 {
		t.Fatalf("plan --json: exit %d, %v\n%s", code, err, out.String())
	}
	if len(cset.Entries) != 2 || cset.Entries[0].Action != apply.Unchanged || !cset.Entries[0].IP.IsValid() || cset.Entries[0].Hash == "" {
		t.Fatalf("plan --json: %+v", cset.Entries)
	}
}

func TestEndToEndFailuresQuarantineAndRecovery(t *testing.T) {
	w := newWorld(t)
	fleet := readFile(t, fmt.Sprintf("%s/fleet.yaml", w.repo.Work))
	crash := "  crashy:\n    build: services/ssh\n    command: [\"exit\", \"3\"]\n"
	fleet = strings.Replace(fleet, "services:\n", "services:\n"+crash+"  absent:\n    image: decoys/absent:1\n", 1)
	w.repo.Write(map[string]string{"fleet.yaml": fleet})
	w.commit("three deckies", [][2]string{{"good", "ssh"}, {"crash", "crashy"}, {"noimg", "absent"}}, nil)

	d := testDocker(t)
	ctx := context.Background()
	args := []string{"--steady-timeout", "6s", "--retry-budget", "2"}
	code, out := w.once(args...)
	if code != 1 {
		t.Fatalf("want exit 1, got %d\n%s", code, out)
	}

	// A clash: a container this agent does not own holds a desired name.
	img := w.owned()[w.name("good")+"-ssh"].Image
	foreign, err := d.ContainerCreate(ctx, &container.Config{Image: img}, nil, nil, nil, w.name("clash")+"-ssh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.ContainerRemove(context.Background(), foreign.ID, container.RemoveOptions{Force: true}) })
	w.commit("three deckies and a clash", [][2]string{{"good", "ssh"}, {"crash", "crashy"}, {"noimg", "absent"}, {"clash", "ssh"}}, nil)

	failures := func() map[string]string {
		rows, _ := w.store.Events(ctx, master.EventFilter{Host: w.host})
		m := map[string]string{}
		for _, r := range rows {
			if r.Status != "succeeded" {
				m[strings.TrimPrefix(r.DeckyName, w.host+"-")] += r.Status + ":" + r.Error + "\n"
			}
		}
		return m
	}
	f := failures()
	if !strings.Contains(f["crash"], "did not reach a steady state") || !strings.Contains(f["crash"], "exit code 3") && !strings.Contains(f["crash"], "restarted") || !strings.Contains(f["crash"], "exiting with status 3") {
		t.Fatalf("a service that exits at once must fail with its state and logs, got:\n%s", f["crash"])
	}
	if !strings.Contains(f["noimg"], "decoys/absent:1") || !strings.Contains(f["noimg"], "not present on this worker") {
		t.Fatalf("missing image failure: %s", f["noimg"])
	}
	if _, ok := w.owned()[w.name("good")]; !ok {
		t.Fatal("the good decky did not come up next to the broken ones")
	}

	// Second attempt at the same desired state: budget used up, quarantined.
	if code, out := w.once(args...); code != 1 {
		t.Fatalf("want exit 1, got %d\n%s", code, out)
	}
	f = failures()
	for _, d := range []string{"crash", "noimg"} {
		if strings.Count(f[d], "quarantined:") != 1 {
			t.Fatalf("%s: want one quarantine report, got:\n%s", d, f[d])
		}
	}
	if !strings.Contains(f["clash"], "does not own") {
		t.Fatalf("the name clash was not reported: %q", f["clash"])
	}
	// The foreign container is untouched.
	if fc, err := d.ContainerInspect(ctx, foreign.ID); err != nil || fc.State.Running {
		t.Fatalf("the foreign container was touched: %v", err)
	}

	// Quarantined deckies are left alone: no attempt, no new report. What
	// is asserted is what the agent did (its own Engine API calls and the
	// container IDs), never the Engine's timestamps: the crash-looping
	// container keeps being restarted by its restart policy, with a backoff
	// that moves its StartedAt whatever the agent does.
	n := len(failures()["crash"])
	before := ids(w.owned(), w.name("crash"))
	spy := newDockerSpy(t)
	calls := spy.count()
	if code, out := w.once(args...); code != 1 {
		t.Fatalf("want exit 1, got %d\n%s", code, out)
	}
	if len(failures()["crash"]) != n {
		t.Fatal("a quarantined decky was retried or reported again")
	}
	if m := agentMutations(spy.since(calls)); len(m) != 0 {
		t.Fatalf("a pass with only quarantined deckies changed containers: %v", m)
	}
	if after := ids(w.owned(), w.name("crash")); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a pass with only quarantined deckies replaced containers: %v -> %v", before, after)
	}

	// Fixed in git: the desired state changes, the decky recovers.
	fixed := strings.Replace(fleet, "command: [\"exit\", \"3\"]", "command: [\"serve\"]", 1)
	w.repo.Write(map[string]string{"fleet.yaml": fixed})
	c := w.commit("crashy fixed", [][2]string{{"good", "ssh"}, {"crash", "crashy"}, {"noimg", "absent"}}, nil)
	w.once(args...)
	got := w.events(c)
	found := false
	for _, e := range got {
		found = found || e == "crash deploy succeeded" || e == "crash mutate succeeded"
	}
	if !found {
		t.Fatalf("the fixed decky did not recover: %v", got)
	}
	if st := w.owned()[w.name("crash")+"-crashy"]; st.State != "running" {
		t.Fatalf("crashy not running after the fix: %+v", st)
	}
}

// isBuildCall recognises the Engine API calls of an image build (classic
// /build, or BuildKit's /session and /grpc streams).
func isBuildCall(call string) bool {
	return strings.Contains(call, "/build") || strings.Contains(call, "/session") || strings.Contains(call, "/grpc")
}
