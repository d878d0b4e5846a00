package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/relocalize"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// agent holds what one worker's passes share.
type agent struct {
	cfg      *agentConfig
	log      *slog.Logger
	readOnly bool // plan: never writes state, never mutates Docker
	// dirty is set when something outside a pass may have changed the
	// worker (a Docker event on an owned container, a lost event stream):
	// the next pass reconciles fully even if the commit did not move.
	dirty atomic.Bool
	// lastStatus is the runtime picture of the last full pass, reused by
	// passes that had nothing to do (they make no Docker call).
	lastStatus *report.Status
	hostUUID   string        // the host file's host_uuid, for reports
	lastHost   *desired.Host // the host's desired state at the last parse
	lock       *state.Lock
	st         *state.State
	syncer     *fleetsync.Syncer
	eng        *engine.Docker
	det        *hostnet.Detector
	box        *report.Outbox
	sender     *report.Sender
	cleanup    []func()
}

func newAgent(ctx context.Context, cfg *agentConfig, log *slog.Logger, readOnly bool) (_ *agent, err error) {
	a := &agent{cfg: cfg, log: log.With("host", cfg.host), readOnly: readOnly}
	defer func() {
		if err != nil {
			a.close() // releases the lock and whatever was opened before the error
		}
	}()
	gitDir := filepath.Join(cfg.stateDir, "git")
	if readOnly {
		// plan must not disturb a running daemon: it works on its own clone
		// and only reads the state file.
		tmp, err := os.MkdirTemp("", "pull-agent-plan-")
		if err != nil {
			return nil, err
		}
		a.cleanup = append(a.cleanup, func() { os.RemoveAll(tmp) })
		gitDir = tmp
	} else {
		if a.lock, err = state.Acquire(cfg.stateDir); err != nil {
			return nil, err
		}
	}
	if a.st, err = state.Load(cfg.stateDir, cfg.host); err != nil {
		return nil, err
	}
	ca, err := cfg.repoCABundle()
	if err != nil {
		return nil, err
	}
	creds, err := cfg.credentials()
	if err != nil {
		return nil, err
	}
	a.syncer, err = fleetsync.New(fleetsync.Options{
		Remotes: cfg.repos, Ref: cfg.ref, Pin: cfg.pin, Dir: gitDir, Timeout: cfg.gitTimeout,
		CABundle: ca, Proxy: cfg.repoProxy, Credentials: creds,
		Trust:         fleetsync.TrustOptions{GPGKeyRing: cfg.trustGPG, SSHAllowedSigners: cfg.trustSSH},
		AllowRollback: cfg.allowRollback,
	}, a.log)
	if err != nil {
		return nil, err
	}
	if a.det, err = hostnet.NewDetector(); err != nil {
		return nil, err
	}
	if a.eng, err = engine.New(ctx, cfg.host, engine.Options{}, a.log); err != nil {
		return nil, noStart(err)
	}
	if !readOnly {
		if a.box, err = report.OpenOutbox(filepath.Join(cfg.stateDir, "outbox"), cfg.host); err != nil {
			return nil, err
		}
		if cfg.master != "" {
			a.sender, err = report.NewSender(a.box, report.SenderOptions{
				Master: cfg.master, CAFile: cfg.masterCA, CertFile: cfg.masterCert, KeyFile: cfg.masterKey,
				PinSHA256: cfg.masterPin, TokenFile: cfg.masterToken, AllowInsecure: cfg.insecure,
			}, a.log)
			if err != nil {
				return nil, usageErr("%v", err)
			}
		}
	}
	return a, nil
}

func (a *agent) close() {
	if a.eng != nil {
		a.eng.Close()
	}
	if a.det != nil {
		a.det.Close()
	}
	if a.lock != nil {
		a.lock.Release()
	}
	for _, f := range a.cleanup {
		f()
	}
}

// passResult is what one pass did.
type passResult struct {
	commit  string
	skipped bool // nothing moved: the pass stopped after the ref advertisement
	changes apply.ChangeSet
	results []apply.Result
	failed  int // deckies that are not converged (failed, quarantined)
	// after is the Engine's containers at the end of the pass, shared by
	// the host helper and the heartbeat instead of listing twice.
	after []engine.Container
}

