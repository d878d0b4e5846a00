package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/reaper"
	"github.com/decnet/pull-agent/report"
)

// ErrDecommissioned is returned (wrapped in a *StepError) by the pass that
// decommissioned the worker, and by Run after it: everything the agent
// owned is gone, its state directory is empty, and the process should
// exit 0 without another pass (the unit does not restart it).
var ErrDecommissioned = errors.New("decommissioned")

// ErrUnverifiedDecommission refuses a decommission: true in a commit that
// no configured trust policy verified. The fleet repository is hostile
// until proven otherwise: one unsigned commit must not wipe a worker.
var ErrUnverifiedDecommission = errors.New("decommission refused")

// Final delivery of a decommission: retried, with report.Backoff between
// attempts, until the outbox is empty or Config.ReportTimeout has passed.
const (
	finalRetryMin = 500 * time.Millisecond
	finalRetryMax = 5 * time.Second
)

// decommission runs when the verified host file says decommission: true:
//
//  1. every container, the decoy network and the helper link the agent
//     owns are removed (by owner label only);
//  2. a teardown event per decky and a final heartbeat that says
//     decommissioned are delivered, retried within Config.ReportTimeout;
//     what the master has not taken by then is written to the log, one
//     line per event;
//  3. the contents of the state directory are removed (clone, contexts,
//     outbox, state file, lock last), never the directory itself;
//  4. the pass returns ErrDecommissioned.
//
// A teardown that fails stops before 2's final heartbeat and before 3:
// the failures are reported as failed teardowns, the state is kept, and
// the next pass tries again. A read-only pass (plan) only lists what
// would be removed.
func decommission(ctx context.Context, p *pass) error {
	a := p.a
	if !p.host.Decommission {
		return nil
	}
	where := p.host.DecommissionPos.String()
	if p.rev.Signer == "" && !a.cfg.AllowUnverifiedDecommission {
		return fmt.Errorf("%w: %s: decommission: true in commit %s, which is not verified by a trust policy (verified: none); nothing was removed. Sign the commit and configure --trust-ssh-allowed-signers or --trust-gpg-keyring, or set --allow-unverified-decommission",
			ErrUnverifiedDecommission, where, Short(p.rev.Commit))
	}
	cs, err := a.d.Engine.ListContainers(ctx)
	if err != nil {
		return err
	}
	byDecky := ownedByDecky(cs, a.cfg.Host)
	if a.cfg.ReadOnly {
		p.planDecommission(ctx, byDecky, where)
		return errStop
	}
	p.log.WarnContext(ctx, "decommission: removing everything this agent owns", "by", where, "signer", verifiedName(p.rev.Signer), "deckies", len(byDecky))
	events, terr := p.teardownAll(ctx, byDecky)
	a.queue(ctx, events)
	p.res.Events = events
	if terr != nil {
		// Keep the state: the next pass tries again, and the failures
		// travel in this pass's heartbeat.
		return fmt.Errorf("decommission (%s) incomplete; state kept, the next pass tries again: %w", where, terr)
	}
	a.st.LastCommit, a.st.LastApply, a.st.LastClean = p.rev.Commit, a.now().UTC(), true
	hb := a.baseHeartbeat(nil)
	hb.Decommissioned = true
	hb.PassError = fmt.Sprintf("decommissioned by commit %s (%s): every container, network and helper link of this agent removed; its state removed; the agent stopped", Short(p.rev.Commit), where)
	hb.Status = report.Status{Runtime: map[string]report.Runtime{}}
	a.finalDelivery(ctx, hb)
	a.logSetAside(ctx)
	if err := RemoveStateContents(a.cfg.StateDir, a.log); err != nil {
		p.log.ErrorContext(ctx, "decommission: cannot remove all of the state directory's contents", "dir", a.cfg.StateDir, "err", err)
	}
	p.log.WarnContext(ctx, "decommissioned: the agent stops; disable its unit or timer", "by", where)
	return ErrDecommissioned
}

