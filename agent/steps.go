package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	stdsync "sync"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/relocalize"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// pass is what one reconcile has found so far; each step reads what the
// steps before it left and adds its own part.
type pass struct {
	a    *Agent
	full bool
	step string // the step running (or that refused)
	log  *slog.Logger

	rev      Revision
	fleet    *desired.Fleet
	host     *desired.Host
	lan      relocalize.LAN
	net      engine.NetworkSpec
	observed []engine.Container
	alloc    relocalize.Result
	specs    []*apply.DeckySpec
	failed   map[string]error // deckies that cannot be placed or rendered
	diffIn   apply.DiffInput
	// cancelAt is when shutdown was signalled during apply (zero: never);
	// a decky failing from then on was abandoned, not failed.
	cancelAt time.Time
	// note explains a pass that stopped on purpose (suspended); it travels
	// in the heartbeat's pass_error.
	note string
	// pruneRefused is why the removals of this pass were refused ("" when
	// they were not).
	pruneRefused string
	// driftEvents are the identity drift events of this pass (queued by
	// the identity step, listed first in the result's events).
	driftEvents []report.Event
	res         *Result
}

// cancelTime records when a context was cancelled (set from another
// goroutine by context.AfterFunc).
type cancelTime struct {
	mu stdsync.Mutex
	t  time.Time
}

func (c *cancelTime) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *cancelTime) get() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// errStop ends a pass early without error (skipped, read-only).
var errStop = errors.New("stop")

type step struct {
	name string
	fn   func(context.Context, *pass) error
}

// steps is the pass, in order. Each either adds to the pass, stops it
// (errStop) or refuses (any other error: nothing after it runs).
var steps = []step{
	{"fetch", fetch},
	{"parse", parse},
	{"suspend", suspend},
	{"decommission", decommission},
	{"detect", detect},
	{"allocate", allocate},
	{"render", render},
	{"diff", diff},
	{"identity", identity},
	{"prune", pruneGuard},
	{"network", ensureNetwork},
	{"apply", applyStep},
	{"record", record},
	{"helper", helper},
}

// fetch asks the source for the commit to apply. A pass over an unmoved
// commit on a clean worker, with no sign of drift, stops here: no object
// transfer, no Engine call.
func fetch(ctx context.Context, p *pass) error {
	a := p.a
	rev, err := a.d.Source.Sync(ctx, a.st.LastCommit)
	if err != nil {
		if _, ok := errors.AsType[*fleetsync.RefusedError](err); ok {
			return fmt.Errorf("%w; the deckies keep running as they are", err)
		}
		return fmt.Errorf("cannot fetch the fleet repository: %w", err)
	}
	p.rev = rev
	p.res.Commit = rev.Commit
	p.log = a.log.With("commit", Short(rev.Commit))
	a.signer = verifiedName(rev.Signer)
	if a.cfg.ReadOnly {
		return nil
	}
	a.st.LastFetchOK, a.st.LastRemote, a.st.Verified = a.now().UTC(), rev.Remote, a.signer
	if !p.full && !rev.Fetched && rev.Commit == a.st.LastCommit && a.st.LastClean && a.lastStatus != nil && !a.dirty.Load() {
		p.res.Skipped = true
		return errStop
	}
	a.dirty.Store(false)
	return nil
}

// parse reads the commit strictly; an invalid repository or a missing
// host file changes nothing.
func parse(ctx context.Context, p *pass) error {
	fleet, err := desired.LoadContext(ctx, p.rev.Tree)
	if err != nil {
		return fmt.Errorf("fleet repository at commit %s is invalid; nothing was changed:\n%w", Short(p.rev.Commit), err)
	}
	p.fleet = fleet
	p.host = fleet.Hosts[p.a.cfg.Host]
	if p.host == nil {
		return fmt.Errorf("the fleet repository at commit %s has no %s/%s.yaml; nothing was changed (an empty host file, `deckies: []`, removes every decky)", Short(p.rev.Commit), desired.HostsDir, p.a.cfg.Host)
	}
	p.a.hostUUID = p.host.HostUUID
	return nil
}

