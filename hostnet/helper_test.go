package hostnet

import (
	"errors"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/decnet/pull-agent/internal/testlan"
)

func routesOn(t *testing.T, d *Detector, name string) []string {
	t.Helper()
	link, err := d.h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := d.h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.Dst != nil {
			out = append(out, prefixOf(r.Dst).String())
		}
	}
	sort.Strings(out)
	return out
}

func TestHostHelper(t *testing.T) {
	l := testlan.New(t, testlan.Options{})
	d, err := NewDetector()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	name := "hl" + testlan.Suffix()
	t.Cleanup(func() { _ = d.RemoveHelper(name, "w") })
	a, b, c := l.Peer.Next(), l.Peer.Next().Next(), l.Peer.Next().Next().Next()

	ch, err := d.EnsureHelper(HelperSpec{Name: name, Parent: l.Parent, Driver: "macvlan", HostIP: l.Host, Deckies: []netip.Addr{a, b}, Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if !ch.Created || len(ch.RoutesAdded) != 2 {
		t.Fatalf("first ensure: %+v", ch)
	}
	if got := routesOn(t, d, name); strings.Join(got, " ") != a.String()+"/32 "+b.String()+"/32" {
		t.Fatalf("routes = %v", got)
	}
	link, _ := d.h.LinkByName(name)
	if link.Type() != "macvlan" || link.Attrs().Alias != "pull-agent:w" || link.Attrs().OperState == netlink.OperDown {
		t.Fatalf("link: type %s alias %q state %s", link.Type(), link.Attrs().Alias, link.Attrs().OperState)
	}

	// Idempotent; a decky range change drops the old route, adds the new.
	ch, err = d.EnsureHelper(HelperSpec{Name: name, Parent: l.Parent, Driver: "macvlan", HostIP: l.Host, Deckies: []netip.Addr{b, c}, Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Created || len(ch.RoutesAdded) != 1 || ch.RoutesAdded[0] != c || len(ch.RoutesRemoved) != 1 || ch.RoutesRemoved[0].Addr() != a {
		t.Fatalf("second ensure: %+v", ch)
	}
	if got := routesOn(t, d, name); strings.Join(got, " ") != b.String()+"/32 "+c.String()+"/32" {
		t.Fatalf("routes = %v", got)
	}

	// DECNET's leaked covering route on the link is cleaned up too.
	if out, err := exec.Command("ip", "route", "add", l.Subnet.String(), "dev", name, "metric", "77").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if _, err := d.EnsureHelper(HelperSpec{Name: name, Parent: l.Parent, Driver: "macvlan", HostIP: l.Host, Deckies: []netip.Addr{b, c}, Owner: "w"}); err != nil {
		t.Fatal(err)
	}
	if got := routesOn(t, d, name); len(got) != 2 {
		t.Fatalf("covering route not removed: %v", got)
	}

	// Deleted behind the agent's back (a reboot): restored.
	_ = d.h.LinkDel(link)
	ch, err = d.EnsureHelper(HelperSpec{Name: name, Parent: l.Parent, Driver: "macvlan", HostIP: l.Host, Deckies: []netip.Addr{b}, Owner: "w"})
	if err != nil || !ch.Created {
		t.Fatalf("restore: %+v %v", ch, err)
	}

	// Another agent's link of that name is never touched.
	_, err = d.EnsureHelper(HelperSpec{Name: name, Parent: l.Parent, Driver: "macvlan", HostIP: l.Host, Deckies: []netip.Addr{b}, Owner: "other"})
	if !errors.Is(err, ErrHelperNotOwned) {
		t.Fatalf("want ErrHelperNotOwned, got %v", err)
	}
	if err := d.RemoveHelper(name, "other"); !errors.Is(err, ErrHelperNotOwned) {
		t.Fatalf("RemoveHelper of another owner's link: %v", err)
	}
}