// ownedByDecky groups the containers owner owns by decky ("" for owned
// containers without a decky label).
func ownedByDecky(cs []engine.Container, owner string) map[string][]engine.Container {
	out := map[string][]engine.Container{}
	for _, c := range cs {
		if c.Owner() == owner {
			out[c.Decky()] = append(out[c.Decky()], c)
		}
	}
	return out
}

// planDecommission shows what decommission would remove: a removal per
// decky in the change set (plan prints it), and the rest in the log.
func (p *pass) planDecommission(ctx context.Context, byDecky map[string][]engine.Container, where string) {
	n := 0
	for _, d := range SortedKeys(byDecky) {
		n += len(byDecky[d])
		if d != "" {
			p.res.Changes.Entries = append(p.res.Changes.Entries, apply.Entry{Decky: d, Action: apply.Remove, Operation: apply.OpTeardown})
		}
	}
	p.log.WarnContext(ctx, "plan: decommission would remove everything this agent owns, report, remove its state and stop",
		"by", where, "deckies", len(p.res.Changes.Entries), "containers", n, "network", p.host.Network.Name,
		"helper", p.a.cfg.Helper, "state_dir_contents", p.a.cfg.StateDir)
}

// teardownAll removes every owned decky (services, then base), any other
// owned container, the decoy network and the helper link. It returns one
// teardown event per decky (those running and those the state holds as
// applied) and every failure; the state forgets the deckies removed.
func (p *pass) teardownAll(ctx context.Context, byDecky map[string][]engine.Container) ([]report.Event, error) {
	a := p.a
	names := map[string]bool{}
	for d := range byDecky {
		if d != "" {
			names[d] = true
		}
	}
	for d := range a.st.Applied {
		names[d] = true
	}
	note := "decommission: true in " + p.host.DecommissionPos.String()
	var events []report.Event
	var errs []error
	for _, d := range SortedKeys(names) {
		ev, err := teardownDecky(ctx, a.d.Engine, a.st, d, byDecky[d], a.now, note)
		ev.Commit = p.rev.Commit
		if err != nil {
			errs = append(errs, fmt.Errorf("decky %s: %w", d, err))
		}
		events = append(events, ev)
	}
	// What is left: owned containers without a decky label, and the
	// network, under its name in the host file and DECNET's default name
	// (each only if the agent owns it).
	nets := slices.Compact([]string{p.host.Network.Name, desired.DefaultNetworkName})
	if _, err := reaper.All(ctx, a.d.Engine, a.cfg.Host, nets); err != nil {
		errs = append(errs, err)
	}
	// Every name the link may have: the network's driver may have changed
	// since it was made (DECNET's ipvlan variant has its own name).
	for _, h := range helperNames(a.cfg.Helper) {
		if err := a.d.LAN.RemoveHelper(h, a.cfg.Host); err != nil {
			if !errors.Is(err, hostnet.ErrHelperNotOwned) {
				errs = append(errs, fmt.Errorf("helper link %s: %w", h, err))
			} else {
				p.log.WarnContext(ctx, "decommission: the helper link is not this agent's; left in place", "link", h)
			}
		}
	}
	return events, errors.Join(errs...)
}

