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
		opt.Helpers = []string{"decnet_macvlan0", "decnet_ipvlan0"}
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
	var mine []engine.Container
	for _, c := range cs {
		if c.Owner() == opt.Host && c.Decky() == opt.Decky {
			mine = append(mine, c)
		}
	}
	if len(mine) == 0 {
		return 0, fmt.Errorf("no decky %q owned by %s on this worker", opt.Decky, opt.Host)
	}
	started := time.Now().UTC()
	rerr := reaper.RemoveDecky(ctx, eng, mine)
	ev := report.Event{DeckyName: opt.Decky, Operation: string(apply.OpTeardown), Status: apply.Succeeded,
		StartedAt: started, CompletedAt: time.Now().UTC(), Note: "pull-agent reap --decky"}
	if rerr != nil {
		ev.Status, ev.Error = apply.FailedSt, rerr.Error()
	}
	st, err := state.Load(opt.StateDir, opt.Host)
	if err == nil {
		ev.Commit = st.LastCommit
		if rerr == nil {
			delete(st.Applied, opt.Decky)
			delete(st.Addresses, opt.Decky)
			delete(st.Failures, opt.Decky)
			st.LastClean = false // the next pass looks again (recreates it if desired)
			err = st.Save(opt.StateDir)
		}
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
