package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/report"
)

// OpDrift is the lifecycle operation of an identity drift: a running
// decky the LAN does not see as rendered (another MAC, no ARP answer, a
// declared port not answering). Its status is always failed; the error
// lists what differed and the note whether the pass repairs it (a repair
// event follows) or only reports it (another machine claims the address).
const OpDrift = "drift"

// ARPResolver is an optional role of a [LAN]: which MACs answer ARP for
// q's targets (hostnet.Resolve). Without it the identity check looks at
// declared ports only.
type ARPResolver interface {
	Resolve(ctx context.Context, q hostnet.Query) (map[netip.Addr][]net.HardwareAddr, error)
}

// Resolve implements [ARPResolver] with hostnet.Resolve.
func (h HostLAN) Resolve(ctx context.Context, q hostnet.Query) (map[netip.Addr][]net.HardwareAddr, error) {
	return hostnet.Resolve(ctx, q, h.ProbeOptions)
}

// NeighbourForgetter is an optional role of a [LAN]: forgetting what the
// kernel learned about addresses' MACs on a link.
type NeighbourForgetter interface {
	ForgetNeighbours(link string, ips []netip.Addr) error
}

// ForgetNeighbours implements [NeighbourForgetter]: it deletes the helper
// link's ARP entries for ips. A decky recreated with its MAC put back
// would otherwise be dialed at the MAC the kernel learned while it
// drifted (any ARP answer updates an entry), until the kernel gives up
// on it, and the LAN check could fail a repaired decky.
func (h HostLAN) ForgetNeighbours(link string, ips []netip.Addr) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return fmt.Errorf("forget neighbours on %s: %w", link, err)
	}
	var errs []error
	for _, ip := range ips {
		n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice()}
		if err := netlink.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("forget neighbour %s on %s: %w", ip, link, err))
		}
	}
	return errors.Join(errs...)
}

// PortKnocker is an optional role of a [LAN]: a half-open TCP prober
// whose SYNs leave from iface with sender address src (hostnet.Knocker).
// With it the LAN checks (after an apply, and the identity check) knock
// at declared ports instead of dialing them: the decoys' services are not
// woken, nor log the checks as visits.
type PortKnocker interface {
	OpenKnocker(iface string, src netip.Addr) (*hostnet.Knocker, error)
}

// OpenKnocker implements [PortKnocker] with hostnet.OpenKnocker.
func (HostLAN) OpenKnocker(iface string, src netip.Addr) (*hostnet.Knocker, error) {
	return hostnet.OpenKnocker(iface, src)
}

var (
	_ ARPResolver        = HostLAN{}
	_ NeighbourForgetter = HostLAN{}
	_ PortKnocker        = HostLAN{}
)

// knockResend is how often a knock sends its SYN again while nothing
// answers (a lost frame on a busy LAN), within each attempt's deadline.
const knockResend = 500 * time.Millisecond

// helperLink is the host helper link's name, or "" when there is none
// (disabled, or the worker has no address on the decoy LAN).
func (p *pass) helperLink() string {
	a := p.a
	if a.cfg.Helper == "" || len(p.lan.HostAddrs) == 0 {
		return ""
	}
	if a.cfg.Helper == DefaultHelper && p.net.Driver == desired.DriverIPvlan {
		return defaultIPvlanHelper
	}
	return a.cfg.Helper
}

// DefaultHelper is DECNET's helper link name; with an ipvlan network the
// link is defaultIPvlanHelper instead (DECNET's names, kept).
const (
	DefaultHelper       = "decnet_macvlan0"
	defaultIPvlanHelper = "decnet_ipvlan0"
)

// helperNames lists every name the helper link configured as name can
// have, whatever the network's driver: what teardown must look for.
func helperNames(name string) []string {
	switch name {
	case "":
		return nil
	case DefaultHelper:
		return []string{DefaultHelper, defaultIPvlanHelper}
	}
	return []string{name}
}