// pass runs one reconcile: sync, parse, relocalize, diff and (unless
// read-only) apply and record. Errors before any decky is touched are
// startErrors. Unless full is set, a pass whose commit has not moved since
// a clean pass, with no sign of drift, stops after the ref advertisement:
// no object transfer, no Docker call.
func (a *agent) pass(ctx context.Context, full bool) (*passResult, error) {
	snap, err := a.syncer.Sync(ctx, a.st.LastCommit)
	if err != nil {
		var re *fleetsync.RefusedError
		if errors.As(err, &re) {
			return nil, noStart(fmt.Errorf("%w; the deckies keep running as they are", err))
		}
		return nil, noStart(fmt.Errorf("cannot fetch the fleet repository: %w", err))
	}
	log := a.log.With("commit", short(snap.Commit))
	if !a.readOnly {
		a.st.LastFetchOK, a.st.LastRemote = time.Now().UTC(), snap.Remote
	}
	if !full && !a.readOnly && !snap.Fetched && snap.Commit == a.st.LastCommit && a.st.LastClean && a.lastStatus != nil && !a.dirty.Load() {
		return &passResult{commit: snap.Commit, skipped: true}, nil
	}
	a.dirty.Store(false)
	fleet, err := desired.Load(snap)
	if err != nil {
		return nil, noStart(fmt.Errorf("fleet repository at commit %s is invalid; nothing was changed:\n%w", short(snap.Commit), err))
	}
	host := fleet.Hosts[a.cfg.host]
	a.lastHost = host
	if host == nil {
		return nil, noStart(fmt.Errorf("the fleet repository at commit %s has no %s/%s.yaml; nothing was changed (an empty host file, `deckies: []`, removes every decky)", short(snap.Commit), desired.HostsDir, a.cfg.host))
	}
	lan, err := a.detectLAN(ctx, host)
	if err != nil {
		return nil, noStart(err)
	}
	containers, err := a.eng.ListContainers(ctx)
	if err != nil {
		return nil, noStart(err)
	}
	netSpec := engine.NetworkSpec{Name: host.Network.Name, Driver: host.Network.Driver, Parent: lan.Interface, Subnet: lan.Subnet, Gateway: lan.Gateway}
	alloc, err := relocalize.AllocateProbed(relocalize.Input{
		Host: a.cfg.host, LAN: lan, Pool: host.IPPool, Deckies: relocDeckies(host),
		Previous: a.st.Previous(lan.Subnet), Reserved: foreignAddresses(containers, a.cfg.host, netSpec.Name),
	}, notRunningAt(containers, a.cfg.host, netSpec.Name), a.prober(ctx, lan.Interface))
	if err != nil {
		return nil, noStart(err)
	}
	for name, as := range alloc.Assignments {
		if as.Reason == relocalize.MovedAfterConflict {
			log.WarnContext(ctx, "address conflict on the LAN; decky moved", "decky", name, "ip", as.IP, "detail", as.Detail)
		}
	}
	if err := a.eng.CheckNetwork(ctx, netSpec.Name); err != nil {
		return nil, noStart(err)
	}
	images, err := apply.ResolveImages(ctx, fleet, host, snap, a.eng)
	if err != nil {
		return nil, noStart(err)
	}
	specs, renderErrs := apply.Render(apply.RenderInput{
		Owner: a.cfg.host, Project: fleet.Defaults.ComposeProject, WorkingDir: a.cfg.stateDir,
		Fleet: fleet, Host: host, Network: netSpec, Addresses: alloc.Assignments, Images: images, AllowPull: a.cfg.allowPull,
	})
	failed := map[string]error{}
	for n, e := range alloc.Errors {
		failed[n] = e
	}
	for n, e := range renderErrs {
		failed[n] = e
	}
	diffIn := apply.DiffInput{Owner: a.cfg.host, Project: fleet.Defaults.ComposeProject, Desired: specs, Failed: failed, Observed: containers, Quarantined: a.quarantined, Applied: a.st.Applied}
	cs := apply.Diff(diffIn)
	res := &passResult{commit: snap.Commit, changes: cs}
	if a.readOnly {
		return res, nil
	}

	if cs.Changes() {
		info, err := a.eng.EnsureNetwork(ctx, netSpec, apply.NetworkSpecHash(netSpec))
		if err != nil {
			return nil, noStart(err)
		}
		if info.Replaced {
			// The old network's containers are gone: plan again from what is left.
			if diffIn.Observed, err = a.eng.ListContainers(ctx); err != nil {
				return nil, noStart(err)
			}
			cs = apply.Diff(diffIn)
			res.changes = cs
		}
		applier := apply.NewApplier(a.eng, fleet.Defaults.ComposeProject, a.cfg.stateDir, netSpec, apply.Options{
			Parallel:   a.cfg.parallel,
			Steady:     apply.SteadyOptions{Samples: a.cfg.steadySamples, Interval: a.cfg.steadyEvery, Timeout: a.cfg.steadyTimeout},
			ContextDir: filepath.Join(a.cfg.stateDir, "contexts"),
			AllowPull:  a.cfg.allowPull,
		}, log)
		res.results = applier.Apply(ctx, cs, snap)
	}
	a.record(ctx, snap, host, alloc, res)
	if res.after, err = a.eng.ListContainers(ctx); err != nil {
		a.log.WarnContext(ctx, "cannot list containers after the pass", "err", err)
	}
	a.ensureHelper(ctx, lan, netSpec, res.after)
	return res, nil
}

