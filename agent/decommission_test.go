package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/internal/fake"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
)

// steps records what the decommission did, in order, across the roles.
type steps struct {
	mu  stdsync.Mutex
	seq []string
}

func (s *steps) add(e string) { s.mu.Lock(); s.seq = append(s.seq, e); s.mu.Unlock() }
func (s *steps) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seq)
}

// recLAN is fake.LAN that records helper removals.
type recLAN struct {
	*fake.LAN
	steps *steps
}

func (l recLAN) RemoveHelper(name, owner string) error {
	l.steps.add("RemoveHelper " + name + " " + owner)
	return nil
}

// decomWorld is a converged worker (deckies a and b) whose agent records
// its steps, with a lock file as agent.Open leaves one.
type decomWorld struct {
	*world
	steps *steps
	logs  *bytes.Buffer
	lock  *state.Lock
}

func newDecomWorld(t *testing.T, tune ...func(*agent.Config)) *decomWorld {
	w := &decomWorld{world: newWorld(t, tune...), steps: &steps{}, logs: &bytes.Buffer{}}
	w.push("a:ssh", "b:ssh,http")
	w.mustPass(true)
	var err error
	if w.lock, err = state.Acquire(w.cfg.StateDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.lock.Release)
	w.a = w.recAgent()
	return w
}