// suspend stops the pass after the commit was fetched, verified and
// parsed when the operator suspended the agent (host file suspend: true,
// `pull-agent suspend`, or --suspend): nothing is applied, the heartbeat
// says so, and the commit is applied after resume (it is not recorded as
// applied).
func suspend(_ context.Context, p *pass) error {
	why := p.a.suspendedBy(p.host)
	p.a.suspended = why != ""
	if why == "" {
		return nil
	}
	p.note = fmt.Sprintf("suspended (%s): commit %s fetched and verified, nothing applied", why, Short(p.rev.Commit))
	p.log.Info("suspended; nothing applied", "by", why)
	return errStop
}

// pruneGuard refuses a removal larger than the host file allows: by
// default at most desired.DefaultPruneMax deckies and at most half of those
// running in one pass, and never every decky, unless the commit carries
// prune: {max: N|all}. A refused removal removes nothing; every decky it
// would have removed becomes a failed teardown with the reason (reported
// once, shown in status), and the rest of the change set goes on.
func pruneGuard(_ context.Context, p *pass) error {
	running := map[string]bool{}
	for _, c := range p.observed {
		if c.Owner() == p.a.cfg.Host && c.Decky() != "" {
			running[c.Decky()] = true
		}
	}
	var remove []string
	for _, e := range p.res.Changes.Entries {
		if e.Action == apply.Remove {
			remove = append(remove, e.Decky)
		}
	}
	if p.host.Prune.Allows(len(running), len(remove)) {
		return nil
	}
	why := fmt.Sprintf("prune refused: commit %s removes %d of the %d deckies on this worker, more than the guard allows (at most %d, and at most half; never all) without a committed override in %s: add `prune: {max: all}` (or max: N) to apply it",
		Short(p.rev.Commit), len(remove), len(running), desired.DefaultPruneMax, p.host.File)
	if p.host.Prune.Set && !p.host.Prune.All {
		why = fmt.Sprintf("prune refused: commit %s removes %d deckies, more than prune.max %d in %s", Short(p.rev.Commit), len(remove), p.host.Prune.Max, p.host.File)
	}
	p.log.Warn("prune refused; nothing removed", "remove", len(remove), "running", len(running))
	p.pruneRefused = why
	p.enforcePrune()
	return nil
}

// enforcePrune turns the change set's removals into failed teardowns when
// the prune was refused (again after a re-plan).
func (p *pass) enforcePrune() {
	if p.pruneRefused == "" {
		return
	}
	for i, e := range p.res.Changes.Entries {
		if e.Action == apply.Remove {
			p.res.Changes.Entries[i] = apply.Entry{Decky: e.Decky, Action: apply.Failed, Operation: apply.OpTeardown, Error: p.pruneRefused}
		}
	}
}

// detect finds the decoy LAN: the override, the host file's interface, or
// the default route's.
func detect(ctx context.Context, p *pass) error {
	iface, gw := p.a.cfg.Interface, p.host.Network.Gateway
	if iface == "" {
		iface = p.host.Network.Interface
	}
	if p.a.cfg.Gateway.IsValid() {
		gw = p.a.cfg.Gateway
	}
	lan, err := p.a.d.LAN.Detect(ctx, hostnet.Options{Interface: iface, Gateway: gw})
	if err != nil {
		return err
	}
	p.lan = lan
	p.net = engine.NetworkSpec{Name: p.host.Network.Name, Driver: p.host.Network.Driver, Parent: lan.Interface, Subnet: lan.Subnet, Gateway: lan.Gateway}
	return nil
}

