package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
)

// Config is everything that tunes one worker's agent. It holds plain
// values: package main maps flags, environment and the config file onto it.
type Config struct {
	Host     string // this worker's name: its deckies are hosts/<Host>.yaml
	StateDir string // absolute; holds state.json, the outbox and scratch space
	// ReadOnly makes every pass a plan: it writes no state, queues no
	// event and changes nothing on the worker; it stops after the diff.
	ReadOnly bool

	Interface string     // decoy NIC override; "" = host file, else default route
	Gateway   netip.Addr // gateway override; zero = host file's
	Parallel  int        // deckies applied at once; default 4
	Steady    apply.SteadyOptions
	// RetryBudget is how many failed attempts at one desired state a
	// decky gets before it is quarantined; default 3.
	RetryBudget int
	AllowPull   bool   // let Compose pull missing image references
	Probe       bool   // ARP-probe every address before its first use
	Helper      string // host helper link name; "" disables it
	// ReportTimeout bounds the delivery of reports at the end of a pass;
	// default 30s. On shutdown the final delivery gets this long too.
	ReportTimeout time.Duration
	Version       string // reported in heartbeats
	// Suspend applies nothing (--suspend); see also the host file's
	// suspend: and the state directory's suspend file.
	Suspend bool
	// LANCheckTimeout is how long a declared port may take to accept a
	// connection from the worker (the LAN check of an apply and the
	// identity drift check of a full pass); default 15s.
	LANCheckTimeout time.Duration
	// AllowUnverifiedDecommission honours decommission: true in a commit
	// no trust policy verified (--allow-unverified-decommission). Off by
	// default: without it such a commit is refused and nothing removed.
	AllowUnverifiedDecommission bool
}

