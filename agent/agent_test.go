package agent_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/compose-spec/compose-go/v2/types"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/fake"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/relocalize"
	"github.com/decnet/pull-agent/report"
)

// The shared fakes play the agent's roles.
var (
	_ agent.Engine   = (*fake.Engine)(nil)
	_ agent.LAN      = (*fake.LAN)(nil)
	_ agent.Source   = source{}
	_ agent.Reporter = (*fake.Reporter)(nil)
	_ agent.Tree     = fake.Tree{}
)

// source adapts fake.Source (which cannot import agent) to agent.Source.
type source struct{ *fake.Source }

func (s source) Sync(ctx context.Context, applied string) (agent.Revision, error) {
	c, remote, signer, fetched, tree, err := s.Source.Sync(ctx, applied)
	return agent.Revision{Commit: c, Remote: remote, Signer: signer, Fetched: fetched, Tree: tree}, err
}

const fleetYAML = `version: 1
defaults:
  distro: base
distros:
  base: {image: "decoys/base:1"}
services:
  ssh: {image: "decoys/ssh:1", ports: [22]}
  http: {image: "decoys/http:1", ports: [80]}
`

// world is one worker with fake roles and a real outbox and state
// directory.
type world struct {
	t   *testing.T
	cfg agent.Config
	eng *fake.Engine
	lan *fake.LAN
	src *fake.Source
	rep *fake.Reporter
	box *report.Outbox
	// ports checks declared ports (the LAN check): all answer unless set.
	ports *ports
	a     *agent.Agent
}

func newWorld(t *testing.T, tune ...func(*agent.Config)) *world {
	t.Helper()
	dir := t.TempDir()
	w := &world{t: t, eng: fake.NewEngine(), lan: fake.NewLAN(), src: &fake.Source{}, ports: &ports{}}
	w.cfg = agent.Config{Host: "w", StateDir: dir, RetryBudget: 3, Probe: true, Helper: "decnet_macvlan0",
		Steady: apply.SteadyOptions{Samples: 1, Interval: time.Millisecond, Timeout: 5 * time.Second}}
	for _, f := range tune {
		f(&w.cfg)
	}
	var err error
	if w.box, err = report.OpenOutbox(filepath.Join(dir, "outbox"), "w"); err != nil {
		t.Fatal(err)
	}
	w.rep = &fake.Reporter{Outbox: w.box}
	w.a = w.newAgent()
	return w
}

func (w *world) newAgent() *agent.Agent {
	w.t.Helper()
	a, err := agent.New(w.cfg, agent.Deps{Engine: w.eng, LAN: w.lan, Source: source{w.src}, Outbox: w.box, Reporter: w.rep, Ports: w.ports})
	if err != nil {
		w.t.Fatal(err)
	}
	return a
}

// push commits a host file with deckies given as "name:svc,svc".
func (w *world) push(deckies ...string) string {
	var b strings.Builder
	b.WriteString("deckies:")
	if len(deckies) == 0 {
		b.WriteString(" []")
	}
	b.WriteString("\n")
	for _, d := range deckies {
		name, svcs, _ := strings.Cut(d, ":")
		fmt.Fprintf(&b, "  - name: %s\n    services: [%s]\n", name, svcs)
	}
	return w.src.Push(map[string]string{"fleet.yaml": fleetYAML, "hosts/w.yaml": b.String()})
}

func (w *world) pass(full bool) (*agent.Result, error) {
	w.t.Helper()
	return w.a.Pass(context.Background(), agent.PassOptions{Full: full})
}

func (w *world) mustPass(full bool) *agent.Result {
	w.t.Helper()
	res, err := w.pass(full)
	if err != nil {
		w.t.Fatalf("pass: %v", err)
	}
	return res
}

// containers returns the engine's container names.
func (w *world) containers() []string {
	cs, _ := w.eng.ListContainers(context.Background())
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// events renders events as "decky operation status".
func events(es []report.Event) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.DeckyName+" "+e.Operation+" "+e.Status)
	}
	return out
}

