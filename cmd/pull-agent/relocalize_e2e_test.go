package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/master"
	"github.com/decnet/pull-agent/relocalize"
)

// otherDocRange returns a documentation /24 that does not hold the LAN.
func otherDocRange(lan netip.Prefix) netip.Prefix {
	for _, s := range []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"} {
		if p := netip.MustParsePrefix(s); !p.Overlaps(lan) {
			return p
		}
	}
	panic("unreachable")
}

func TestEndToEndRelocalize(t *testing.T) {
	w := newWorld(t)
	office := otherDocRange(w.lan.Subnet)
	pinned := office.Addr().Next().Next().Next().Next() // .4 of the office LAN
	hostFile := func(nmapOS string) string {
		return fmt.Sprintf(`# written for the office LAN, applied on another one
network:
  subnet: %s
  gateway: %s
deckies:
  - name: %s
    services: [smtp]
    ip: %s
    nmap_os: %s
  - name: %s
    services: [http]
`, office, office.Addr().Next(), w.name("mail"), pinned, nmapOS, w.name("web"))
	}
	// A machine on the LAN already uses the first address allocation would pick.
	busy := w.lan.Peer.Next()
	w.lan.AddPeerAddr(t, busy)
	w.repo.Write(map[string]string{"hosts/" + w.host + ".yaml": hostFile("linux")})
	c1 := w.repo.Commit("deckies for the office LAN")

	// plan says where each decky goes and why.
	var planOut strings.Builder
	code := run(context.Background(), []string{"plan", "--repo", w.repo.FileURL(), "--host", w.host, "--state-dir", w.state,
		"--interface", w.lan.Parent, "--gateway", w.lan.Gateway.String(), "--log-level", "error"}, &planOut, &planOut)
	if code != 2 {
		t.Fatalf("plan with work to do must exit 2, got %d:\n%s", code, planOut.String())
	}
	// The allocator's first picks are the LAN machine's own address and the
	// extra one it holds: both answer ARP, so both deckies move on.
	mailLine := lineWith(planOut.String(), w.name("mail")+" ")
	if !strings.Contains(mailLine, "moved-after-conflict") || !strings.Contains(mailLine, "is in use on the LAN") ||
		!strings.Contains(mailLine, "repo pins "+pinned.String()) || !strings.Contains(planOut.String(), busy.String()+" is in use on the LAN") {
		t.Fatalf("plan does not explain the mail decky's address:\n%s", planOut.String())
	}

	if code, out := w.once(); code != 0 {
		t.Fatalf("once: exit %d\n%s", code, out)
	}
	cs := w.owned()
	mailIP, webIP := w.addr(cs[w.name("mail")]), w.addr(cs[w.name("web")])
	for _, ip := range []netip.Addr{mailIP, webIP} {
		if !w.lan.Subnet.Contains(ip) || ip == busy || ip == w.lan.Peer || ip == w.lan.Host || ip == w.lan.Gateway {
			t.Fatalf("decky address %s is not a free address of the local LAN %s", ip, w.lan.Subnet)
		}
	}
	if b, err := w.lan.WaitBanner(mailIP, 25, "", 10*time.Second); err != nil || !strings.HasPrefix(b, "220 ") {
		t.Fatalf("the relocalized decky does not answer on %s: %q %v", mailIP, b, err)
	}
	rows, _ := w.store.Events(context.Background(), master.EventFilter{Host: w.host, Decky: w.name("mail")})
	if len(rows) != 1 || rows[0].Commit != c1 || !strings.Contains(rows[0].Note, "not on the local subnet") || !strings.Contains(rows[0].Note, "is in use on the LAN") {
		t.Fatalf("the report does not say the decky was relocalized and moved: %+v", rows)
	}

	// The LAN sees the decky's derived, stable MAC.
	wantMAC := relocalize.MAC(w.host, w.name("mail"))
	if got := w.neighbourMAC(t, mailIP); got != wantMAC {
		t.Fatalf("LAN neighbour entry for %s = %q, want %s", mailIP, got, wantMAC)
	}

	// The worker itself reaches its deckies through the host helper.
	conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(webIP, 80).String(), 3*time.Second)
	if err != nil {
		t.Fatalf("host-to-decky through the helper link: %v", err)
	}
	conn.Close()

	// Recreating the base (new OS persona) keeps the address and the MAC.
	baseBefore := cs[w.name("mail")].ID
	w.repo.Write(map[string]string{"hosts/" + w.host + ".yaml": hostFile("windows")})
	w.repo.Commit("mail decky looks like windows")
	if code, out := w.once(); code != 0 {
		t.Fatalf("once: exit %d\n%s", code, out)
	}
	cs = w.owned()
	if cs[w.name("mail")].ID == baseBefore || w.addr(cs[w.name("mail")]) != mailIP {
		t.Fatalf("base not recreated in place: id %s->%s addr %s->%s", baseBefore[:12], cs[w.name("mail")].ID[:12], mailIP, w.addr(cs[w.name("mail")]))
	}
	if b, err := w.lan.WaitBanner(mailIP, 25, "", 10*time.Second); err != nil || !strings.HasPrefix(b, "220 ") {
		t.Fatalf("after base recreation the service must answer again (not stranded in the old namespace): %q %v", b, err)
	}
	if got := w.neighbourMAC(t, mailIP); got != wantMAC {
		t.Fatalf("MAC changed on recreation: %s -> %s", wantMAC, got)
	}

	// The LAN's gateway changes: the agent replaces its network and brings
	// every decky back on it, at the same addresses.
	webBase := cs[w.name("web")].ID
	newGW := desired.Broadcast(w.lan.Subnet).Prev()
	if code, out := w.once("--gateway", newGW.String()); code != 0 {
		t.Fatalf("once after a gateway change: exit %d\n%s", code, out)
	}
	cs = w.owned()
	if cs[w.name("web")].ID == webBase || w.addr(cs[w.name("web")]) != webIP {
		t.Fatalf("decky not recreated on the replaced network: %s", names(cs))
	}
	if b, err := w.lan.WaitBanner(webIP, 80, "GET / HTTP/1.0\r\n\r\n", 10*time.Second); err != nil || b != "HTTP/1.1 200 OK" {
		t.Fatalf("decky unreachable after the network was replaced: %q %v", b, err)
	}
}

func lineWith(text, sub string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// neighbourMAC asks the LAN machine which MAC answers for ip.
func (w *world) neighbourMAC(t *testing.T, ip netip.Addr) string {
	t.Helper()
	if _, err := w.lan.Banner(ip, 25, ""); err != nil { // any traffic fills the neighbour table
		_, _ = w.lan.Banner(ip, 80, "GET / HTTP/1.0\r\n\r\n")
	}
	out, err := exec.Command("ip", "-n", w.lan.NS, "neigh", "show", ip.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ip neigh: %v %s", err, out)
	}
	f := strings.Fields(string(out))
	for i, x := range f {
		if x == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}