// recAgent is the world's agent with recording roles and a JSON log.
func (w *decomWorld) recAgent() *agent.Agent {
	w.t.Helper()
	a, err := agent.New(w.cfg, agent.Deps{Engine: w.eng, LAN: recLAN{w.lan, w.steps}, Source: source{w.src}, Outbox: w.box, Reporter: w.rep,
		Ports: w.ports, Log: slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		w.t.Fatal(err)
	}
	return a
}

// decommission commits decommission: true (signed unless unsigned).
func (w *decomWorld) decommission(signed bool) string {
	w.src.Signer = ""
	if signed {
		w.src.Signer = "ops@example (ssh)"
	}
	return w.src.Push(map[string]string{"fleet.yaml": fleetYAML, "hosts/w.yaml": "decommission: true\n"})
}

// stateEntries lists what is left in the state directory.
func stateEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the state directory itself must stay: %v", err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// logLines decodes the JSON log lines with the given message.
func (w *decomWorld) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(w.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// The decommission runs in order: every owned container (services before
// bases), then the network and the helper link; then the final teardown
// events and heartbeat are delivered, while the state directory still
// holds them; then its contents go (not the directory); the pass says
// ErrDecommissioned and nothing is written after it.
func TestDecommissionOrder(t *testing.T) {
	w := newDecomWorld(t)
	calls := len(w.eng.Calls())
	var atFlush []string
	master := &fake.Reporter{Outbox: w.box}
	w.rep.FlushFn = func(ctx context.Context, hb report.Heartbeat) (int, error) {
		atFlush = append(atFlush, w.containers()...)
		w.steps.add(fmt.Sprintf("Flush depth=%d decommissioned=%v", w.box.Depth(), hb.Decommissioned))
		w.steps.add("state dir at flush: " + strings.Join(stateEntries(t, w.cfg.StateDir), ","))
		seen := len(master.Events())
		n, err := master.Flush(ctx, hb)
		for _, e := range master.Events()[seen:] {
			w.steps.add("delivered " + e.DeckyName + " " + e.Operation + " " + e.Status)
		}
		return n, err
	}
	c := w.decommission(true)
	res, err := w.pass(false)
	if !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("pass = %v, want ErrDecommissioned", err)
	}
	if len(atFlush) != 0 {
		t.Fatalf("containers left when the final report went out: %v", atFlush)
	}
	if got := w.containers(); len(got) != 0 {
		t.Fatalf("containers left: %v", got)
	}
	// The Engine: a's service, a's base, b's services, b's base, then the
	// network.
	var removes []string
	for _, call := range w.eng.Calls()[calls:] {
		if strings.HasPrefix(call, "Remove") {
			removes = append(removes, call)
		}
	}
	if len(removes) != 5 || !strings.HasPrefix(removes[4], "RemoveNetwork decnet_lan") {
		t.Fatalf("engine removals = %v, want 2 per decky then the network", removes)
	}
	want := []string{
		"RemoveHelper decnet_macvlan0 w",
		"RemoveHelper decnet_ipvlan0 w", // the link's name had the network been ipvlan
		"Flush depth=2 decommissioned=true",
		"state dir at flush: lock,outbox,state.json",
		"delivered a teardown succeeded",
		"delivered b teardown succeeded",
	}
	if got := w.steps.all(); !slices.Equal(got, want) {
		t.Fatalf("steps =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, e := range res.Events {
		if e.Commit != c || e.Operation != string(apply.OpTeardown) || !strings.Contains(e.Note, "hosts/w.yaml:1") {
			t.Errorf("teardown event %+v: want the commit and the host file's line", e)
		}
	}
	hbs := master.Heartbeats()
	if len(hbs) != 1 {
		t.Fatalf("final heartbeats = %d, want 1", len(hbs))
	}
	if hb := hbs[len(hbs)-1]; !hb.Decommissioned || hb.Commit != c || !strings.Contains(hb.PassError, "decommissioned") || hb.Status.Deployed {
		t.Fatalf("final heartbeat = %+v", hb)
	}
	if got := stateEntries(t, w.cfg.StateDir); len(got) != 0 {
		t.Fatalf("state directory after decommission: %v, want empty", got)
	}
}

// The master never takes the final reports: after Config.ReportTimeout
// each undelivered event is one structured log line (event id, decky,
// operation, status, commit), then the state goes anyway.
func TestDecommissionLogsUndeliveredEvents(t *testing.T) {
	w := newDecomWorld(t, func(c *agent.Config) { c.ReportTimeout = 50 * time.Millisecond })
	tries := 0
	w.rep.FlushFn = func(ctx context.Context, _ report.Heartbeat) (int, error) {
		tries++
		return 0, errors.New("master unreachable")
	}
	c := w.decommission(true)
	pending, err := w.box.Pending(0)
	if err != nil || len(pending) != 0 {
		t.Fatalf("outbox before = %v %v", pending, err)
	}
	res, err := w.pass(false)
	if !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("pass = %v, want ErrDecommissioned", err)
	}
	if tries == 0 {
		t.Fatal("the final reports were never tried")
	}
	lines := w.logLines("undelivered lifecycle event")
	if len(lines) != len(res.Events) || len(lines) != 2 {
		t.Fatalf("undelivered event lines = %d, events = %d, want 2 each\n%s", len(lines), len(res.Events), w.logs)
	}
	for i, l := range lines {
		if l["decky"] != []string{"a", "b"}[i] || l["operation"] != "teardown" || l["status"] != "succeeded" || l["commit"] != c ||
			l["event_id"] == "" || l["event_id"] == nil || l["seq"] == nil {
			t.Errorf("log line %d = %v", i, l)
		}
	}
	if hb := w.logLines("undelivered heartbeat"); len(hb) != 1 || hb[0]["decommissioned"] != true {
		t.Errorf("undelivered heartbeat lines = %v", hb)
	}
	if got := stateEntries(t, w.cfg.StateDir); len(got) != 0 {
		t.Fatalf("state directory after decommission: %v, want empty", got)
	}
}

// Without a trust policy that verified the commit, decommission: true is
// refused: nothing is removed, the reason names the host file's line and
// reaches the master; with the explicit override it is honoured.
func TestDecommissionUnverifiedIsRefused(t *testing.T) {
	w := newDecomWorld(t)
	before, mutations := w.containers(), len(w.eng.Mutations())
	w.decommission(false)
	_, err := w.pass(false)
	if !errors.Is(err, agent.ErrUnverifiedDecommission) || errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("unsigned decommission: %v, want ErrUnverifiedDecommission", err)
	}
	if se, ok := errors.AsType[*agent.StepError](err); !ok || se.Step != "decommission" || !strings.Contains(err.Error(), "hosts/w.yaml:1") {
		t.Fatalf("refusal %v: want the decommission step naming hosts/w.yaml:1", err)
	}
	if got := w.containers(); !slices.Equal(got, before) || len(w.eng.Mutations()) != mutations || len(w.steps.all()) != 0 {
		t.Fatalf("a refused decommission changed the worker: containers %v, steps %v", got, w.steps.all())
	}
	hbs := w.rep.Heartbeats()
	if hb := hbs[len(hbs)-1]; hb.Decommissioned || !strings.Contains(hb.PassError, "not verified") || !strings.Contains(hb.PassError, "hosts/w.yaml:1") {
		t.Fatalf("heartbeat after the refusal = %+v", hb)
	}
	if _, err := os.Stat(filepath.Join(w.cfg.StateDir, state.File)); err != nil {
		t.Fatalf("the refusal removed the state: %v", err)
	}

	w.cfg.AllowUnverifiedDecommission = true
	w.a = w.recAgent()
	if _, err := w.pass(false); !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("with --allow-unverified-decommission: %v", err)
	}
	if got := w.containers(); len(got) != 0 {
		t.Fatalf("containers left: %v", got)
	}
}