func TestPassConvergesThenSkipsUnchangedCommit(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh", "b:ssh,http")
	res := w.mustPass(false)
	if got, want := events(res.Events), []string{"a deploy succeeded", "b deploy succeeded"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if got, want := w.containers(), []string{"a", "a-ssh", "b", "b-http", "b-ssh"}; !slices.Equal(got, want) {
		t.Fatalf("containers = %v, want %v", got, want)
	}
	if got := events(w.rep.Events()); len(got) != 2 {
		t.Fatalf("delivered events = %v", got)
	}
	st := w.a.State()
	if !st.LastClean || st.LastCommit != res.Commit || len(st.Applied) != 2 || len(st.Addresses) != 2 {
		t.Fatalf("state after converging: %+v", st)
	}
	// Without trust roots nothing is verified, and every report says so.
	if hbs := w.rep.Heartbeats(); len(hbs) == 0 || hbs[len(hbs)-1].Verified != "none" || st.Verified != "none" {
		t.Fatalf("without trust, heartbeat and state must say verified: none (state %q)", st.Verified)
	}
	// The helper link routes to both deckies before apply (the LAN check
	// dials through it) and after.
	if hs := w.lan.Helpers(); len(hs) != 2 || len(hs[0].Deckies) != 2 || len(hs[1].Deckies) != 2 {
		t.Fatalf("helper routes: %+v", hs)
	}

	calls, syncs, beats := len(w.eng.Calls()), w.src.Calls(), len(w.rep.Heartbeats())
	for range 3 {
		res = w.mustPass(false)
		if !res.Skipped {
			t.Fatalf("a pass over an unmoved commit on a clean worker was not skipped: %+v", res)
		}
		if got := stepNames(res); !slices.Equal(got, []string{"fetch"}) {
			t.Fatalf("a skipped pass ran steps %v, want only fetch", got)
		}
	}
	if got := w.eng.Calls()[calls:]; len(got) != 0 {
		t.Fatalf("skipped passes called the engine: %v", got)
	}
	if w.src.Calls() != syncs+3 || len(w.rep.Heartbeats()) != beats+3 {
		t.Fatalf("skipped passes must still fetch and send a heartbeat: syncs %d->%d beats %d->%d", syncs, w.src.Calls(), beats, len(w.rep.Heartbeats()))
	}
	// A full pass (once, resync) on the same commit diffs and changes nothing.
	m := len(w.eng.Mutations())
	res = w.mustPass(true)
	if res.Skipped || res.Changes.Changes() || len(w.eng.Mutations()) != m {
		t.Fatalf("full pass on a converged worker: %+v, mutations %v", res, w.eng.Mutations())
	}
	// Every step ran once, in order, and says so (metrics and debug log).
	wantSteps := []string{"fetch", "parse", "suspend", "decommission", "detect", "allocate", "render", "diff", "identity", "prune", "network", "apply", "record", "helper"}
	if got := stepNames(res); !slices.Equal(got, wantSteps) {
		t.Fatalf("a full pass ran steps %v, want %v", got, wantSteps)
	}
	// A new agent (a restart) has no picture yet: its first pass is full.
	w.a = w.newAgent()
	if res := w.mustPass(false); res.Skipped {
		t.Fatal("the first pass of a restarted agent was skipped")
	}
}

func TestReplansAfterTheNetworkWasReplaced(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh", "b:http")
	w.mustPass(true)
	// The LAN's gateway changed: the network spec (and every container
	// hash) changes, and the engine replaces the network, removing the
	// bases attached to it. The pass lists again and plans from what is
	// left: a and b get new bases and every service recreated into them.
	w.lan.Default.Gateway = netip.MustParseAddr("198.51.100.254")
	w.push("a:ssh", "b:http", "c:ssh")
	calls := len(w.eng.Calls())
	res := w.mustPass(false)
	if got, want := events(res.Events), []string{"a mutate succeeded", "b mutate succeeded", "c deploy succeeded"}; !slices.Equal(got, want) {
		t.Fatalf("events after the network was replaced = %v, want %v", got, want)
	}
	seq := w.eng.Calls()[calls:]
	i := slices.Index(seq, "EnsureNetwork decnet_lan")
	if i < 0 || i+1 >= len(seq) || seq[i+1] != "ListContainers" {
		t.Fatalf("no re-listing right after the network was replaced: %v", seq)
	}
	for _, e := range res.Changes.Entries {
		if e.Decky != "c" && (!e.RecreateBase || e.Action != apply.Update) {
			t.Errorf("decky %s: %s recreate_base=%v after the network was replaced, want an update of everything", e.Decky, e.Action, e.RecreateBase)
		}
	}
	if got, want := w.containers(), []string{"a", "a-ssh", "b", "b-http", "c", "c-ssh"}; !slices.Equal(got, want) {
		t.Fatalf("containers = %v, want %v", got, want)
	}
}

func TestQuarantineAndItsResetOnANewDesiredState(t *testing.T) {
	w := newWorld(t)
	broken := true
	w.eng.UpFn = func(ctx context.Context, p *types.Project, services, recreate []string) error {
		for _, n := range append(slices.Clone(services), recreate...) {
			if broken && (n == "bad" || strings.HasPrefix(n, "bad-")) {
				return errors.New("image decoys/ssh:1 exploded")
			}
		}
		return w.eng.UpDefault(ctx, p, services, recreate)
	}
	w.push("good:ssh", "bad:ssh")
	var all []string
	for i := range 4 {
		res, err := w.pass(true)
		if err != nil {
			t.Fatal(err)
		}
		if res.Failed != 1 {
			t.Fatalf("pass %d: failed = %d, want 1", i, res.Failed)
		}
		all = append(all, events(res.Events)...)
	}
	want := []string{"good deploy succeeded", "bad deploy failed", "bad deploy failed", "bad deploy failed", "bad deploy quarantined"}
	slices.Sort(all)
	slices.Sort(want)
	if !slices.Equal(all, want) {
		t.Fatalf("events over four passes = %v, want %v", all, want)
	}
	if n := countPrefix(w.eng.Calls(), "Up bad"); n != 3 {
		t.Fatalf("the bad decky was tried %d times, want 3 (the budget), then left alone", n)
	}
	st := w.a.State()
	if f := st.Failures["bad"]; f.Count != 3 || !f.Quarantined {
		t.Fatalf("failure record = %+v", f)
	}
	// A new desired state for the decky lifts the quarantine.
	broken = false
	w.push("good:ssh", "bad:ssh,http")
	res := w.mustPass(false)
	if got := events(res.Events); !slices.Equal(got, []string{"bad deploy succeeded"}) {
		t.Fatalf("after a new desired state: %v", got)
	}
	if st := w.a.State(); len(st.Failures) != 0 || !st.LastClean {
		t.Fatalf("failures not cleared: %+v", st.Failures)
	}
}

func countPrefix(calls []string, prefix string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// A refusal at any step before apply leaves the worker exactly as it was:
// no engine mutation, no address or applied hash changed, the reason in
// the heartbeat.
func TestRefusalAtEachStepChangesNothing(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		step  string
		setup func(w *world)
		want  string
	}{
		{step: "fetch", setup: func(w *world) {
			w.src.SyncFn = func(context.Context, string) (string, fake.Tree, error) { return "", fake.Tree{}, boom }
		}, want: "cannot fetch"},
		{step: "parse", setup: func(w *world) {
			w.src.Push(map[string]string{"fleet.yaml": fleetYAML, "hosts/w.yaml": "deckies:\n  - name: BAD\n"})
		}, want: "invalid"},
		{step: "parse", setup: func(w *world) {
			w.src.Push(map[string]string{"fleet.yaml": fleetYAML, "hosts/other.yaml": "deckies: []\n"})
		}, want: "has no hosts/w.yaml"},
		{step: "detect", setup: func(w *world) {
			w.lan.DetectFn = func(context.Context, hostnet.Options) (relocalize.LAN, error) { return relocalize.LAN{}, boom }
		}, want: "boom"},
		{step: "allocate", setup: func(w *world) {
			w.eng.ListFn = func(context.Context) ([]engine.Container, error) { return nil, boom }
		}, want: "boom"},
		{step: "allocate", setup: func(w *world) {
			w.lan.ProbeFn = func(context.Context, string, []netip.Addr) (map[netip.Addr]string, error) { return nil, boom }
		}, want: "duplicate address detection"},
		{step: "render", setup: func(w *world) {
			w.eng.ImageIDFn = func(context.Context, string) (string, error) { return "", boom }
		}, want: "boom"},
		{step: "network", setup: func(w *world) {
			w.eng.EnsureNetworkFn = func(context.Context, engine.NetworkSpec, string) (engine.NetworkInfo, error) {
				return engine.NetworkInfo{}, boom
			}
		}, want: "boom"},
	} {
		t.Run(tc.step+" "+tc.want, func(t *testing.T) {
			w := newWorld(t)
			w.push("a:ssh", "b:ssh")
			w.mustPass(true)
			before, mutations := w.a.State(), len(w.eng.Mutations())
			// The next commit would change things, were the pass to go on.
			w.push("a:ssh,http", "c:ssh")
			tc.setup(w)
			_, err := w.pass(true)
			var se *agent.StepError
			if !errors.As(err, &se) || se.Step != tc.step || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a refusal by step %s containing %q", err, tc.step, tc.want)
			}
			if got := w.eng.Mutations()[mutations:]; len(got) != 0 {
				t.Fatalf("a refused pass changed the worker: %v", got)
			}
			after := w.a.State()
			if fmt.Sprint(after.Addresses) != fmt.Sprint(before.Addresses) || fmt.Sprint(after.Applied) != fmt.Sprint(before.Applied) || after.LastCommit != before.LastCommit {
				t.Fatalf("a refused pass changed the state:\n%+v\n%+v", before, after)
			}
			hbs := w.rep.Heartbeats()
			if hb := hbs[len(hbs)-1]; !strings.Contains(hb.PassError, tc.want) {
				t.Fatalf("heartbeat pass_error = %q", hb.PassError)
			}
			saved, err := state.Load(w.cfg.StateDir, "w")
			if err != nil || saved.LastCommit != before.LastCommit {
				t.Fatalf("saved state: %+v %v", saved, err)
			}
		})
	}
}