// ensureHelper keeps the host-side helper link in step with the deckies
// that run now. A failure is logged, not fatal: deckies serve the LAN
// without it; only host-to-decky traffic needs it.
func (a *agent) ensureHelper(ctx context.Context, lan relocalize.LAN, n engine.NetworkSpec, cs []engine.Container) {
	if a.cfg.helper == "" || len(lan.HostAddrs) == 0 || cs == nil {
		return
	}
	name := a.cfg.helper
	if name == "decnet_macvlan0" && n.Driver == desired.DriverIPvlan {
		name = "decnet_ipvlan0" // DECNET's name for the ipvlan variant
	}
	var ips []netip.Addr
	for _, c := range cs {
		if c.Owner() == a.cfg.host && c.Labels[engine.LabelRole] == engine.RoleBase && c.State == "running" {
			if ip := c.Networks[n.Name]; ip.IsValid() {
				ips = append(ips, ip)
			}
		}
	}
	ch, err := a.det.EnsureHelper(hostnet.HelperSpec{Name: name, Parent: lan.Interface, Driver: n.Driver, HostIP: lan.HostAddrs[0], Deckies: ips, Owner: a.cfg.host})
	if err != nil {
		a.log.WarnContext(ctx, "host helper not updated", "link", name, "err", err)
		return
	}
	if ch.Created || len(ch.RoutesAdded)+len(ch.RoutesRemoved) > 0 {
		a.log.InfoContext(ctx, "host helper updated", "link", name, "created", ch.Created, "routes_added", len(ch.RoutesAdded), "routes_removed", len(ch.RoutesRemoved))
	}
}

