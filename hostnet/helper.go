package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HelperSpec is the host-side link that lets the worker itself reach its
// deckies (DECNET's decnet_macvlan0): a macvlan (or ipvlan L2) child of the
// decoy interface carrying the worker's own address as /32, with one /32
// route per decky address. A macvlan parent cannot talk to its own
// children, so without it the worker (and DECNET's sniffer, which listens
// on this link) cannot see its deckies.
type HelperSpec struct {
	Name    string // e.g. decnet_macvlan0
	Parent  string
	Driver  string // macvlan or ipvlan
	HostIP  netip.Addr
	Deckies []netip.Addr
	Owner   string // recorded as the link's alias; other links are never touched
}

// HelperChange says what EnsureHelper did.
type HelperChange struct {
	Created       bool
	RoutesAdded   []netip.Addr
	RoutesRemoved []netip.Prefix
}

func helperAlias(owner string) string { return "pull-agent:" + owner }

// ErrHelperNotOwned: a link of the helper's name exists but was not made
// by this agent.
var ErrHelperNotOwned = errors.New("host helper link exists and is not owned by this agent")

// EnsureHelper creates or repairs the helper link, idempotently: run every
// pass it restores a link lost at reboot and removes routes to addresses
// that are no longer deckies' (DECNET added one covering route per deploy
// and never removed the old ones, bug N7; one /32 per decky also avoids
// capturing traffic to LAN machines inside a covering range, bug N8).
func (d *Detector) EnsureHelper(spec HelperSpec) (HelperChange, error) {
	var ch HelperChange
	parent, err := d.h.LinkByName(spec.Parent)
	if err != nil {
		return ch, fmt.Errorf("host helper: parent %s: %w", spec.Parent, err)
	}
	link, err := d.h.LinkByName(spec.Name)
	if err == nil {
		if link.Attrs().Alias != helperAlias(spec.Owner) {
			return ch, fmt.Errorf("%w: %s (alias %q); remove it or choose another --helper name", ErrHelperNotOwned, spec.Name, link.Attrs().Alias)
		}
		if link.Attrs().ParentIndex != parent.Attrs().Index || link.Type() != spec.Driver {
			if err := d.h.LinkDel(link); err != nil {
				return ch, fmt.Errorf("host helper: replacing %s: %w", spec.Name, err)
			}
			link = nil
		}
	} else {
		link = nil
	}
	if link == nil {
		attrs := netlink.LinkAttrs{Name: spec.Name, ParentIndex: parent.Attrs().Index}
		var nl netlink.Link = &netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}
		if spec.Driver == "ipvlan" {
			nl = &netlink.IPVlan{LinkAttrs: attrs, Mode: netlink.IPVLAN_MODE_L2}
		}
		if err := d.h.LinkAdd(nl); err != nil {
			return ch, fmt.Errorf("host helper: creating %s on %s: %w", spec.Name, spec.Parent, err)
		}
		if link, err = d.h.LinkByName(spec.Name); err != nil {
			return ch, err
		}
		if err := d.h.LinkSetAlias(link, helperAlias(spec.Owner)); err != nil {
			_ = d.h.LinkDel(link)
			return ch, fmt.Errorf("host helper: marking %s: %w", spec.Name, err)
		}
		ch.Created = true
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: spec.HostIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := d.h.AddrReplace(link, addr); err != nil {
		return ch, fmt.Errorf("host helper: address on %s: %w", spec.Name, err)
	}
	if err := d.h.LinkSetUp(link); err != nil {
		return ch, fmt.Errorf("host helper: bringing %s up: %w", spec.Name, err)
	}
	want := map[netip.Prefix]bool{}
	for _, a := range spec.Deckies {
		want[netip.PrefixFrom(a, 32)] = true
	}
	routes, err := d.h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return ch, err
	}
	have := map[netip.Prefix]bool{}
	for _, r := range routes {
		if r.Dst == nil || r.Table != unix.RT_TABLE_MAIN {
			continue
		}
		p := prefixOf(r.Dst)
		if want[p] {
			have[p] = true
			continue
		}
		rt := r
		if err := d.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			return ch, fmt.Errorf("host helper: removing route %s: %w", p, err)
		}
		ch.RoutesRemoved = append(ch.RoutesRemoved, p)
	}
	for _, a := range spec.Deckies {
		p := netip.PrefixFrom(a, 32)
		if have[p] {
			continue
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK, Src: spec.HostIP.AsSlice()}
		if err := d.h.RouteReplace(r); err != nil {
			return ch, fmt.Errorf("host helper: route to %s: %w", a, err)
		}
		ch.RoutesAdded = append(ch.RoutesAdded, a)
	}
	sort.Slice(ch.RoutesAdded, func(i, j int) bool { return ch.RoutesAdded[i].Less(ch.RoutesAdded[j]) })
	return ch, nil
}

// RemoveHelper deletes the helper link (and with it its routes) if this
// agent owns it.
func (d *Detector) RemoveHelper(name, owner string) error {
	link, err := d.h.LinkByName(name)
	if err != nil {
		return nil // already gone
	}
	if link.Attrs().Alias != helperAlias(owner) {
		return fmt.Errorf("%w: %s", ErrHelperNotOwned, name)
	}
	return d.h.LinkDel(link)
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}