// ensureHelper keeps the helper link with a /32 route to each of ips (and
// no other). A failure is logged and returns false: deckies serve the LAN
// without it, only checks from the worker need it.
func (p *pass) ensureHelper(ctx context.Context, ips []netip.Addr) bool {
	name := p.helperLink()
	if name == "" {
		return false
	}
	ch, err := p.a.d.LAN.EnsureHelper(hostnet.HelperSpec{Name: name, Parent: p.lan.Interface, Driver: p.net.Driver, HostIP: p.lan.HostAddrs[0], Deckies: ips, Owner: p.a.cfg.Host})
	if err != nil {
		p.log.WarnContext(ctx, "host helper not updated", "link", name, "err", err)
		return false
	}
	if ch.Created || len(ch.RoutesAdded)+len(ch.RoutesRemoved) > 0 {
		p.log.InfoContext(ctx, "host helper updated", "link", name, "created", ch.Created, "routes_added", len(ch.RoutesAdded), "routes_removed", len(ch.RoutesRemoved))
	}
	return true
}

// runningBases are the decoy-network addresses of this agent's running
// base containers.
func (p *pass) runningBases(cs []engine.Container) []netip.Addr {
	var ips []netip.Addr
	for _, c := range cs {
		if c.Owner() == p.a.cfg.Host && c.Labels[engine.LabelRole] == engine.RoleBase && c.State == "running" {
			if ip := c.Networks[p.net.Name]; ip.IsValid() {
				ips = append(ips, ip)
			}
		}
	}
	return ips
}

// portChecker is what checks declared ports from the worker: Deps.Ports
// when set, else a DialChecker bound to the helper link; nil without a
// helper link (no LAN check then: warned once).
func (p *pass) portChecker(ctx context.Context) apply.PortChecker {
	a := p.a
	if a.d.Ports != nil {
		return a.d.Ports
	}
	link := p.helperLink()
	if link == "" {
		if !a.warnedNoCheck {
			a.warnedNoCheck = true
			p.log.WarnContext(ctx, "no host helper link: deckies are not checked from the LAN (declared ports, identity drift); set --helper to check them")
		}
		return nil
	}
	return apply.DialChecker{Timeout: a.cfg.LANCheckTimeout, Device: link}
}

// knocking returns pc knocking at ports instead of dialing them when pc
// is the helper link's DialChecker and the LAN can knock (PortKnocker),
// and a function that closes the knocker; else pc as it is. Knocks are
// half-open handshakes: the decoys' services are not woken by the checks
// and do not log them as visits. Without a knocker (no CAP_NET_RAW) the
// checks dial, as warned once.
func (p *pass) knocking(ctx context.Context, pc apply.PortChecker) (apply.PortChecker, func()) {
	a := p.a
	kn, ok := a.d.LAN.(PortKnocker)
	dc, isDial := pc.(apply.DialChecker)
	if !ok || !isDial || dc.Device == "" || len(p.lan.HostAddrs) == 0 {
		return pc, func() {}
	}
	k, err := kn.OpenKnocker(dc.Device, p.lan.HostAddrs[0])
	if err != nil {
		if !a.warnedNoKnock {
			a.warnedNoKnock = true
			p.log.WarnContext(ctx, "LAN checks dial the deckies' ports (their services see each check): cannot knock", "err", err)
		}
		return pc, func() {}
	}
	dc.Knock = func(ctx context.Context, addr netip.AddrPort) error { return k.Knock(ctx, addr, knockResend) }
	return dc, func() { _ = k.Close() }
}

