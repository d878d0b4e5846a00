package main

import (
	"context"
	"io"
	"net/netip"
	"os"
	"os/signal"
	stdsync "sync"
	"syscall"
	"time"

	"github.com/decnet/pull-agent/hostnet"
)

// cmdRun is the daemon. One goroutine owns the pass loop; it waits on a
// timer reset to --interval ±10% after each pass (so a fleet started
// together drifts apart), on SIGHUP, and on a trigger from the Docker
// event watcher, which marks the worker dirty when an owned container
// changes outside a pass (stopped, killed, removed by hand): drift is
// repaired within seconds, not at the next interval. Passes over an
// unchanged commit on a clean worker make no Docker call; every --resync
// a full pass runs anyway.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a, err := startAgent(ctx, "run", args, false, func(f *flags, c *agentConfig) {
		f.Duration(&c.interval, "interval", 60*time.Second, "time between passes")
		f.Duration(&c.resync, "resync", 10*time.Minute, "time between full passes that re-check every container even when nothing signalled drift")
		f.String(&c.metrics, "metrics", "", "serve /metrics (Prometheus) and /healthz on this management address, e.g. 127.0.0.1:9477 (never the decoy LAN)")
		f.Duration(&c.staleAfter, "stale-after", 0, "/healthz fails when no fetch succeeded for this long (default 3 x --interval)")
	}, stderr)
	if err != nil {
		return err
	}
	defer a.close()
	cfg, log := a.cfg, a.log
	if cfg.interval < time.Second {
		return usageErr("--interval must be at least 1s")
	}
	m := newMetrics()
	if cfg.metrics != "" {
		if cfg.staleAfter == 0 {
			cfg.staleAfter = 3 * cfg.interval
		}
		var decoy []netip.Addr
		if lan, err := a.det.Detect(ctx, hostnet.Options{Interface: cfg.iface}); err == nil {
			decoy = lan.HostAddrs
		}
		stop, err := serveMetrics(ctx, cfg.metrics, decoy, m, health{a: a, stale: cfg.staleAfter}, log)
		if err != nil {
			return err
		}
		defer stop()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	trigger := make(chan struct{}, 1)
	var passing passWindow
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.watch(ctx, &passing, trigger)
	}()
	defer func() { cancel(); <-done }()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log.Info("pull-agent running", "version", version, "interval", cfg.interval, "resync", cfg.resync, "remotes", len(cfg.repos))
	lastFull := time.Time{}
	for {
		full := time.Since(lastFull) >= cfg.resync
		passing.begin()
		t0 := time.Now()
		res, err := a.onePass(ctx, full)
		passing.end()
		m.observe(a, res, err, time.Since(t0))
		if err == nil && !res.skipped {
			lastFull = time.Now()
			if res.changes.Changes() {
				summarize(stdout, res)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			log.Info("SIGHUP: full pass now")
			lastFull = time.Time{}
		case <-trigger:
			log.Info("owned container changed outside a pass; reconciling")
		case <-time.After(jitter(cfg.interval, 0.1)):
		}
	}
}

// passWindow records when passes run, so the watcher can tell the
// agent's own container events from someone else's.
type passWindow struct {
	mu      stdsync.Mutex
	running bool
	ended   time.Time
}

func (p *passWindow) begin() { p.mu.Lock(); p.running = true; p.mu.Unlock() }
func (p *passWindow) end()   { p.mu.Lock(); p.running, p.ended = false, time.Now(); p.mu.Unlock() }

// ours reports whether an event at t came from the agent's own pass.
func (p *passWindow) ours(t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running || !t.After(p.ended)
}

// watch follows the Engine's events for owned containers until ctx ends;
// it reconnects with backoff, and marks the worker dirty after a gap
// (events may have been missed).
func (a *agent) watch(ctx context.Context, passing *passWindow, trigger chan<- struct{}) {
	backoff := time.Second
	for ctx.Err() == nil {
		events, errs := a.eng.Events(ctx)
		connected := time.Now()
	loop:
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-events:
				if passing.ours(ev.Time) || !driftAction(ev.Action) {
					continue
				}
				a.log.InfoContext(ctx, "owned container changed outside a pass", "container", ev.Name, "action", ev.Action)
				a.dirty.Store(true)
				select {
				case trigger <- struct{}{}:
				default: // a pass is already due; bursts coalesce
				}
			case err := <-errs:
				if ctx.Err() != nil {
					return
				}
				a.log.WarnContext(ctx, "Docker event stream lost; will reconcile fully", "err", err)
				a.dirty.Store(true)
				break loop
			}
		}
		if time.Since(connected) > time.Minute {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Minute)
	}
}

func driftAction(action string) bool {
	switch action {
	case "die", "stop", "kill", "destroy", "oom", "pause", "rename", "update":
		return true
	}
	return false
}