// allocate gives every desired decky its address, keeping previous ones,
// never one held by a foreign container or by another owned decky's
// containers, and probing every address about to be used for the first
// time.
func allocate(ctx context.Context, p *pass) error {
	a := p.a
	cs, err := a.d.Engine.ListContainers(ctx)
	if err != nil {
		return err
	}
	p.observed = cs
	in := relocalize.Input{
		Host: a.cfg.Host, LAN: p.lan, Pool: p.host.IPPool, Deckies: relocDeckies(p.host),
		Previous: a.st.Previous(p.lan.Subnet),
		Reserved: foreignAddresses(cs, a.cfg.Host, p.net.Name),
		Held:     heldAddresses(cs, a.cfg.Host, p.net.Name),
	}
	p.alloc, err = relocalize.AllocateProbed(in, notRunningAt(cs, a.cfg.Host, p.net.Name), p.prober(ctx))
	if err != nil {
		return err
	}
	for _, name := range SortedKeys(p.alloc.Assignments) {
		if as := p.alloc.Assignments[name]; as.Reason == relocalize.MovedAfterConflict {
			p.log.WarnContext(ctx, "address conflict on the LAN; decky moved", "decky", name, "ip", as.IP, "detail", as.Detail)
		}
	}
	return nil
}

func (p *pass) prober(ctx context.Context) relocalize.ProbeFunc {
	if !p.a.cfg.Probe {
		return func([]netip.Addr) (map[netip.Addr]string, error) { return nil, nil }
	}
	return func(addrs []netip.Addr) (map[netip.Addr]string, error) {
		return p.a.d.LAN.Probe(ctx, p.lan.Interface, addrs)
	}
}

// render resolves images and renders every decky; a decky that cannot be
// rendered fails alone.
func render(ctx context.Context, p *pass) error {
	a := p.a
	images, err := apply.ResolveImages(ctx, p.fleet, p.host, p.rev.Tree, a.d.Engine)
	if err != nil {
		return err
	}
	specs, renderErrs := apply.Render(apply.RenderInput{
		Owner: a.cfg.Host, Project: p.fleet.Defaults.ComposeProject, WorkingDir: a.cfg.StateDir,
		Fleet: p.fleet, Host: p.host, Network: p.net, Addresses: p.alloc.Assignments, Images: images, AllowPull: a.cfg.AllowPull,
	})
	p.specs = specs
	p.failed = map[string]error{}
	for n, e := range p.alloc.Errors {
		p.failed[n] = e
	}
	for n, e := range renderErrs {
		p.failed[n] = e
	}
	return nil
}

// diff plans the change set against the owned containers.
func diff(_ context.Context, p *pass) error {
	a := p.a
	p.diffIn = apply.DiffInput{Owner: a.cfg.Host, Project: p.fleet.Defaults.ComposeProject, Desired: p.specs, Failed: p.failed,
		Observed: p.observed, Quarantined: a.st.Quarantined, Applied: a.st.Applied,
		// A decky that failed its last check at this hash (steady state, LAN
		// check) is checked again, not taken as unchanged.
		Unverified: func(d, h string) bool { f, ok := a.st.Failures[d]; return ok && f.Hash == h }}
	p.res.Changes = apply.Diff(p.diffIn)
	return nil
}

// ensureNetwork checks (plan, or nothing to change) or creates the decoy
// network. When it had to be replaced, its containers went with it: the
// change set is planned again from what is left.
func ensureNetwork(ctx context.Context, p *pass) error {
	a := p.a
	if a.cfg.ReadOnly || !p.res.Changes.Changes() {
		if err := a.d.Engine.CheckNetwork(ctx, p.net.Name); err != nil {
			return err
		}
		if a.cfg.ReadOnly {
			return errStop
		}
		return nil
	}
	info, err := a.d.Engine.EnsureNetwork(ctx, p.net, apply.NetworkSpecHash(p.net))
	if err != nil {
		return err
	}
	if info.Replaced {
		if p.diffIn.Observed, err = a.d.Engine.ListContainers(ctx); err != nil {
			return err
		}
		p.res.Changes = apply.Diff(p.diffIn)
		p.enforcePrune()
	}
	return nil
}