// identity checks, on a full pass, each decky running exactly as desired
// the way the LAN sees it (apply.CheckIdentity): its address answers ARP
// from the helper link with its own MAC, and its declared ports accept
// connections (knocked at: pass.knocking). Each drift is a lifecycle
// event (OpDrift, failed, what differed). A drift the decky can be put right from is repaired in this
// same pass: the change set is planned again with it marked drifted, so
// the decky is recreated (a repair event follows). Another machine
// answering for the address is reported only, once while it lasts.
// Nothing is concluded when the check itself fails.
func identity(ctx context.Context, p *pass) error {
	a := p.a
	if !p.full || a.cfg.ReadOnly {
		return nil
	}
	specs := map[string]*apply.DeckySpec{}
	for _, s := range p.specs {
		specs[s.Name] = s
	}
	var ids []apply.IdentityDecky
	for _, e := range p.res.Changes.Entries {
		if s := specs[e.Decky]; e.Action == apply.Unchanged && s != nil {
			id := apply.IdentityOf(s)
			if p.net.Driver == desired.DriverIPvlan {
				id.MAC = "" // every ipvlan decky answers with the parent NIC's MAC
			}
			ids = append(ids, id)
		}
	}
	pc := p.portChecker(ctx)
	if len(ids) == 0 || pc == nil {
		return nil
	}
	in := apply.IdentityInput{Deckies: ids, Ports: pc}
	var arpTime time.Duration // how long the ARP round took, for the debug log
	if link := p.helperLink(); link != "" {
		// The helper link reaches running deckies only through its /32
		// routes: without them every decky would look drifted.
		if !p.ensureHelper(ctx, p.runningBases(p.observed)) {
			p.log.WarnContext(ctx, "identity drift check skipped: the host helper link is not ready")
			return nil
		}
		src := p.lan.HostAddrs[0]
		var done func()
		in.Ports, done = p.knocking(ctx, pc)
		defer done()
		if r, ok := a.d.LAN.(ARPResolver); ok {
			// Each macvlan decky is asked at its own MAC, and the rest of
			// the LAN by a broadcast on the NIC: a broadcast from the
			// helper would be copied to every decky on the worker.
			expect := map[netip.Addr]net.HardwareAddr{}
			for _, id := range ids {
				if mac, err := net.ParseMAC(id.MAC); err == nil {
					expect[id.IP] = mac
				}
			}
			in.Resolver = apply.ResolverFunc(func(ctx context.Context, targets []netip.Addr) (map[netip.Addr][]net.HardwareAddr, error) {
				t0 := time.Now()
				defer func() { arpTime = time.Since(t0) }()
				return r.Resolve(ctx, hostnet.Query{Iface: link, Src: src, Targets: targets, Expect: expect, Parent: p.lan.Interface})
			})
		}
	}
	// Each port gets the LAN check's deadline; the ARP round and the
	// dials of all deckies run within it, with room to spare.
	cctx, cancel := context.WithTimeout(ctx, a.cfg.LANCheckTimeout+30*time.Second)
	defer cancel()
	t0 := time.Now()
	drifts, err := apply.CheckIdentity(cctx, in)
	p.log.DebugContext(ctx, "identity check", "deckies", len(ids), "drifts", len(drifts), "arp_ms", ms(arpTime), "ports_ms", ms(time.Since(t0)-arpTime))
	if err != nil {
		p.log.WarnContext(ctx, "identity drift check incomplete", "err", err)
	}
	seen := map[string]bool{}
	repair := map[string]bool{}
	var events []report.Event
	for _, d := range drifts {
		seen[d.Decky] = true
		what := strings.Join(d.What, "; ")
		note := "repaired in this pass: the decky is recreated"
		if d.Repair {
			repair[d.Decky] = true
		} else {
			note = "reported only: another machine answers for the decky's address; the agent does not fight over it"
			if a.reportedDrift[d.Decky] == what {
				continue // still the same: reported once while it lasts
			}
			a.reportedDrift[d.Decky] = what
		}
		p.log.WarnContext(ctx, "decky drifted on the LAN", "decky", d.Decky, "drift", what, "repair", d.Repair)
		events = append(events, report.Event{DeckyName: d.Decky, Operation: OpDrift, Status: apply.FailedSt, Error: what, Note: note,
			Commit: p.rev.Commit, ConfigHash: specs[d.Decky].Hash, CompletedAt: a.now().UTC()})
	}
	if err == nil {
		for name := range a.reportedDrift {
			if !seen[name] {
				delete(a.reportedDrift, name)
			}
		}
	}
	a.queue(ctx, events)
	p.driftEvents = events
	if len(repair) > 0 {
		p.diffIn.Drifted = func(d string) bool { return repair[d] }
		p.res.Changes = apply.Diff(p.diffIn)
	}
	return nil
}