// An agent started again on the emptied state directory (a timer's next
// run) against the same commit finds nothing to remove, reports a
// decommissioned heartbeat and no event, empties the directory again.
func TestDecommissionIsIdempotent(t *testing.T) {
	w := newDecomWorld(t)
	w.decommission(true)
	if _, err := w.pass(false); !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatal(err)
	}
	w.lock.Release()
	// As agent.Open does on a fresh start: lock and outbox re-created.
	lock, err := state.Acquire(w.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	if w.box, err = report.OpenOutbox(filepath.Join(w.cfg.StateDir, "outbox"), "w"); err != nil {
		t.Fatal(err)
	}
	w.rep = &fake.Reporter{Outbox: w.box}
	w.a = w.recAgent()
	calls := len(w.eng.Calls())
	res, err := w.pass(false)
	if !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("second decommission: %v", err)
	}
	if len(res.Events) != 0 || len(w.rep.Events()) != 0 {
		t.Fatalf("nothing was left, yet events: %v", events(res.Events))
	}
	for _, c := range w.eng.Calls()[calls:] {
		if strings.HasPrefix(c, "Remove ") {
			t.Fatalf("removed something on an empty worker: %v", w.eng.Calls()[calls:])
		}
	}
	if hbs := w.rep.Heartbeats(); len(hbs) != 1 || !hbs[0].Decommissioned {
		t.Fatalf("heartbeats of the second run = %+v", hbs)
	}
	if got := stateEntries(t, w.cfg.StateDir); len(got) != 0 {
		t.Fatalf("state directory after the second run: %v", got)
	}
}

// plan shows the removals and changes nothing.
func TestDecommissionPlanOnlyShows(t *testing.T) {
	w := newDecomWorld(t)
	w.decommission(true)
	w.cfg.ReadOnly = true
	w.a = w.recAgent()
	before, calls := w.containers(), len(w.eng.Calls())
	res, err := w.pass(true)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range res.Changes.Entries {
		got = append(got, e.Decky+" "+string(e.Action))
	}
	if !slices.Equal(got, []string{"a remove", "b remove"}) {
		t.Fatalf("plan = %v", got)
	}
	for _, c := range w.eng.Calls()[calls:] {
		if c != "ListContainers" {
			t.Fatalf("plan called %q", c)
		}
	}
	if !slices.Equal(w.containers(), before) || len(w.steps.all()) != 0 {
		t.Fatal("plan changed the worker")
	}
	if len(stateEntries(t, w.cfg.StateDir)) == 0 {
		t.Fatal("plan removed the state")
	}
}

