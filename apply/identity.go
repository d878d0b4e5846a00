package apply

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	stdsync "sync"

	"github.com/decnet/pull-agent/desired"
)

// Resolver asks the LAN which MACs answer ARP for addresses, from the
// worker's side of the decoy LAN (the host helper link). The caller binds
// the link and the sender address: hostnet.Resolve(ctx, helper, workerIP,
// targets, opt) has this shape. Targets nobody answered for are absent;
// two or more MACs for one target mean two machines claim it.
type Resolver interface {
	Resolve(ctx context.Context, targets []netip.Addr) (map[netip.Addr][]net.HardwareAddr, error)
}

// ResolverFunc adapts a function to [Resolver].
type ResolverFunc func(ctx context.Context, targets []netip.Addr) (map[netip.Addr][]net.HardwareAddr, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context, targets []netip.Addr) (map[netip.Addr][]net.HardwareAddr, error) {
	return f(ctx, targets)
}

// IdentityDecky is one running decky as the LAN should see it.
type IdentityDecky struct {
	Name string
	IP   netip.Addr
	// MAC is the stable derived MAC (relocalize.MAC); "" checks only that
	// one machine answers (ipvlan: every decky answers with the parent
	// NIC's MAC).
	MAC string
	// Services are the services whose TCP ports are checked (check: on).
	Services []IdentityService
}

// IdentityService is one service's declared ports.
type IdentityService struct {
	Service string
	Ports   []desired.Port // only TCP ports are dialed
}

// IdentityOf is the identity a rendered decky should show on the LAN:
// its address, its MAC, and the TCP ports of each service with the check
// on (the same ports the LAN check of an apply dials).
func IdentityOf(d *DeckySpec) IdentityDecky {
	id := IdentityDecky{Name: d.Name, IP: d.IP, MAC: d.MAC}
	for _, s := range d.Services {
		if s.Check && hasTCP(s.Ports) {
			id.Services = append(id.Services, IdentityService{Service: s.Service, Ports: tcpOnly(s.Ports)})
		}
	}
	return id
}

// IdentityInput is what [CheckIdentity] checks, and with what.
type IdentityInput struct {
	Deckies []IdentityDecky
	// Resolver checks address and MAC; nil checks ports only.
	Resolver Resolver
	// Ports checks the declared ports; nil checks address and MAC only.
	Ports PortChecker
}

// Drift is what differs between a running decky and how the LAN sees it.
type Drift struct {
	Decky string
	// What lists each difference, in words for an operator ("mac
	// 02:..:.. answers for 198.51.100.12, want 02:..:..").
	What []string
	// Repair is true when recreating the decky puts it right: it lost its
	// address, answers with another MAC, or a port stopped answering.
	// False when a second machine answers for the decky's address:
	// recreating the decky would not remove it, and fighting over an
	// address disturbs the LAN, so it is reported only. A single other
	// MAC is taken for the decky's own, changed by hand: if it was another
	// machine, the recreated decky answers too, and the next check sees
	// two MACs (reported only), so the agent never loops on it.
	Repair bool
}

// Error returns the decky and what differed, for a drift lifecycle event.
func (d Drift) Error() string {
	return fmt.Sprintf("decky %s drifted: %s", d.Decky, strings.Join(d.What, "; "))
}

// CheckIdentity checks each decky as the LAN sees it: that its address
// answers ARP with exactly its own MAC, then that each declared TCP port
// accepts a connection. Ports are dialed only when the address is healthy
// (or with no Resolver): a decky that lost its address would only time
// out, and with another machine on the address the dial might reach it.
// It returns the deckies that drifted, in input order. When the ARP round
// fails or ctx ends, nothing can be concluded and no drift is claimed. A
// port check that fails for another reason than a closed port is not a
// drift either: it is returned in the error, next to the drifts found.
func CheckIdentity(ctx context.Context, in IdentityInput) ([]Drift, error) {
	arp := map[netip.Addr][]net.HardwareAddr{}
	if in.Resolver != nil && len(in.Deckies) > 0 {
		targets := make([]netip.Addr, 0, len(in.Deckies))
		for _, d := range in.Deckies {
			targets = append(targets, d.IP)
		}
		var err error
		if arp, err = in.Resolver.Resolve(ctx, targets); err != nil {
			return nil, fmt.Errorf("identity check: cannot ask the LAN who answers for the deckies' addresses: %w", err)
		}
	}
	drifts := make([]Drift, len(in.Deckies))
	errs := make([]error, len(in.Deckies))
	var wg stdsync.WaitGroup
	for i, d := range in.Deckies {
		drifts[i] = Drift{Decky: d.Name, Repair: true}
		if in.Resolver != nil {
			what, repair := arpDrift(d, arp[d.IP])
			drifts[i].What, drifts[i].Repair = what, repair
		}
		if in.Ports == nil || len(drifts[i].What) > 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			drifts[i].What, errs[i] = portDrift(ctx, in.Ports, d)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity check: %w", err)
	}
	var out []Drift
	for _, d := range drifts {
		if len(d.What) > 0 {
			out = append(out, d)
		}
	}
	return out, errors.Join(errs...)
}

// arpDrift compares the MACs answering for a decky's address with its own.
func arpDrift(d IdentityDecky, macs []net.HardwareAddr) (what []string, repair bool) {
	want := normMAC(d.MAC)
	switch {
	case len(macs) == 0:
		return []string{fmt.Sprintf("address %s does not answer ARP", d.IP)}, true
	case len(macs) == 1 && (want == "" || normMAC(macs[0].String()) == want):
		return nil, true
	case len(macs) == 1:
		return []string{fmt.Sprintf("mac %s answers for %s, want %s", macs[0], d.IP, want)}, true
	}
	parts := make([]string, len(macs))
	for i, m := range macs {
		parts[i] = m.String()
		if want != "" && normMAC(m.String()) == want {
			parts[i] += " (this decky's)"
		}
	}
	w := fmt.Sprintf("%d MACs answer for %s: %s; another machine claims the address", len(macs), d.IP, strings.Join(parts, ", "))
	if want != "" {
		w += " (want only " + want + ")"
	}
	return []string{w}, false
}

// portDrift dials each service's TCP ports and names those that do not
// answer, with the service.
func portDrift(ctx context.Context, pc PortChecker, d IdentityDecky) ([]string, error) {
	var (
		what []string
		errs []error
	)
	for _, s := range d.Services {
		tcp := tcpOnly(s.Ports)
		if len(tcp) == 0 {
			continue
		}
		err := pc.CheckPorts(ctx, d.IP, tcp)
		if err == nil {
			continue
		}
		if pe, ok := errors.AsType[*PortsClosedError](err); ok {
			for _, p := range pe.Ports {
				w := fmt.Sprintf("%s (%s) does not accept connections", PortText(p), s.Service)
				if last := pe.Last[p]; last != nil {
					w += " (" + dialReason(last) + ")"
				}
				what = append(what, w)
			}
			continue
		}
		errs = append(errs, fmt.Errorf("identity check of decky %s, service %s: %w", d.Name, s.Service, err))
	}
	return what, errors.Join(errs...)
}

// normMAC returns a MAC in net.HardwareAddr's lower-case form, or s as is.
func normMAC(s string) string {
	if m, err := net.ParseMAC(s); err == nil {
		return m.String()
	}
	return s
}
