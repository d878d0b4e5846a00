package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	stdsync "sync"
	"time"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/memlimit"
)

// LoopOptions tune the daemon loop. Zero fields take the defaults; the
// clock, jitter and backoff are injectable so tests run in milliseconds.
type LoopOptions struct {
	Interval time.Duration // between passes; default 60s
	// Resync forces a full pass this often even when nothing signalled
	// drift; default 10 minutes.
	Resync time.Duration
	// Triggers start a full pass now (SIGHUP, the webhook). Bursts
	// coalesce: a trigger arriving during a pass gives one more pass.
	Triggers <-chan struct{}
	// Watch follows the Engine's events so drift is repaired at once.
	Watch bool
	// Jitter spreads the interval; default ±10% (a fleet started together
	// drifts apart).
	Jitter func(time.Duration) time.Duration
	// Backoff is the wait after the attempt-th consecutive refused pass
	// (1, 2, ...); default [Backoff] over Interval. A success resets it.
	Backoff func(attempt int) time.Duration
	After   func(time.Duration) <-chan time.Time // default time.After
	Now     func() time.Time                     // default time.Now
	// OnPass observes every pass (metrics, the summary line).
	OnPass func(res *Result, err error, took time.Duration)
	// AfterPass runs after every pass that was not skipped; default
	// memlimit.AfterPass, which returns the pass's memory to the OS with
	// a full collection of the process's heap. Many agents in one
	// process (the fleet benchmark) share that heap, so each would pay
	// for all of them; a real agent is a process of its own.
	AfterPass func()
}

func (o *LoopOptions) defaults() {
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	if o.Resync <= 0 {
		o.Resync = 10 * time.Minute
	}
	if o.Jitter == nil {
		o.Jitter = func(d time.Duration) time.Duration { return Jitter(d, 0.1, rand.Float64()) }
	}
	if o.Backoff == nil {
		iv := o.Interval
		o.Backoff = func(n int) time.Duration { return Backoff(n, iv, rand.Float64()) }
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AfterPass == nil {
		o.AfterPass = memlimit.AfterPass
	}
}

// Jitter returns d moved by up to ±frac of itself; r in [0,1) picks where.
func Jitter(d time.Duration, frac, r float64) time.Duration {
	return d + time.Duration((r*2-1)*frac*float64(d))
}

// Backoff policy after refused passes: 5s doubled per attempt, capped at
// 5 minutes and at the interval's tenfold, with "full jitter" between half
// and all of the step (r in [0,1)). A pass that runs resets the attempts.
const (
	BackoffBase = 5 * time.Second
	BackoffCap  = 5 * time.Minute
)

// Backoff returns the wait before retrying after the n-th (1-based)
// consecutive refused pass.
func Backoff(n int, interval time.Duration, r float64) time.Duration {
	limit := min(BackoffCap, 10*interval)
	d := BackoffBase
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d/2 + time.Duration(r*float64(d/2))
}

// Run is the daemon: a pass now, then one every Interval (jittered), on a
// trigger, or when the Engine reports drift, until ctx ends. It returns
// nil when ctx ends: shutting down is not a failure. After a pass that
// decommissioned the worker it returns that pass's error (errors.Is
// ErrDecommissioned). It returns only after the watcher goroutine has
// stopped.
func (a *Agent) Run(ctx context.Context, opt LoopOptions) error {
	opt.defaults()
	ctx, cancel := context.WithCancel(ctx)
	drift := make(chan struct{}, 1)
	var wg stdsync.WaitGroup
	if opt.Watch {
		wg.Go(func() { a.watch(ctx, drift) })
	}
	defer func() { cancel(); wg.Wait() }()

	var lastFull time.Time
	refused := 0
	for {
		full := lastFull.IsZero() || opt.Now().Sub(lastFull) >= opt.Resync
		t0 := opt.Now()
		a.window.begin(t0)
		res, err := a.Pass(ctx, PassOptions{Full: full})
		if a.window.end(opt.Now(), res) {
			a.markDirty(drift)
		}
		if opt.OnPass != nil {
			opt.OnPass(res, err, opt.Now().Sub(t0))
		}
		if res == nil || !res.Skipped {
			opt.AfterPass() // return what the pass held before idling
		}
		if errors.Is(err, ErrDecommissioned) {
			return err // nothing is left to reconcile: the process exits 0
		}
		wait := opt.Jitter(opt.Interval)
		switch {
		case err != nil:
			refused++
			wait = min(wait, opt.Backoff(refused))
		case !res.Skipped:
			refused = 0
			lastFull = opt.Now()
		default:
			refused = 0
		}
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-opt.Triggers:
			a.log.Info("triggered: full pass now")
			lastFull = time.Time{}
		case <-drift:
			a.log.Info("owned container changed outside a pass; reconciling")
		case <-opt.After(wait):
		}
	}
}

// markDirty makes the next pass reconcile fully and wakes the loop; a
// wake-up already pending absorbs this one (bursts coalesce).
func (a *Agent) markDirty(wake chan<- struct{}) {
	a.dirty.Store(true)
	select {
	case wake <- struct{}{}:
	default:
	}
}

// watch follows the Engine's events for owned containers until ctx ends;
// it reconnects with backoff, and marks the worker dirty after a gap
// (events may have been missed).
func (a *Agent) watch(ctx context.Context, wake chan<- struct{}) {
	backoff := time.Second
	for ctx.Err() == nil {
		events, errs := a.d.Engine.Events(ctx)
		connected := time.Now()
	loop:
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-events:
				if !driftAction(ev.Action) || !a.window.drift(ev) {
					continue
				}
				a.log.InfoContext(ctx, "owned container changed outside a pass", "container", ev.Name, "action", ev.Action)
				a.markDirty(wake)
			case err := <-errs:
				if ctx.Err() != nil {
					return
				}
				a.log.WarnContext(ctx, "Engine event stream lost; will reconcile fully", "err", err)
				a.markDirty(wake)
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

// passWindow tells the agent's own container events from drift. Events
// during a pass are held until it ends; then an event is the pass's own
// only when the pass applied that decky and the event came before the
// decky's result completed. Anything else (a container stopped by hand
// mid-pass) is drift, and is kept: the next pass runs fully.
type passWindow struct {
	mu      stdsync.Mutex
	running bool
	start   time.Time
	ended   time.Time
	done    map[string]time.Time // decky -> when the last pass finished applying it
	held    []engine.Event
}

func (w *passWindow) begin(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.running, w.start, w.held = true, now, nil
}

// end closes the window with the pass's results and reports whether any
// event held during the pass was drift.
func (w *passWindow) end(now time.Time, res *Result) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.running, w.ended = false, now
	w.done = map[string]time.Time{}
	if res != nil {
		for _, r := range res.Results {
			w.done[r.Decky] = r.CompletedAt
		}
	}
	drift := false
	for _, ev := range w.held {
		drift = drift || w.driftLocked(ev)
	}
	w.held = nil
	return drift
}

// drift classifies an event as it arrives; events during a pass are held
// (and reported false here) until end.
func (w *passWindow) drift(ev engine.Event) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running {
		w.held = append(w.held, ev)
		return false
	}
	return w.driftLocked(ev)
}

func (w *passWindow) driftLocked(ev engine.Event) bool {
	if w.ended.IsZero() || ev.Time.After(w.ended) {
		return true // after the last pass: nobody but someone else
	}
	if ev.Time.Before(w.start) {
		return true // between passes, seen late: cheaper to look again
	}
	done, applied := w.done[ev.Decky]
	return !applied || ev.Time.After(done)
}