// Shutting down during apply is not a failure: the decky in flight is
// abandoned (no event, no failure count), the report still goes out, and
// the next pass plans it again.
func TestShutdownDuringApplyAbandons(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh")
	w.mustPass(true)
	w.push("a:ssh", "slow:ssh")
	ctx, cancel := context.WithCancel(context.Background())
	w.eng.UpFn = func(ctx context.Context, _ *types.Project, _, _ []string) error {
		cancel() // SIGTERM arrives while the decky is being brought up
		<-ctx.Done()
		return fmt.Errorf("compose up: %w", ctx.Err())
	}
	beats := len(w.rep.Heartbeats())
	res, err := w.a.Pass(ctx, agent.PassOptions{Full: true})
	if err != nil {
		t.Fatalf("a pass cut short by shutdown is not refused: %v", err)
	}
	if !slices.Equal(res.Abandoned, []string{"slow"}) || len(res.Events) != 0 || res.Failed != 0 {
		t.Fatalf("abandoned=%v events=%v failed=%d", res.Abandoned, events(res.Events), res.Failed)
	}
	st := w.a.State()
	if len(st.Failures) != 0 || st.LastClean {
		t.Fatalf("an abandoned decky must not count as a failure, and keeps the worker unclean: %+v", st)
	}
	if len(w.rep.Heartbeats()) != beats+1 {
		t.Fatal("no heartbeat flushed on shutdown")
	}
	w.eng.UpFn = nil
	res = w.mustPass(false)
	if got := events(res.Events); !slices.Equal(got, []string{"slow deploy succeeded"}) {
		t.Fatalf("the next pass: %v", got)
	}
}