// prober returns the duplicate-address detection the allocation uses.
func (a *agent) prober(ctx context.Context, iface string) relocalize.ProbeFunc {
	if !a.cfg.probe {
		return func([]netip.Addr) (map[netip.Addr]string, error) { return nil, nil }
	}
	return func(addrs []netip.Addr) (map[netip.Addr]string, error) {
		found, err := hostnet.Probe(ctx, iface, addrs, hostnet.ProbeOptions{})
		if err != nil {
			return nil, err
		}
		out := map[netip.Addr]string{}
		for ip, c := range found {
			out[ip] = c.String()
		}
		return out, nil
	}
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

func (a *agent) detectLAN(ctx context.Context, host *desired.Host) (relocalize.LAN, error) {
	iface := a.cfg.iface
	if iface == "" {
		iface = host.Network.Interface
	}
	gw := host.Network.Gateway
	if a.cfg.gateway != "" {
		gw = netip.MustParseAddr(a.cfg.gateway) // validated with the flags
	}
	return a.det.Detect(ctx, hostnet.Options{Interface: iface, Gateway: gw})
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

func (a *agent) quarantined(decky, hash string) bool {
	f, ok := a.st.Failures[decky]
	return ok && f.Hash == hash && f.Count >= a.cfg.retryBudget
}

// record updates the state (in memory; onePass saves it) and queues
// lifecycle events for a pass.
func (a *agent) record(ctx context.Context, snap *fleetsync.Snapshot, host *desired.Host, alloc relocalize.Result, res *passResult) {
	now := time.Now().UTC()
	st := a.st
	wanted := map[string]bool{}
	for _, d := range host.Deckies {
		wanted[d.Name] = true
	}
	for name, as := range alloc.Assignments {
		st.Addresses[name] = state.Address{IP: as.IP, MAC: as.MAC}
	}
	for name := range st.Addresses {
		if !wanted[name] {
			delete(st.Addresses, name)
		}
	}
	emit := func(e report.Event) {
		e.Commit = snap.Commit
		if a.sender == nil {
			// No master to report to: the result is logged, not queued for
			// nobody until the outbox fills.
			a.log.InfoContext(ctx, "lifecycle", "decky", e.DeckyName, "operation", e.Operation, "status", e.Status, "error", e.Error)
			return
		}
		if _, err := a.box.Add(e); err != nil {
			a.log.ErrorContext(ctx, "cannot queue lifecycle event", "decky", e.DeckyName, "err", err)
		}
	}
	for _, r := range res.results {
		emit(report.Event{DeckyName: r.Decky, Operation: string(r.Operation), Status: r.Status, Error: r.Error,
			ConfigHash: r.Hash, StartedAt: r.StartedAt, CompletedAt: r.CompletedAt, Note: addressNote(alloc.Assignments[r.Decky])})
		switch {
		case r.Action == apply.Remove && r.Status == apply.Succeeded:
			delete(st.Applied, r.Decky)
			delete(st.Failures, r.Decky)
		case r.Status == apply.Succeeded:
			st.Applied[r.Decky] = r.Hash
			delete(st.Failures, r.Decky)
		default:
			res.failed++
			f := st.Failures[r.Decky]
			if f.Hash != r.Hash {
				f = state.Failure{Hash: r.Hash}
			}
			f.Count++
			f.Error, f.Last = r.Error, now
			if f.Count >= a.cfg.retryBudget && !f.Reported {
				f.Reported = true
				emit(report.Event{DeckyName: r.Decky, Operation: string(r.Operation), Status: "quarantined", ConfigHash: r.Hash,
					Error: fmt.Sprintf("failed %d times at this desired state; left alone until it changes. Last error: %s", f.Count, r.Error), CompletedAt: now})
			}
			st.Failures[r.Decky] = f
		}
	}
	for _, e := range res.changes.Entries {
		switch e.Action {
		case apply.Quarantined:
			res.failed++
		case apply.Failed:
			res.failed++
			// Nothing was attempted: report the problem once, not every pass.
			f := st.Failures[e.Decky]
			if f.Hash != e.Hash || f.Error != e.Error {
				emit(report.Event{DeckyName: e.Decky, Operation: string(e.Operation), Status: apply.FailedSt, Error: e.Error, ConfigHash: e.Hash, CompletedAt: now})
				st.Failures[e.Decky] = state.Failure{Hash: e.Hash, Error: e.Error, Last: now}
			}
		}
	}
	for name := range st.Failures {
		if !wanted[name] {
			delete(st.Failures, name)
		}
	}
	st.LastCommit = snap.Commit
	st.LastApply = now
	st.LastClean = res.failed == 0 // saved by onePass, with the fetch time
}

// baseHeartbeat is the heartbeat without the runtime picture.
func (a *agent) baseHeartbeat(passErr error) report.Heartbeat {
	hb := report.Heartbeat{
		HostUUID: a.cfg.host, Host: a.cfg.host, AgentVersion: version,
		Commit: a.st.LastCommit, Remote: a.st.LastRemote,
		LastFetchOK: a.st.LastFetchOK, LastApply: a.st.LastApply, GeneratedAt: time.Now().UTC(),
	}
	if a.hostUUID != "" {
		hb.HostUUID = a.hostUUID
	}
	if passErr != nil {
		hb.PassError = fleetsync.RedactText(passErr.Error())
	}
	return hb
}

// heartbeat builds the current state report from what runs now
// (containers, when the caller has just listed them).
func (a *agent) heartbeat(ctx context.Context, host *desired.Host, passErr error, containers []engine.Container) report.Heartbeat {
	if host != nil {
		a.hostUUID = host.HostUUID
	}
	hb := a.baseHeartbeat(passErr)
	var err error
	if containers == nil {
		containers, err = a.eng.ListContainers(ctx)
	}
	if err != nil {
		if prev, ok := a.box.Heartbeat(); ok {
			hb.Status = prev.Status // keep the last known picture rather than none
		}
		return hb
	}
	st := runtimeStatus(containers, a.cfg.host, host, a.st)
	a.lastStatus = &st
	hb.Status = st
	return hb
}

// runtimeStatus derives every decky's state from the containers' labels,
// base container included (DECNET ignored it, bug §6).
func runtimeStatus(cs []engine.Container, owner string, host *desired.Host, st *state.State) report.Status {
	out := report.Status{Runtime: map[string]report.Runtime{}}
	type obs struct {
		base string
		svcs map[string]string
	}
	seen := map[string]*obs{}
	for _, c := range cs {
		if c.Owner() != owner || c.Decky() == "" {
			continue
		}
		o := seen[c.Decky()]
		if o == nil {
			o = &obs{svcs: map[string]string{}}
			seen[c.Decky()] = o
		}
		if c.Labels[engine.LabelRole] == engine.RoleBase {
			o.base = c.State
		} else {
			o.svcs[c.Labels[engine.LabelServiceName]] = c.State
		}
	}
	wantSvcs := map[string][]string{} // desired decky -> its services
	if host != nil {
		for _, d := range host.Deckies {
			wantSvcs[d.Name] = d.Services
			ds := report.DeckyStatus{Name: d.Name, Services: append([]string(nil), d.Services...), Hostname: d.Hostname,
				Archetype: d.Archetype, NmapOS: d.NmapOS, Distro: d.Distro, ConfigHash: st.Applied[d.Name]}
			if addr, ok := st.Addresses[d.Name]; ok {
				ds.IP, ds.MAC = addr.IP.String(), addr.MAC
			}
			sort.Strings(ds.Services)
			out.Deckies = append(out.Deckies, ds)
		}
	}
	names := map[string]bool{}
	for n := range wantSvcs {
		names[n] = true
	}
	for n := range seen {
		names[n] = true
	}
	for n := range names {
		o := seen[n]
		rt := report.Runtime{Services: map[string]string{}}
		if o != nil {
			rt.Base = o.base
			for s, v := range o.svcs {
				rt.Services[s] = v
			}
		}
		for _, s := range wantSvcs[n] {
			if _, ok := rt.Services[s]; !ok {
				rt.Services[s] = "absent"
			}
		}
		running, total := 0, 0
		for _, v := range append([]string{rt.Base}, values(rt.Services)...) {
			total++
			if v == "running" {
				running++
			}
		}
		switch {
		case o == nil:
			rt.State = "absent"
		case running == total:
			rt.State, rt.Running = "running", true
		case running == 0:
			rt.State = "failed"
		default:
			rt.State = "degraded"
		}
		if f, ok := st.Failures[n]; ok {
			rt.Error = f.Error
			if f.Reported {
				rt.State = "quarantined"
			}
		}
		out.Runtime[n] = rt
	}
	out.Deployed = len(out.Runtime) > 0
	return out
}

func values(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// deliver sends the outbox with the heartbeat, within the report deadline;
// undelivered events stay queued for the next pass. persist stores the
// heartbeat too (after passes that changed the picture), so a restarted
// agent has one to send before its first full pass.
func (a *agent) deliver(ctx context.Context, hb report.Heartbeat, persist bool) {
	hb.OutboxDepth, hb.OutboxRejects = a.box.Depth(), a.box.Rejected()
	if persist {
		if err := a.box.SetHeartbeat(hb); err != nil {
			a.log.ErrorContext(ctx, "cannot store heartbeat", "err", err)
		}
	}
	if a.sender == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.reportTimeout)
	defer cancel()
	n, err := a.sender.Flush(ctx, hb)
	if err != nil {
		a.log.WarnContext(ctx, "reports not delivered; kept in the outbox for the next pass", "delivered", n, "pending", a.box.Depth(), "err", err)
		return
	}
	a.log.DebugContext(ctx, "reports delivered", "events", n)
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

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}
