package agent_test

import (
	"slices"
	"testing"
	"time"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/internal/state"
)

func TestRecord(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	before, after := now.Add(-time.Second), now.Add(time.Second)
	ok := func(decky string, action apply.Action, op apply.Operation) apply.Result {
		return apply.Result{Decky: decky, Action: action, Operation: op, Status: apply.Succeeded, Hash: "h-" + decky, CompletedAt: before}
	}
	bad := func(decky, hash string) apply.Result {
		return apply.Result{Decky: decky, Action: apply.Create, Operation: apply.OpDeploy, Status: apply.FailedSt, Hash: hash, Error: "exploded", CompletedAt: before}
	}
	withFailure := func(decky string, f state.Failure) *state.State {
		st := &state.State{Addresses: map[string]state.Address{}, Applied: map[string]string{}, Failures: map[string]state.Failure{decky: f}}
		return st
	}
	empty := func() *state.State {
		return &state.State{Addresses: map[string]state.Address{}, Applied: map[string]string{}, Failures: map[string]state.Failure{}}
	}
	for _, tc := range []struct {
		name      string
		state     *state.State
		wanted    []string
		results   []apply.Result
		entries   []apply.Entry
		canceled  time.Time
		events    []string
		failed    int
		abandoned []string
		queued    func(decky string, op apply.Operation, hash string) bool
		check     func(t *testing.T, st *state.State)
	}{
		{
			name: "a succeeded create is applied and reported", state: empty(), wanted: []string{"a"},
			results: []apply.Result{ok("a", apply.Create, apply.OpDeploy)},
			events:  []string{"a deploy succeeded"},
			check: func(t *testing.T, st *state.State) {
				if st.Applied["a"] != "h-a" || !st.LastClean {
					t.Errorf("applied=%v clean=%v", st.Applied, st.LastClean)
				}
			},
		},
		{
			name: "a succeeded removal forgets the decky", wanted: nil,
			state:   &state.State{Addresses: map[string]state.Address{"a": {}}, Applied: map[string]string{"a": "h-a"}, Failures: map[string]state.Failure{"a": {Hash: "h-a", Count: 1}}},
			results: []apply.Result{ok("a", apply.Remove, apply.OpTeardown)},
			events:  []string{"a teardown succeeded"},
			check: func(t *testing.T, st *state.State) {
				if len(st.Applied)+len(st.Addresses)+len(st.Failures) != 0 {
					t.Errorf("a removed decky is remembered: %+v", st)
				}
			},
		},
		{
			name: "a failure counts once at its hash", state: empty(), wanted: []string{"a"},
			results: []apply.Result{bad("a", "h1")},
			events:  []string{"a deploy failed"}, failed: 1,
			check: func(t *testing.T, st *state.State) {
				if f := st.Failures["a"]; f.Count != 1 || f.Quarantined || f.Error != "exploded" || st.LastClean {
					t.Errorf("failure = %+v clean=%v", f, st.LastClean)
				}
			},
		},
		{
			name: "the budget-th failure quarantines and says so once", state: withFailure("a", state.Failure{Hash: "h1", Count: 2}), wanted: []string{"a"},
			results: []apply.Result{bad("a", "h1")},
			events:  []string{"a deploy failed", "a deploy quarantined"}, failed: 1,
			check: func(t *testing.T, st *state.State) {
				if f := st.Failures["a"]; f.Count != 3 || !f.Quarantined || !st.Quarantined("a", "h1") || st.Quarantined("a", "h2") {
					t.Errorf("failure = %+v", f)
				}
			},
		},
		{
			name: "a failure at a new hash starts from zero", state: withFailure("a", state.Failure{Hash: "h1", Count: 3, Quarantined: true}), wanted: []string{"a"},
			results: []apply.Result{bad("a", "h2")},
			events:  []string{"a deploy failed"}, failed: 1,
			check: func(t *testing.T, st *state.State) {
				if f := st.Failures["a"]; f.Count != 1 || f.Quarantined || f.Hash != "h2" {
					t.Errorf("failure = %+v", f)
				}
			},
		},
		{
			name: "a quarantined decky reports nothing new and is not converged", state: withFailure("a", state.Failure{Hash: "h1", Count: 3, Quarantined: true}), wanted: []string{"a"},
			entries: []apply.Entry{{Decky: "a", Action: apply.Quarantined, Hash: "h1"}},
			failed:  1,
			check: func(t *testing.T, st *state.State) {
				if f := st.Failures["a"]; f.Count != 3 || !f.Quarantined {
					t.Errorf("failure = %+v", f)
				}
			},
		},
		{
			name: "a decky that cannot be applied is reported once", state: empty(), wanted: []string{"a"},
			entries: []apply.Entry{{Decky: "a", Action: apply.Failed, Operation: apply.OpDeploy, Hash: "", Error: "no free address"}},
			events:  []string{"a deploy failed"}, failed: 1,
		},
		{
			name: "the same problem again is not reported again", state: withFailure("a", state.Failure{Error: "no free address"}), wanted: []string{"a"},
			entries: []apply.Entry{{Decky: "a", Action: apply.Failed, Operation: apply.OpDeploy, Error: "no free address"}},
			failed:  1,
		},
		{
			name: "a decky failing after shutdown was signalled is abandoned", state: empty(), wanted: []string{"a", "b"},
			results:  []apply.Result{ok("a", apply.Create, apply.OpDeploy), {Decky: "b", Action: apply.Create, Operation: apply.OpDeploy, Status: apply.FailedSt, Error: "context canceled", CompletedAt: after}},
			canceled: now,
			events:   []string{"a deploy succeeded"}, abandoned: []string{"b"},
			check: func(t *testing.T, st *state.State) {
				if len(st.Failures) != 0 || st.LastClean {
					t.Errorf("an abandoned decky counted as failure or left the worker clean: %+v", st)
				}
			},
		},
		{
			name: "a decky failing before shutdown still failed", state: empty(), wanted: []string{"a"},
			results:  []apply.Result{bad("a", "h1")},
			canceled: now,
			events:   []string{"a deploy failed"}, failed: 1,
		},
		{
			name: "failures of deckies no longer wanted are forgotten", state: withFailure("old", state.Failure{Hash: "h", Count: 1}), wanted: []string{},
			check: func(t *testing.T, st *state.State) {
				if len(st.Failures) != 0 {
					t.Errorf("failures = %v", st.Failures)
				}
			},
		},
		{
			name: "a run killed before queueing its deploy is recovered from what runs", state: empty(), wanted: []string{"a"},
			entries: []apply.Entry{{Decky: "a", Action: apply.Unchanged, Hash: "h-a"}},
			events:  []string{"a deploy succeeded"},
			check: func(t *testing.T, st *state.State) {
				if st.Applied["a"] != "h-a" {
					t.Errorf("applied = %v", st.Applied)
				}
			},
		},
		{
			name: "a recovered change of an applied decky is a mutate", wanted: []string{"a"},
			state:   &state.State{Addresses: map[string]state.Address{}, Applied: map[string]string{"a": "h-old"}, Failures: map[string]state.Failure{}},
			entries: []apply.Entry{{Decky: "a", Action: apply.Unchanged, Hash: "h-a"}},
			events:  []string{"a mutate succeeded"},
		},
		{
			name: "a run killed before queueing its teardown is recovered", wanted: []string{"b"},
			state:   &state.State{Addresses: map[string]state.Address{}, Applied: map[string]string{"a": "h-a", "b": "h-b"}, Failures: map[string]state.Failure{}},
			entries: []apply.Entry{{Decky: "b", Action: apply.Unchanged, Hash: "h-b"}},
			events:  []string{"a teardown succeeded"},
			check: func(t *testing.T, st *state.State) {
				if _, ok := st.Applied["a"]; ok || st.Applied["b"] != "h-b" {
					t.Errorf("applied = %v", st.Applied)
				}
			},
		},
		{
			name: "what the outbox still holds is not reported twice", wanted: []string{"b"},
			state:   &state.State{Addresses: map[string]state.Address{}, Applied: map[string]string{"a": "h-a"}, Failures: map[string]state.Failure{}},
			entries: []apply.Entry{{Decky: "b", Action: apply.Unchanged, Hash: "h-b"}},
			queued: func(decky string, op apply.Operation, hash string) bool {
				return decky+string(op) == "ateardown" || decky+hash == "bh-b"
			},
			check: func(t *testing.T, st *state.State) {
				if _, ok := st.Applied["a"]; ok || st.Applied["b"] != "h-b" {
					t.Errorf("applied = %v", st.Applied)
				}
			},
		},
		{
			name: "a decky whose removal is planned is not recovered", wanted: nil,
			state:   &state.State{Addresses: map[string]state.Address{}, Applied: map[string]string{"a": "h-a"}, Failures: map[string]state.Failure{}},
			entries: []apply.Entry{{Decky: "a", Action: apply.Remove, Operation: apply.OpTeardown}},
			results: []apply.Result{{Decky: "a", Action: apply.Remove, Operation: apply.OpTeardown, Status: apply.FailedSt, Hash: "h-a", Error: "busy", CompletedAt: before}},
			events:  []string{"a teardown failed"}, failed: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := tc.state.Clone()
			out := agent.Record(agent.RecordInput{
				State: tc.state, Commit: "c1", Wanted: tc.wanted, Results: tc.results,
				Changes: apply.ChangeSet{Entries: tc.entries}, Budget: 3, Now: now, Canceled: tc.canceled, Queued: tc.queued,
			})
			if got := events(out.Events); !slices.Equal(got, tc.events) {
				t.Errorf("events = %v, want %v", got, tc.events)
			}
			for _, e := range out.Events {
				if e.Commit != "c1" {
					t.Errorf("event without the commit: %+v", e)
				}
			}
			if out.Failed != tc.failed || !slices.Equal(out.Abandoned, tc.abandoned) {
				t.Errorf("failed=%d abandoned=%v, want %d %v", out.Failed, out.Abandoned, tc.failed, tc.abandoned)
			}
			if out.State.LastCommit != "c1" || !out.State.LastApply.Equal(now) {
				t.Errorf("commit/apply time not recorded: %+v", out.State)
			}
			if tc.state.LastCommit != orig.LastCommit || len(tc.state.Failures) != len(orig.Failures) || len(tc.state.Applied) != len(orig.Applied) {
				t.Error("Record modified its input state")
			}
			if tc.check != nil {
				tc.check(t, out.State)
			}
		})
	}
}