// A plan (read-only) changes nothing and writes nothing.
func TestReadOnlyPassChangesNothing(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh")
	w.mustPass(true)
	w.push("a:ssh", "b:http")
	w.cfg.ReadOnly = true
	ro, err := agent.New(w.cfg, agent.Deps{Engine: w.eng, LAN: w.lan, Source: source{w.src}})
	if err != nil {
		t.Fatal(err)
	}
	m, beats := len(w.eng.Mutations()), len(w.rep.Heartbeats())
	stateFile, _ := os.ReadFile(filepath.Join(w.cfg.StateDir, state.File))
	res, err := ro.Pass(context.Background(), agent.PassOptions{Full: true})
	if err != nil || !res.Changes.Changes() || res.Changes.Count()[apply.Create] != 1 {
		t.Fatalf("plan: %+v %v", res, err)
	}
	after, _ := os.ReadFile(filepath.Join(w.cfg.StateDir, state.File))
	if len(w.eng.Mutations()) != m || len(w.rep.Heartbeats()) != beats || string(after) != string(stateFile) {
		t.Fatal("a read-only pass changed the worker, reported or wrote state")
	}
}

func TestLeftoverBuildContextsAreRemovedAtStart(t *testing.T) {
	w := newWorld(t)
	old := filepath.Join(w.a.ContextDir(), "ctx-123")
	keep := filepath.Join(w.a.ContextDir(), "other")
	for _, d := range []string{old, keep} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	w.newAgent()
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover %s not removed: %v", old, err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("%s is not a build context and must stay: %v", keep, err)
	}
}