// A teardown that fails keeps the state and does not stop the agent: the
// failure is reported, and the next pass tries again.
func TestDecommissionFailedTeardownKeepsState(t *testing.T) {
	w := newDecomWorld(t)
	w.eng.RemoveFn = func(ctx context.Context, ids []string) error { return errors.New("engine says no") }
	w.decommission(true)
	res, err := w.pass(false)
	if err == nil || errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("failed teardown: %v, want an error that is not ErrDecommissioned", err)
	}
	if got := events(res.Events); !slices.Equal(got, []string{"a teardown failed", "b teardown failed"}) {
		t.Fatalf("events = %v", got)
	}
	if _, err := os.Stat(filepath.Join(w.cfg.StateDir, state.File)); err != nil {
		t.Fatalf("state removed after a failed teardown: %v", err)
	}
	w.eng.RemoveFn = nil
	if _, err := w.pass(false); !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("retry: %v", err)
	}
}

// The daemon loop stops after the decommissioning pass, by itself.
func TestRunStopsAfterDecommission(t *testing.T) {
	w := newDecomWorld(t)
	w.decommission(true)
	passes := 0
	err := w.a.Run(context.Background(), agent.LoopOptions{Interval: time.Hour,
		After: func(time.Duration) <-chan time.Time {
			t.Error("the loop waited for another pass")
			return make(chan time.Time)
		},
		OnPass: func(*agent.Result, error, time.Duration) { passes++ }})
	if !errors.Is(err, agent.ErrDecommissioned) || passes != 1 {
		t.Fatalf("Run = %v after %d passes, want ErrDecommissioned after 1", err, passes)
	}
}

// RemoveStateContents empties the directory of the agent's files, never
// the directory itself, and leaves files that are not the agent's.
func TestRemoveStateContents(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"git/clone/objects", "contexts/ctx-1", "outbox/rejected"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"state.json", "suspend", "lock", ".tmp-123", "git/clone/HEAD", "outbox/heartbeat.json", "not-ours.txt"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var logs bytes.Buffer
	if err := agent.RemoveStateContents(dir, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	if got := stateEntries(t, dir); !slices.Equal(got, []string{"not-ours.txt"}) {
		t.Fatalf("left = %v, want only the foreign file", got)
	}
	if !strings.Contains(logs.String(), "not-ours.txt") {
		t.Fatalf("the foreign file was not logged: %s", logs.String())
	}
}

// A suspended agent applies nothing, a decommission included.
func TestDecommissionWaitsWhileSuspended(t *testing.T) {
	w := newDecomWorld(t)
	if err := agent.Suspend(w.cfg.StateDir, "maintenance"); err != nil {
		t.Fatal(err)
	}
	before := w.containers()
	w.decommission(true)
	if _, err := w.pass(false); err != nil {
		t.Fatalf("suspended pass: %v", err)
	}
	if got := w.containers(); !slices.Equal(got, before) || len(w.steps.all()) != 0 {
		t.Fatalf("a suspended agent decommissioned: containers %v, steps %v", got, w.steps.all())
	}
	if err := agent.Resume(w.cfg.StateDir); err != nil {
		t.Fatal(err)
	}
	if _, err := w.pass(false); !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("after resume: %v", err)
	}
}

// Events the master refused one by one (set aside in rejected/) are
// written to the log before the outbox is deleted: the log outlives the
// state directory.
func TestDecommissionLogsSetAsideEvents(t *testing.T) {
	w := newDecomWorld(t)
	ev, err := w.box.Add(report.Event{DeckyName: "old", Operation: "deploy", Status: "failed", Error: "refused by the master"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.box.SetAside(ev, "422: malformed config_hash"); err != nil {
		t.Fatal(err)
	}
	w.decommission(true)
	if _, err := w.pass(false); !errors.Is(err, agent.ErrDecommissioned) {
		t.Fatalf("pass = %v, want ErrDecommissioned", err)
	}
	lines := w.logLines("decommission: event set aside, never delivered")
	if len(lines) != 1 || lines[0]["reason"] != "422: malformed config_hash" || !strings.Contains(fmt.Sprint(lines[0]["event"]), `"refused by the master"`) {
		t.Fatalf("set-aside log lines = %v\n%s", lines, w.logs)
	}
	if got := stateEntries(t, w.cfg.StateDir); len(got) != 0 {
		t.Fatalf("state directory after decommission: %v, want empty", got)
	}
}
