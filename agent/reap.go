package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/reaper"
	"github.com/decnet/pull-agent/report"
)

// ReapOptions say what reap removes. The caller holds the state
// directory's lock: a running daemon would recreate what reap removes.
type ReapOptions struct {
	Host     string
	StateDir string
	Networks []string // owned networks to remove; default decnet_lan
	Helpers  []string // owned helper links to remove; default decnet_macvlan0, decnet_ipvlan0
	// Decky, when set, removes exactly that decky (services, then its
	// base, which holds the address) and nothing else; its teardown is
	// queued in Outbox when one is given. Networks, helpers and the other
	// deckies stay.
	Decky  string
	Outbox *report.Outbox
}

// Reap removes what the agent owns: every container, the networks and
// the helper links, then the state file; or, with Decky, one decky. Only
// containers and networks carrying the owner label are touched. It keeps
// going past a failure, so one stuck container does not leave the rest
// behind, and returns how many containers it removed.
func Reap(ctx context.Context, opt ReapOptions, eng reaper.Cleaner, lan LAN) (int, error) {
	if opt.Decky != "" {
		return reapDecky(ctx, opt, eng)
	}
	if len(opt.Networks) == 0 {
		opt.Networks = []string{desired.DefaultNetworkName}
	}
	if len(opt.Helpers) == 0 {
		opt.Helpers = helperNames(DefaultHelper)
	}
	n, err := reaper.All(ctx, eng, opt.Host, opt.Networks)
	if lan != nil {
		for _, h := range opt.Helpers {
			if herr := lan.RemoveHelper(h, opt.Host); herr != nil && !errors.Is(herr, hostnet.ErrHelperNotOwned) {
				err = errors.Join(err, herr)
			}
		}
	}
	if err == nil {
		if rerr := os.Remove(filepath.Join(opt.StateDir, state.File)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = rerr
		}
	}
	return n, err
}

func reapDecky(ctx context.Context, opt ReapOptions, eng reaper.Cleaner) (int, error) {
	cs, err := eng.ListContainers(ctx)
	if err != nil {
		return 0, err
	}
	mine := ownedByDecky(cs, opt.Host)[opt.Decky]
	if len(mine) == 0 {
		return 0, fmt.Errorf("no decky %q owned by %s on this worker", opt.Decky, opt.Host)
	}
	// A state that cannot be read does not stop the removal the operator
	// asked for; it is not saved, and its error is returned.
	st, lerr := state.Load(opt.StateDir, opt.Host)
	if lerr != nil {
		st = state.New(opt.Host)
	}
	ev, rerr := teardownDecky(ctx, eng, st, opt.Decky, mine, time.Now, "pull-agent reap --decky")
	ev.Commit = st.LastCommit
	err = lerr
	if rerr == nil && lerr == nil {
		st.LastClean = false // the next pass looks again (recreates it if desired)
		err = st.Save(opt.StateDir)
	}
	if opt.Outbox != nil {
		if _, qerr := opt.Outbox.Add(ev); qerr != nil {
			err = errors.Join(err, qerr)
		}
	}
	if rerr != nil {
		return 0, rerr
	}
	return len(mine), err
}

// teardownDecky removes one decky's containers (services, then its base,
// which holds the address) and returns its teardown event; on success the
// state forgets the decky. Reap and decommission both tear down this way.
func teardownDecky(ctx context.Context, eng reaper.Remover, st *state.State, decky string, cs []engine.Container, now func() time.Time, note string) (report.Event, error) {
	ev := report.Event{DeckyName: decky, Operation: string(apply.OpTeardown), Status: apply.Succeeded,
		ConfigHash: st.Applied[decky], StartedAt: now().UTC(), Note: note}
	err := reaper.RemoveDecky(ctx, eng, cs)
	ev.CompletedAt = now().UTC()
	if err != nil {
		ev.Status, ev.Error = apply.FailedSt, err.Error()
		return ev, err
	}
	delete(st.Applied, decky)
	delete(st.Addresses, decky)
	delete(st.Failures, decky)
	return ev, nil
}