// pushHost commits a host file with extra top-level lines and deckies.
func (w *world) pushHost(extra string, deckies ...string) string {
	var b strings.Builder
	b.WriteString(extra)
	b.WriteString("deckies:")
	if len(deckies) == 0 {
		b.WriteString(" []")
	}
	b.WriteString("\n")
	for _, d := range deckies {
		name, svcs, _ := strings.Cut(d, ":")
		fmt.Fprintf(&b, "  - name: %s\n    services: [%s]\n", name, svcs)
	}
	return w.src.Push(map[string]string{"fleet.yaml": fleetYAML, "hosts/w.yaml": b.String()})
}

func deckyNames(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("d%02d:ssh", i))
	}
	return out
}

func TestPruneGuard(t *testing.T) {
	for _, tc := range []struct {
		name     string
		running  int
		keep     int
		override string
		refused  bool
	}{
		{name: "removing 9 of 10 is refused", running: 10, keep: 1, refused: true},
		{name: "removing 9 of 10 with max: all", running: 10, keep: 1, override: "prune: {max: all}\n"},
		{name: "removing 9 of 10 with max: 5 is refused", running: 10, keep: 1, override: "prune: {max: 5}\n", refused: true},
		{name: "removing 9 of 10 with max: 9", running: 10, keep: 1, override: "prune: {max: 9}\n"},
		{name: "removing 1 of 4 needs no override", running: 4, keep: 3},
		{name: "an empty host file is refused", running: 2, keep: 0, refused: true},
		{name: "an empty host file with max: all", running: 2, keep: 0, override: "prune: {max: all}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			all := deckyNames(tc.running)
			w.push(all...)
			w.mustPass(true)
			mutations := len(w.eng.Mutations())
			w.pushHost(tc.override, all[:tc.keep]...)
			res := w.mustPass(false)
			removed := tc.running - tc.keep
			var teardowns []string
			for _, e := range res.Events {
				if e.Operation == "teardown" {
					teardowns = append(teardowns, e.Status)
					if tc.refused && !strings.Contains(e.Error, "prune refused") {
						t.Errorf("refused teardown of %s without the reason: %q", e.DeckyName, e.Error)
					}
				}
			}
			if len(teardowns) != removed {
				t.Fatalf("teardown events = %v, want %d", teardowns, removed)
			}
			if !tc.refused {
				if len(w.containers()) != 2*tc.keep || res.Failed != 0 {
					t.Fatalf("allowed prune: containers %v failed %d", w.containers(), res.Failed)
				}
				return
			}
			if got := w.eng.Mutations()[mutations:]; len(got) != 0 {
				t.Fatalf("a refused prune changed the worker: %v", got)
			}
			if res.Failed != removed || slices.ContainsFunc(teardowns, func(s string) bool { return s != "failed" }) {
				t.Fatalf("failed=%d teardowns=%v", res.Failed, teardowns)
			}
			v, err := agent.ReadStatus(w.cfg.StateDir, "w")
			if err != nil || !strings.Contains(v.Deckies["d01"].Error, "prune refused") {
				t.Fatalf("status does not show the refused prune: %+v %v", v.Deckies["d01"], err)
			}
			// The next pass refuses again, silently: the reason was reported.
			if res := w.mustPass(true); len(res.Events) != 0 || res.Failed != removed {
				t.Fatalf("second refused pass: events %v failed %d", events(res.Events), res.Failed)
			}
			// The override in a later commit lets it through.
			w.pushHost("prune: {max: all}\n", all[:tc.keep]...)
			if res := w.mustPass(false); res.Failed != 0 || len(w.containers()) != 2*tc.keep {
				t.Fatalf("with the override: failed %d containers %v", res.Failed, w.containers())
			}
		})
	}
}