// finalDelivery sends the outbox and the final heartbeat, retrying until
// the master has taken everything or Config.ReportTimeout has passed
// (shutdown does not cut it shorter: these are the last reports). Each
// event the master has not taken by then is logged on one line, with
// the heartbeat, so nothing is lost silently when the outbox goes.
func (a *Agent) finalDelivery(ctx context.Context, hb report.Heartbeat) {
	if a.d.Reporter == nil {
		return // no master: the events were logged when queued
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ReportTimeout)
	defer cancel()
	var err error
	for attempt := 0; ; attempt++ {
		hb.OutboxDepth, hb.OutboxRejects = a.d.Outbox.Depth(), a.d.Outbox.Rejected()
		if _, err = a.d.Reporter.Flush(ctx, hb); err == nil && a.d.Outbox.Depth() == 0 {
			a.log.InfoContext(ctx, "decommission: final reports delivered")
			return
		}
		if err == nil {
			err = fmt.Errorf("%d events still queued", a.d.Outbox.Depth())
		}
		t := time.NewTimer(report.Backoff(finalRetryMin, finalRetryMax, attempt, nil))
		select {
		case <-ctx.Done():
			t.Stop()
			a.logUndelivered(ctx, hb, err)
			return
		case <-t.C:
		}
	}
}

// logUndelivered writes every event still in the outbox, and the final
// heartbeat, as one structured log line each.
func (a *Agent) logUndelivered(ctx context.Context, hb report.Heartbeat, why error) {
	events, err := a.d.Outbox.Pending(0)
	if err != nil {
		a.log.ErrorContext(ctx, "decommission: cannot read the outbox to log what was not delivered", "err", err)
	}
	a.log.ErrorContext(ctx, "decommission: the master has not taken the final reports; they follow in the log, the outbox is removed",
		"undelivered", len(events), "timeout", a.cfg.ReportTimeout, "err", why)
	for _, e := range events {
		a.log.ErrorContext(ctx, "undelivered lifecycle event", "event_id", e.EventID, "seq", e.Seq, "decky", e.DeckyName,
			"operation", e.Operation, "status", e.Status, "error", e.Error, "commit", e.Commit, "config_hash", e.ConfigHash,
			"note", e.Note, "started_at", e.StartedAt, "completed_at", e.CompletedAt)
	}
	a.log.ErrorContext(ctx, "undelivered heartbeat", "decommissioned", hb.Decommissioned, "commit", hb.Commit,
		"verified", hb.Verified, "pass_error", hb.PassError, "generated_at", hb.GeneratedAt)
}

// stateEntries are what the agent keeps in its state directory, in the
// order decommission removes them: the lock goes last, so no second agent
// can start applying until everything else is gone.
var stateEntries = []string{"git", "contexts", "outbox", state.File, SuspendFile, "lock"}

// RemoveStateContents removes what the agent keeps in dir (the clone,
// build contexts, outbox, state file, suspend file, unfinished atomic
// writes, and the lock last) but never dir itself: under systemd's
// StateDirectory= with ProtectSystem=strict the directory is a mount
// point the service cannot remove (EBUSY, EROFS). Anything else found
// there is not the agent's: it is left in place and logged.
func RemoveStateContents(dir string, log *slog.Logger) error {
	var errs []error
	tmp, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	for _, name := range append(slices.Clone(stateEntries[:len(stateEntries)-1]), baseNames(tmp)...) {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			errs = append(errs, err)
		}
	}
	if left, err := os.ReadDir(dir); err == nil {
		var other []string
		for _, e := range left {
			if e.Name() != "lock" {
				other = append(other, e.Name())
			}
		}
		if len(other) > 0 && log != nil {
			log.Warn("decommission: files in the state directory that are not the agent's were left in place", "dir", dir, "files", strings.Join(other, ", "))
		}
	}
	if err := os.Remove(filepath.Join(dir, "lock")); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// logSetAside writes every event the outbox holds set aside (refused by
// the master's per-event verdict, or unreadable) as one log line each
// before the outbox is deleted: the log outlives the state directory.
func (a *Agent) logSetAside(ctx context.Context) {
	recs, err := a.d.Outbox.RejectedRecords()
	if err != nil {
		a.log.ErrorContext(ctx, "decommission: cannot read the events set aside", "err", err)
	}
	for _, r := range recs {
		a.log.WarnContext(ctx, "decommission: event set aside, never delivered", "seq", r.Seq, "reason", r.Reason, "event", r.Data)
	}
}