func (c *Config) defaults() {
	if c.Parallel <= 0 {
		c.Parallel = 4
	}
	if c.RetryBudget <= 0 {
		c.RetryBudget = 3
	}
	if c.ReportTimeout <= 0 {
		c.ReportTimeout = 30 * time.Second
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.LANCheckTimeout <= 0 {
		c.LANCheckTimeout = 15 * time.Second
	}
}

// Deps are the roles an Agent works through. Engine, LAN and Source are
// required; Outbox is required unless Config.ReadOnly; Reporter nil means
// no master (events are logged, not queued).
type Deps struct {
	Engine   Engine
	LAN      LAN
	Source   Source
	Outbox   *report.Outbox
	Reporter Reporter
	// Ports checks declared ports from the worker (the LAN check and the
	// identity drift check); nil means an apply.DialChecker bound to the
	// host helper link, and no check when there is no helper link.
	Ports apply.PortChecker
	Log   *slog.Logger
	// Now is the clock; nil means time.Now. Tests fix it.
	Now func() time.Time
}

// Agent reconciles one worker. Pass and Run are called from one goroutine
// at a time; Health is safe from any goroutine.
type Agent struct {
	cfg Config
	d   Deps
	log *slog.Logger
	now func() time.Time

	st *state.State // owned by the pass goroutine
	// dirty is set when something outside a pass may have changed the
	// worker (an Engine event on an owned container, a lost event stream):
	// the next pass reconciles fully even if the commit did not move.
	dirty atomic.Bool
	// lastStatus is the runtime picture of the last full pass, reused by
	// passes that had nothing to do (they make no Engine call).
	lastStatus *report.Status
	hostUUID   string
	signer     string // who signed the last fetched commit ("none": no policy)
	suspended  bool   // the last pass stopped because the agent is suspended
	// warnedNoCheck: the missing LAN check (no helper link) was logged.
	warnedNoCheck bool
	// warnedNoKnock: that LAN checks dial (no raw socket to knock) was logged.
	warnedNoKnock bool
	// reportedDrift holds, per decky, the drift last reported that the
	// agent does not repair (another machine on its address): reported
	// once while it lasts.
	reportedDrift map[string]string

	window passWindow // tells the agent's own Engine events from drift

	mu     stdsync.Mutex // guards health
	health Health
}

// New builds an agent and loads its state. Unless read-only, it removes
// the scratch leftovers of a crashed process (contexts/ctx-*).
func New(cfg Config, d Deps) (*Agent, error) {
	cfg.defaults()
	switch {
	case d.Engine == nil || d.LAN == nil || d.Source == nil:
		return nil, errors.New("agent: Engine, LAN and Source are required")
	case d.Outbox == nil && !cfg.ReadOnly:
		return nil, errors.New("agent: an Outbox is required unless read-only")
	case cfg.Host == "" || cfg.StateDir == "":
		return nil, errors.New("agent: Host and StateDir are required")
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	st, err := state.Load(cfg.StateDir, cfg.Host)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, d: d, log: d.Log.With("host", cfg.Host), now: d.Now, st: st, reportedDrift: map[string]string{}}
	a.setHealth()
	if !cfg.ReadOnly {
		a.removeLeftovers()
	}
	return a, nil
}

// ContextDir is where build contexts are written during a pass.
func (a *Agent) ContextDir() string { return filepath.Join(a.cfg.StateDir, "contexts") }

// removeLeftovers deletes build contexts a crashed pass left behind; they
// are scratch space, never read again.
func (a *Agent) removeLeftovers() {
	old, _ := filepath.Glob(filepath.Join(a.ContextDir(), "ctx-*"))
	for _, p := range old {
		if err := os.RemoveAll(p); err != nil {
			a.log.Warn("cannot remove a leftover build context", "dir", p, "err", err)
		} else {
			a.log.Info("removed a build context left by an earlier crash", "dir", p)
		}
	}
}

// State returns a copy of the agent's memory (for tests and status).
func (a *Agent) State() *state.State { return a.st.Clone() }

// Result is what one pass did.
type Result struct {
	Commit  string
	Skipped bool // nothing moved: the pass stopped after the fetch
	Changes apply.ChangeSet
	Results []apply.Result
	// Events are the lifecycle events the pass queued (or logged).
	Events []report.Event
	// Failed counts deckies that are not converged (failed, quarantined,
	// not applicable).
	Failed int
	// Abandoned are deckies whose apply was cut short by shutdown: no
	// event, no failure count; they are planned again by the next pass.
	Abandoned []string
	// Containers are the Engine's containers at the end of the pass.
	Containers []engine.Container
	// Steps are the steps that ran, in order, each with its wall time
	// (the step that refused or stopped the pass included): where a pass
	// spends its time, for the metrics and the debug log.
	Steps []StepTime
}

// StepTime is one step's wall time in a pass.
type StepTime struct {
	Step string
	Took time.Duration
}

// StepError is a pass that a step refused: nothing after that step ran.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// PassOptions tune one pass.
type PassOptions struct {
	// Full reconciles even when the commit has not moved and nothing
	// signalled drift (once, plan, the daemon's --resync).
	Full bool
}

// Pass runs one reconcile and reports it. It returns the result (nil when
// the pass was refused before the fetch) and a *StepError when a step
// refused; errors.Is(err, ErrDecommissioned) when the pass decommissioned
// the worker (see decommission): no pass may follow. Shutting down (ctx cancelled) is not a failure: deckies in
// flight are abandoned, and the report is still flushed within
// Config.ReportTimeout.
func (a *Agent) Pass(ctx context.Context, opt PassOptions) (*Result, error) {
	p := &pass{a: a, full: opt.Full, log: a.log, res: &Result{}}
	err := a.run(ctx, p)
	if errors.Is(err, ErrDecommissioned) {
		// Nothing may write to the state directory any more: the
		// decommission step delivered its own final report.
		a.setHealth()
		return p.res, err
	}
	if err != nil {
		a.log.ErrorContext(ctx, "pass could not start", "step", p.step, "err", err)
	}
	if !a.cfg.ReadOnly {
		a.finish(ctx, p, err) // the deferred step: heartbeat, delivery, state
	}
	if p.rev.Commit == "" && !p.res.Skipped {
		return nil, err
	}
	return p.res, err
}

// run executes the steps in order until one refuses or stops the pass.
func (a *Agent) run(ctx context.Context, p *pass) error {
	defer func() {
		if a.log.Enabled(ctx, slog.LevelDebug) && len(p.res.Steps) > 0 {
			attrs := make([]any, 0, len(p.res.Steps))
			for _, s := range p.res.Steps {
				attrs = append(attrs, slog.Float64(s.Step+"_ms", ms(s.Took)))
			}
			a.log.DebugContext(ctx, "pass steps", attrs...)
		}
	}()
	for _, s := range steps {
		p.step = s.name
		start := time.Now()
		err := s.fn(ctx, p)
		p.res.Steps = append(p.res.Steps, StepTime{Step: s.name, Took: time.Since(start)})
		if errors.Is(err, errStop) {
			return nil
		}
		if err != nil {
			return &StepError{Step: s.name, Err: err}
		}
	}
	return nil
}

// finish builds and delivers the heartbeat and saves the state, whatever
// the pass reached (Flux's deferred summarize).
func (a *Agent) finish(ctx context.Context, p *pass, passErr error) {
	if ctx.Err() != nil {
		// Shutting down: the report still goes out, within its deadline.
		ctx = context.WithoutCancel(ctx)
	}
	if p.res.Skipped {
		hb := a.baseHeartbeat(nil)
		hb.Status = *a.lastStatus
		a.deliver(ctx, hb, false)
		a.setHealth()
		return
	}
	if passErr == nil && p.note != "" {
		passErr = errors.New(p.note)
	}
	a.deliver(ctx, a.heartbeat(ctx, p, passErr), true)
	if err := a.st.Save(a.cfg.StateDir); err != nil {
		a.log.ErrorContext(ctx, "cannot save state", "err", err)
	}
	a.setHealth()
}

// Health is the agent's liveness picture, for /healthz and metrics.
type Health struct {
	LastFetchOK time.Time
	LastApply   time.Time
	Commit      string
	Signer      string
	Converged   bool
	Suspended   bool
	// Deckies counts deckies by runtime state at the last full pass.
	Deckies map[string]int
}

// Health returns a copy of the last health picture; safe for concurrent
// use with a running pass.
func (a *Agent) Health() Health {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.health
	h.Deckies = make(map[string]int, len(a.health.Deckies))
	for k, v := range a.health.Deckies {
		h.Deckies[k] = v
	}
	return h
}

// setHealth publishes the pass goroutine's view for other goroutines.
func (a *Agent) setHealth() {
	h := Health{LastFetchOK: a.st.LastFetchOK, LastApply: a.st.LastApply, Commit: a.st.LastCommit,
		Signer: a.signer, Converged: a.st.LastClean, Suspended: a.suspended, Deckies: map[string]int{}}
	if a.lastStatus != nil {
		for _, rt := range a.lastStatus.Runtime {
			h.Deckies[rt.State]++
		}
	}
	a.mu.Lock()
	a.health = h
	a.mu.Unlock()
}

// SuspendFile is the file whose presence in the state directory suspends
// the agent (`pull-agent suspend` writes it, `resume` removes it).
const SuspendFile = "suspend"

// Suspend writes the suspend file with a reason; Resume removes it.
func Suspend(stateDir, reason string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(stateDir, SuspendFile), []byte(reason+"\n"), 0o600)
}

// Resume removes the suspend file; resuming a running agent is not an
// error.
func Resume(stateDir string) error {
	err := os.Remove(filepath.Join(stateDir, SuspendFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// suspendedBy says who suspended the agent, or "" when nobody did.
func (a *Agent) suspendedBy(h *desired.Host) string {
	switch {
	case a.cfg.Suspend:
		return "--suspend"
	case h != nil && h.Suspend:
		return fmt.Sprintf("suspend: true in %s", h.File)
	}
	if b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, SuspendFile)); err == nil {
		if r := strings.TrimSpace(string(b)); r != "" {
			return "pull-agent suspend: " + r
		}
		return "pull-agent suspend"
	}
	return ""
}

// Short abbreviates a commit hash for messages.
func Short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

func verifiedName(signer string) string {
	if signer == "" {
		return "none"
	}
	return signer
}

// ms is d in milliseconds with microseconds kept, for logs.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