func TestSuspendAppliesNothingAndResumeApplies(t *testing.T) {
	for _, how := range []string{"file", "host file", "config"} {
		t.Run(how, func(t *testing.T) {
			w := newWorld(t)
			w.push("a:ssh")
			w.mustPass(true)
			applied := w.a.State().LastCommit
			mutations := len(w.eng.Mutations())
			var c2 string
			switch how {
			case "file":
				if err := agent.Suspend(w.cfg.StateDir, "maintenance"); err != nil {
					t.Fatal(err)
				}
				c2 = w.push("a:ssh", "b:http")
			case "host file":
				c2 = w.pushHost("suspend: true\n", "a:ssh", "b:http")
			case "config":
				w.cfg.Suspend = true
				w.a = w.newAgent()
				c2 = w.push("a:ssh", "b:http")
			}
			for range 2 {
				res, err := w.pass(false)
				if err != nil || res.Commit != c2 {
					t.Fatalf("suspended pass: %+v %v", res, err)
				}
			}
			if got := w.eng.Mutations()[mutations:]; len(got) != 0 {
				t.Fatalf("a suspended agent changed the worker: %v", got)
			}
			hbs := w.rep.Heartbeats()
			hb := hbs[len(hbs)-1]
			if !hb.Suspended || !strings.Contains(hb.PassError, "suspended") || !strings.Contains(hb.PassError, c2[:12]) {
				t.Fatalf("heartbeat does not say suspended with the fetched commit: %+v", hb)
			}
			if st := w.a.State(); st.LastCommit != applied || st.LastFetchOK.IsZero() {
				t.Fatalf("a suspended pass recorded the commit as applied: %+v", st)
			}
			if h := w.a.Health(); !h.Suspended {
				t.Fatal("health does not say suspended")
			}
			switch how {
			case "file":
				if err := agent.Resume(w.cfg.StateDir); err != nil {
					t.Fatal(err)
				}
			case "host file":
				w.push("a:ssh", "b:http")
			case "config":
				w.cfg.Suspend = false
				w.a = w.newAgent()
			}
			res := w.mustPass(false)
			if got := events(res.Events); !slices.Equal(got, []string{"b deploy succeeded"}) {
				t.Fatalf("after resume: %v", got)
			}
			if hbs := w.rep.Heartbeats(); hbs[len(hbs)-1].Suspended {
				t.Fatal("heartbeat still says suspended after resume")
			}
		})
	}
}

func TestReapOneDecky(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh", "b:ssh,http")
	w.mustPass(true)
	before, _ := state.Load(w.cfg.StateDir, "w")
	n, err := agent.Reap(context.Background(), agent.ReapOptions{Host: "w", StateDir: w.cfg.StateDir, Decky: "b", Outbox: w.box}, w.eng, w.lan)
	if err != nil || n != 3 {
		t.Fatalf("reap --decky b: %d %v", n, err)
	}
	if got := w.containers(); !slices.Equal(got, []string{"a", "a-ssh"}) {
		t.Fatalf("containers after reaping b = %v (its base must go too)", got)
	}
	es, _ := w.box.Pending(10)
	if got := events(es); !slices.Equal(got, []string{"b teardown succeeded"}) {
		t.Fatalf("queued = %v", got)
	}
	// The teardown names what was torn down: the configuration applied.
	if es[0].ConfigHash == "" || es[0].ConfigHash != before.Applied["b"] || es[0].Commit != before.LastCommit {
		t.Fatalf("teardown event hash %q commit %q, want the applied %q at %q", es[0].ConfigHash, es[0].Commit, before.Applied["b"], before.LastCommit)
	}
	st, _ := state.Load(w.cfg.StateDir, "w")
	if _, ok := st.Applied["b"]; ok || st.LastClean {
		t.Fatalf("state still holds b, or is clean: %+v", st)
	}
	if _, err := agent.Reap(context.Background(), agent.ReapOptions{Host: "w", StateDir: w.cfg.StateDir, Decky: "nope"}, w.eng, w.lan); err == nil {
		t.Fatal("reaping an unknown decky must fail")
	}
	// Everything: containers, network, state file.
	if n, err := agent.Reap(context.Background(), agent.ReapOptions{Host: "w", StateDir: w.cfg.StateDir}, w.eng, w.lan); err != nil || n != 2 || len(w.containers()) != 0 {
		t.Fatalf("reap all: %d %v %v", n, err, w.containers())
	}
	if _, err := os.Stat(filepath.Join(w.cfg.StateDir, state.File)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state file after reap: %v", err)
	}
}

func stepNames(res *agent.Result) []string {
	var out []string
	for _, s := range res.Steps {
		out = append(out, s.Step)
	}
	return out
}
