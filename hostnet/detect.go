package hostnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/decnet/pull-agent/relocalize"
)

// DetectError explains why the LAN could not be detected and which
// setting fixes it.
type DetectError struct {
	Problem string
	Fix     string
}

func (e *DetectError) Error() string { return e.Problem + "; " + e.Fix }

const fixInterface = "name the decoy interface with --interface (PULL_AGENT_INTERFACE) or network.interface in the host file"

// Detector reads the network through one netlink handle, by default the
// agent's own network namespace.
type Detector struct {
	h *netlink.Handle
}

// NewDetector returns a Detector for the current network namespace.
func NewDetector() (*Detector, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("failed to open netlink: %w", err)
	}
	return &Detector{h: h}, nil
}

// NewDetectorAt returns a Detector for the named network namespace
// (/var/run/netns/<name>); tests use it to read a simulated host.
func NewDetectorAt(nsName string) (*Detector, error) {
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return nil, fmt.Errorf("failed to open network namespace %s: %w", nsName, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("failed to open netlink in %s: %w", nsName, err)
	}
	return &Detector{h: h}, nil
}

// Close releases the netlink handle.
func (d *Detector) Close() { d.h.Close() }

// Options are the operator's overrides; zero values mean "detect".
type Options struct {
	Interface string     // decoy interface; "" or "auto" = the default-route interface
	Gateway   netip.Addr // used when the interface has no default route
}

// Detect returns the decoy LAN. Netlink queries are local and do not block,
// so ctx is only checked before starting.
func (d *Detector) Detect(ctx context.Context, opt Options) (relocalize.LAN, error) {
	if err := ctx.Err(); err != nil {
		return relocalize.LAN{}, err
	}
	routes, err := d.defaultRoutes()
	if err != nil {
		return relocalize.LAN{}, err
	}
	var link netlink.Link
	var gw netip.Addr
	if opt.Interface == "" || opt.Interface == "auto" {
		link, gw, err = d.pickDefault(routes)
		if err != nil {
			return relocalize.LAN{}, err
		}
	} else {
		link, err = d.h.LinkByName(opt.Interface)
		if err != nil {
			return relocalize.LAN{}, &DetectError{
				Problem: fmt.Sprintf("interface %q does not exist", opt.Interface),
				Fix:     "fix --interface (PULL_AGENT_INTERFACE) or network.interface in the host file",
			}
		}
		gw = gatewayOn(routes, link.Attrs().Index)
	}
	lan, err := d.addresses(link)
	if err != nil {
		return relocalize.LAN{}, err
	}
	if !gw.IsValid() && opt.Gateway.IsValid() {
		gw = opt.Gateway
	}
	switch {
	case !gw.IsValid():
		return relocalize.LAN{}, &DetectError{
			Problem: fmt.Sprintf("interface %s has no IPv4 default route, so its gateway is unknown", lan.Interface),
			Fix:     "set network.gateway in the host file or --gateway (PULL_AGENT_GATEWAY)",
		}
	case !lan.Subnet.Contains(gw):
		return relocalize.LAN{}, &DetectError{
			Problem: fmt.Sprintf("gateway %s is not on %s's subnet %s", gw, lan.Interface, lan.Subnet),
			Fix:     "set network.gateway in the host file or --gateway (PULL_AGENT_GATEWAY)",
		}
	}
	lan.Gateway = gw
	return lan, nil
}

type defRoute struct {
	link   int
	gw     netip.Addr
	metric int
}

func (d *Detector) defaultRoutes() ([]defRoute, error) {
	rs, err := d.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("failed to list routes: %w", err)
	}
	var out []defRoute
	for _, r := range rs {
		if r.Dst != nil && !(r.Dst.IP.IsUnspecified() && maskBits(r.Dst.Mask) == 0) {
			continue
		}
		if len(r.MultiPath) > 0 {
			for _, nh := range r.MultiPath {
				out = append(out, defRoute{link: nh.LinkIndex, gw: addrOf(nh.Gw), metric: r.Priority})
			}
			continue
		}
		out = append(out, defRoute{link: r.LinkIndex, gw: addrOf(r.Gw), metric: r.Priority})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].metric < out[j].metric })
	return out, nil
}

func maskBits(m net.IPMask) int {
	ones, _ := m.Size()
	return ones
}

func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// pickDefault chooses the interface of the best default route; routes of
// equal metric on different interfaces are ambiguous.
func (d *Detector) pickDefault(routes []defRoute) (netlink.Link, netip.Addr, error) {
	if len(routes) == 0 {
		return nil, netip.Addr{}, &DetectError{Problem: "this host has no IPv4 default route", Fix: fixInterface}
	}
	best := routes[0]
	var tied []string
	for _, r := range routes {
		if r.metric == best.metric && r.link != best.link {
			tied = append(tied, d.linkName(r.link))
		}
	}
	if len(tied) > 0 {
		names := append([]string{d.linkName(best.link)}, tied...)
		return nil, netip.Addr{}, &DetectError{
			Problem: fmt.Sprintf("default routes of equal metric on several interfaces (%s)", strings.Join(names, ", ")),
			Fix:     fixInterface,
		}
	}
	link, err := d.h.LinkByIndex(best.link)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("failed to read interface %d of the default route: %w", best.link, err)
	}
	return link, best.gw, nil
}

func (d *Detector) linkName(index int) string {
	if l, err := d.h.LinkByIndex(index); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprintf("#%d", index)
}

// gatewayOn returns the gateway of the best default route through the
// given interface: another NIC's gateway is never used (DECNET bug N4).
func gatewayOn(routes []defRoute, link int) netip.Addr {
	for _, r := range routes {
		if r.link == link && r.gw.IsValid() {
			return r.gw
		}
	}
	return netip.Addr{}
}

// addresses reads the link's primary IPv4 network and every address the
// worker holds in it.
func (d *Detector) addresses(link netlink.Link) (relocalize.LAN, error) {
	name := link.Attrs().Name
	addrs, err := d.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return relocalize.LAN{}, fmt.Errorf("failed to list addresses of %s: %w", name, err)
	}
	var primary *netlink.Addr
	for i := range addrs {
		a := &addrs[i]
		if a.Flags&unix.IFA_F_SECONDARY != 0 || a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		primary = a
		break
	}
	if primary == nil {
		return relocalize.LAN{}, &DetectError{
			Problem: fmt.Sprintf("interface %s has no global IPv4 address", name),
			Fix:     "give it one, or " + fixInterface,
		}
	}
	pa := addrOf(primary.IP)
	subnet := netip.PrefixFrom(pa, maskBits(primary.Mask)).Masked()
	lan := relocalize.LAN{Interface: name, Subnet: subnet}
	for _, a := range addrs {
		if ip := addrOf(a.IP); subnet.Contains(ip) {
			lan.HostAddrs = append(lan.HostAddrs, ip)
		}
	}
	return lan, nil
}

// IsDetectError reports whether err is a detection problem the operator
// fixes with an override (as opposed to a netlink failure).
func IsDetectError(err error) bool {
	var de *DetectError
	return errors.As(err, &de)
}