// applyStep applies the changing deckies in parallel. Shutdown during
// apply abandons the deckies in flight (see record).
func applyStep(ctx context.Context, p *pass) error {
	a := p.a
	if !p.res.Changes.Changes() {
		return nil
	}
	// Apply runs under a context of its own, cancelled only after the
	// moment of shutdown is recorded: every decky that fails from then on
	// failed because of it, and is abandoned rather than failed.
	actx, acancel := context.WithCancel(context.WithoutCancel(ctx))
	defer acancel()
	var at cancelTime
	stop := context.AfterFunc(ctx, func() { at.set(a.now()); acancel() })
	defer stop()
	lc, done := p.knocking(ctx, p.lanCheck(ctx))
	defer done()
	applier := apply.NewApplier(a.d.Engine, p.fleet.Defaults.ComposeProject, a.cfg.StateDir, p.net, apply.Options{
		Parallel: a.cfg.Parallel, Steady: a.cfg.Steady, ContextDir: a.ContextDir(), AllowPull: a.cfg.AllowPull,
		LANCheck: lc,
	}, p.log)
	p.res.Results = applier.Apply(actx, p.res.Changes, p.rev.Tree)
	p.cancelAt = at.get()
	return nil
}

// record derives the new state and the lifecycle events (pure, Record)
// and queues the events.
func record(ctx context.Context, p *pass) error {
	a := p.a
	// Every decky the pass keeps: desired ones, and those whose removal
	// the prune guard refused (their failure is remembered, not re-sent).
	var wanted []string
	for _, e := range p.res.Changes.Entries {
		if e.Action != apply.Remove {
			wanted = append(wanted, e.Decky)
		}
	}
	out := Record(RecordInput{
		State: a.st, Commit: p.rev.Commit, Wanted: wanted, Assignments: p.alloc.Assignments,
		Changes: p.res.Changes, Results: p.res.Results, Budget: a.cfg.RetryBudget, Now: a.now().UTC(), Canceled: p.cancelAt,
		Queued: a.queuedSucceeded(ctx),
	})
	a.st = out.State
	p.res.Events, p.res.Failed, p.res.Abandoned = append(slices.Clone(p.driftEvents), out.Events...), out.Failed, out.Abandoned
	for _, name := range out.Abandoned {
		p.log.InfoContext(ctx, "shutting down: decky abandoned, planned again next pass", "decky", name)
	}
	a.queue(ctx, out.Events)
	// The state is saved right after the events are queued, before any
	// delivery: a run killed after this point has nothing to recover, and
	// one killed before it finds its events still queued (Queued), so
	// recovery never reports twice.
	if err := a.st.Save(a.cfg.StateDir); err != nil {
		p.log.ErrorContext(ctx, "cannot save state", "err", err)
	}
	return nil
}

// queuedSucceeded reports which succeeded events the outbox still holds,
// for Record's recovery of an interrupted run: deploys and mutates by
// decky and configuration, teardowns by decky.
func (a *Agent) queuedSucceeded(ctx context.Context) func(string, apply.Operation, string) bool {
	if a.d.Outbox == nil {
		return nil
	}
	// Read lazily: only a pass with something to recover reads the outbox.
	var held map[[2]string]bool
	return func(decky string, op apply.Operation, hash string) bool {
		if held == nil {
			held = map[[2]string]bool{}
			events, err := a.d.Outbox.Pending(0)
			if err != nil {
				a.log.WarnContext(ctx, "cannot read the outbox", "err", err)
			}
			for _, e := range events {
				switch {
				case e.Status != apply.Succeeded:
				case e.Operation == string(apply.OpTeardown):
					held[[2]string{e.DeckyName, string(apply.OpTeardown)}] = true
				default:
					held[[2]string{e.DeckyName, e.ConfigHash}] = true
				}
			}
		}
		if op == apply.OpTeardown {
			return held[[2]string{decky, string(apply.OpTeardown)}]
		}
		return held[[2]string{decky, hash}]
	}
}

