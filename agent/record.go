package agent

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/relocalize"
	"github.com/decnet/pull-agent/report"
)

// StatusQuarantined is the lifecycle status of a decky that used up its
// retry budget at one desired state.
const StatusQuarantined = "quarantined"

// RecordInput is everything the record policy depends on.
type RecordInput struct {
	State       *state.State // not modified
	Commit      string
	Wanted      []string // desired deckies of this host
	Assignments map[string]relocalize.Assignment
	Changes     apply.ChangeSet
	Results     []apply.Result
	Budget      int // failed attempts at one hash before quarantine
	Now         time.Time
	// Canceled is when shutdown was signalled during apply (zero: it was
	// not). A result that failed at or after it was abandoned, not failed.
	Canceled time.Time
	// Queued reports whether the outbox still holds a succeeded event of
	// operation op for decky at hash (a teardown at any hash; nil: it holds
	// none). It keeps the recovery of an interrupted run from reporting
	// twice.
	Queued func(decky string, op apply.Operation, hash string) bool
}

// RecordOutput is the new state and what to report.
type RecordOutput struct {
	State     *state.State
	Events    []report.Event // in decky order, then result before quarantine
	Failed    int            // deckies not converged
	Abandoned []string       // deckies cut short by shutdown, sorted
}

// Record is the pass's memory and reporting policy, a pure function:
//
//   - a succeeded result stores its hash as applied and clears failures;
//     a succeeded removal forgets the decky;
//   - a failed result counts one failure at its hash (a new hash starts
//     from zero: quarantine resets on a new desired state); at Budget
//     failures the decky is quarantined and that is reported once;
//   - a result cut short by shutdown is abandoned: no event, no count;
//   - a decky that cannot be applied (change set action failed) is
//     reported once per distinct hash and error, not every pass;
//   - quarantined entries count as not converged and report nothing new;
//   - addresses and failures of deckies no longer wanted are forgotten;
//   - an earlier run killed after changing the Engine but before queueing
//     its events is recovered from what runs: a decky running exactly as
//     desired at a hash the state does not hold as applied is reported
//     applied, and a decky the state holds as applied that is neither
//     desired nor running any more is reported torn down, unless the
//     outbox still holds that report (Queued).
func Record(in RecordInput) RecordOutput {
	st := in.State.Clone()
	out := RecordOutput{State: st}
	wanted := make(map[string]bool, len(in.Wanted))
	for _, n := range in.Wanted {
		wanted[n] = true
	}
	for name, as := range in.Assignments {
		st.Addresses[name] = state.Address{IP: as.IP, MAC: as.MAC}
	}
	for name := range st.Addresses {
		if !wanted[name] {
			delete(st.Addresses, name)
		}
	}
	emit := func(e report.Event) {
		e.Commit = in.Commit
		out.Events = append(out.Events, e)
	}
	abandoned := 0
	for _, r := range in.Results {
		if r.Status != apply.Succeeded && !in.Canceled.IsZero() && !r.CompletedAt.Before(in.Canceled) {
			out.Abandoned = append(out.Abandoned, r.Decky)
			abandoned++
			continue
		}
		emit(report.Event{DeckyName: r.Decky, Operation: string(r.Operation), Status: r.Status, Error: r.Error,
			ConfigHash: r.Hash, StartedAt: r.StartedAt, CompletedAt: r.CompletedAt, Note: addressNote(in.Assignments[r.Decky])})
		switch {
		case r.Action == apply.Remove && r.Status == apply.Succeeded:
			delete(st.Applied, r.Decky)
			delete(st.Failures, r.Decky)
		case r.Status == apply.Succeeded:
			st.Applied[r.Decky] = r.Hash
			delete(st.Failures, r.Decky)
		default:
			out.Failed++
			f := st.Failures[r.Decky]
			if f.Hash != r.Hash {
				f = state.Failure{Hash: r.Hash}
			}
			f.Count++
			f.Error, f.Last = r.Error, in.Now
			if f.Count >= in.Budget && !f.Quarantined {
				f.Quarantined = true
				emit(report.Event{DeckyName: r.Decky, Operation: string(r.Operation), Status: StatusQuarantined, ConfigHash: r.Hash, CompletedAt: in.Now,
					Error: fmt.Sprintf("failed %d times at this desired state; left alone until it changes. Last error: %s", f.Count, r.Error)})
			}
			st.Failures[r.Decky] = f
		}
	}
	for _, e := range in.Changes.Entries {
		switch e.Action {
		case apply.Quarantined:
			out.Failed++
		case apply.Failed:
			out.Failed++
			f := st.Failures[e.Decky]
			if f.Hash != e.Hash || f.Error != e.Error {
				// Nothing was attempted: report the problem once, not every pass.
				emit(report.Event{DeckyName: e.Decky, Operation: string(e.Operation), Status: apply.FailedSt, Error: e.Error, ConfigHash: e.Hash, CompletedAt: in.Now})
				st.Failures[e.Decky] = state.Failure{Hash: e.Hash, Error: e.Error, Last: in.Now}
			}
		}
	}
	// Recovery of an interrupted run (SIGKILL, power loss between the
	// Engine's change and the outbox write): what runs says what was done.
	const recovered = "applied by an earlier run that stopped before reporting it"
	queued := func(decky string, op apply.Operation, hash string) bool {
		return in.Queued != nil && in.Queued(decky, op, hash)
	}
	planned := map[string]bool{}
	for _, e := range in.Changes.Entries {
		planned[e.Decky] = true
		if e.Action != apply.Unchanged || e.Hash == "" || st.Applied[e.Decky] == e.Hash {
			continue
		}
		op := apply.OpMutate
		if st.Applied[e.Decky] == "" {
			op = apply.OpDeploy
		}
		if !queued(e.Decky, op, e.Hash) {
			emit(report.Event{DeckyName: e.Decky, Operation: string(op), Status: apply.Succeeded, ConfigHash: e.Hash, CompletedAt: in.Now, Note: recovered})
		}
		st.Applied[e.Decky] = e.Hash
		delete(st.Failures, e.Decky)
	}
	for _, name := range SortedKeys(st.Applied) {
		if wanted[name] || planned[name] {
			continue
		}
		// Not desired and nothing of it runs (no remove was planned): its
		// teardown happened in a run that did not live to report it.
		if hash := st.Applied[name]; !queued(name, apply.OpTeardown, hash) {
			emit(report.Event{DeckyName: name, Operation: string(apply.OpTeardown), Status: apply.Succeeded, ConfigHash: hash, CompletedAt: in.Now, Note: recovered})
		}
		delete(st.Applied, name)
	}
	for name := range st.Failures {
		if !wanted[name] {
			delete(st.Failures, name)
		}
	}
	slices.Sort(out.Abandoned)
	slices.SortStableFunc(out.Events, func(a, b report.Event) int { return cmp.Compare(a.DeckyName, b.DeckyName) })
	st.LastCommit = in.Commit
	st.LastApply = in.Now
	// An abandoned decky keeps the worker unclean: the next pass plans it
	// again even though the commit did not move.
	st.LastClean = out.Failed == 0 && abandoned == 0
	return out
}

// queue puts events in the outbox, or logs them when there is no master
// (rather than queueing for nobody until the outbox fills).
func (a *Agent) queue(ctx context.Context, events []report.Event) {
	for _, e := range events {
		if a.d.Reporter == nil {
			a.log.InfoContext(ctx, "lifecycle", "decky", e.DeckyName, "operation", e.Operation, "status", e.Status, "error", e.Error)
			continue
		}
		if _, err := a.d.Outbox.Add(e); err != nil {
			a.log.ErrorContext(ctx, "cannot queue lifecycle event", "decky", e.DeckyName, "err", err)
		}
	}
}

// addressNote says why a decky is not where the repository put it (or
// where a plain allocation would have): relocalized or moved after a
// conflict. It travels in the lifecycle event.
func addressNote(as relocalize.Assignment) string {
	switch as.Reason {
	case relocalize.Relocalized, relocalize.MovedAfterConflict, relocalize.Moved:
		return fmt.Sprintf("address %s (%s): %s", as.IP, as.Reason, as.Detail)
	}
	return ""
}

// SortedKeys returns a map's keys in order: the one sorting helper.
func SortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