func TestBackoffAndJitter(t *testing.T) {
	for _, tc := range []struct {
		n        int
		interval time.Duration
		lo, hi   time.Duration
	}{
		{n: 1, interval: time.Minute, lo: 2500 * time.Millisecond, hi: 5 * time.Second},
		{n: 2, interval: time.Minute, lo: 5 * time.Second, hi: 10 * time.Second},
		{n: 4, interval: time.Minute, lo: 20 * time.Second, hi: 40 * time.Second},
		{n: 30, interval: time.Minute, lo: agent.BackoffCap / 2, hi: agent.BackoffCap},
		{n: 30, interval: time.Second, lo: 5 * time.Second, hi: 10 * time.Second}, // capped at 10 intervals
	} {
		if lo, hi := agent.Backoff(tc.n, tc.interval, 0), agent.Backoff(tc.n, tc.interval, 0.999999); lo != tc.lo || hi < tc.hi-time.Millisecond || hi > tc.hi {
			t.Errorf("Backoff(%d, %s) spans [%s, %s], want [%s, %s]", tc.n, tc.interval, lo, hi, tc.lo, tc.hi)
		}
	}
	if lo, mid, hi := agent.Jitter(time.Minute, 0.1, 0), agent.Jitter(time.Minute, 0.1, 0.5), agent.Jitter(time.Minute, 0.1, 1); lo != 54*time.Second || mid != time.Minute || hi != 66*time.Second {
		t.Errorf("jitter of 1m ±10%%: %s %s %s", lo, mid, hi)
	}
}