// helper lists what runs now (shared with the heartbeat) and keeps the
// host-side helper link in step. A helper failure is logged, not fatal:
// deckies serve the LAN without it; only host-to-decky traffic needs it.
func helper(ctx context.Context, p *pass) error {
	a := p.a
	// A pass that changed nothing reuses its own listing: what runs is
	// what it saw (a change by someone else since then arrives as an
	// Engine event and marks the next pass dirty).
	cs := p.observed
	if p.res.Changes.Changes() {
		var err error
		if cs, err = a.d.Engine.ListContainers(ctx); err != nil {
			p.log.WarnContext(ctx, "cannot list containers after the pass", "err", err)
			return nil
		}
	}
	p.res.Containers = cs
	p.ensureHelper(ctx, p.runningBases(cs))
	return nil
}

// lanCheck is the apply's LAN check: the port checker, once the helper
// link routes to every decky running now and every one about to run (nil
// when there is no checker, or the link could not be set up: deckies are
// then judged by their containers alone, as the warning says).
func (p *pass) lanCheck(ctx context.Context) apply.PortChecker {
	pc := p.portChecker(ctx)
	if pc == nil || p.helperLink() == "" {
		return pc
	}
	ips := p.runningBases(p.diffIn.Observed)
	var changing []netip.Addr
	for _, e := range p.res.Changes.Entries {
		if e.Changes() && e.Action != apply.Remove && e.IP.IsValid() {
			changing = append(changing, e.IP)
		}
	}
	ips = append(ips, changing...)
	slices.SortFunc(ips, netip.Addr.Compare)
	if !p.ensureHelper(ctx, slices.Compact(ips)) {
		p.log.WarnContext(ctx, "LAN check skipped this pass: the host helper link is not ready")
		return nil
	}
	// A changing decky may answer with another MAC than the kernel
	// remembers (a repair puts its MAC back; an address reused): forget
	// it, so the check dials whoever answers ARP now.
	if f, ok := p.a.d.LAN.(NeighbourForgetter); ok {
		if err := f.ForgetNeighbours(p.helperLink(), changing); err != nil {
			p.log.WarnContext(ctx, "cannot forget stale neighbour entries", "err", err)
		}
	}
	return pc
}

// notRunningAt reports whether decky name is not already up at ip: only
// addresses about to be used for the first time are probed (a running
// decky would not answer its own probe through the macvlan parent anyway).
func notRunningAt(cs []engine.Container, owner, network string) func(string, netip.Addr) bool {
	held := map[string]netip.Addr{}
	for _, c := range cs {
		if c.Owner() == owner && c.Labels[engine.LabelRole] == engine.RoleBase {
			held[c.Decky()] = c.Networks[network]
		}
	}
	return func(name string, ip netip.Addr) bool { return held[name] != ip }
}

func relocDeckies(h *desired.Host) []relocalize.Decky {
	out := make([]relocalize.Decky, 0, len(h.Deckies))
	for _, d := range h.Deckies {
		out = append(out, relocalize.Decky{Name: d.Name, Pinned: d.IP})
	}
	return out
}

// foreignAddresses are the decoy-network addresses held by containers the
// agent does not own: never to be handed to a decky.
func foreignAddresses(cs []engine.Container, owner, network string) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, c := range cs {
		if c.Owner() == owner {
			continue
		}
		if ip, ok := c.Networks[network]; ok && ip.IsValid() {
			out[ip] = fmt.Sprintf("is held by container %s, which this agent does not own", c.Name)
		}
	}
	return out
}

// heldAddresses are the decoy-network addresses held by containers the
// agent owns, in any state, with the decky holding each: relocalize keeps
// them for that decky until its containers are gone.
func heldAddresses(cs []engine.Container, owner, network string) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, c := range cs {
		if c.Owner() != owner || c.Decky() == "" {
			continue
		}
		if ip, ok := c.Networks[network]; ok && ip.IsValid() {
			out[ip] = c.Decky()
		}
	}
	return out
}
