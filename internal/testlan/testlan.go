package testlan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run in CI, where skipping is failing.
func InCI() bool { return os.Getenv("CI") == "true" || os.Getenv("CI") == "1" }

// Need skips the test outside CI, or fails it in CI, when ok is false.
func Need(t testing.TB, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("%s is required in CI but missing", what)
	}
	t.Skipf("skipping: %s is not available (runs in CI)", what)
}

// RequireRoot gates tests that create links and namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	_, err := exec.LookPath("ip")
	Need(t, os.Geteuid() == 0 && err == nil, "root with iproute2 (for veth and netns)")
}

// RequireDocker gates tests that need a running Docker Engine and returns a
// client for it.
func RequireDocker(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = c.Ping(ctx)
	}
	Need(t, err == nil, fmt.Sprintf("a running Docker Engine (%v)", err))
	t.Cleanup(func() { c.Close() })
	return c
}

// LAN is one simulated segment.
type LAN struct {
	Parent  string       // root-namespace end of the veth: the macvlan parent
	NS      string       // network namespace playing a LAN machine
	Subnet  netip.Prefix // e.g. 198.51.100.0/24
	Gateway netip.Addr   // .1; nobody holds it (nothing must leave the machine)
	Host    netip.Addr   // the worker's address on Parent (.2)
	Peer    netip.Addr   // the LAN machine's address in NS (.3)

	// Busy are the extra addresses the LAN machine holds (Options.Busy and
	// AddPeerAddrs), lowest first; every one answers ARP.
	Busy []netip.Addr

	peerDev  string // the LAN machine's device holding Peer
	id       string
	ports    int
	machines int
}

// Options tune New.
type Options struct {
	// Subnet fixes the LAN's network; by default New picks a free /26 of
	// the documentation ranges that no other test (in any process) holds
	// and no Docker network or local interface overlaps, since Docker
	// refuses two networks with overlapping pools.
	Subnet string
	// DefaultRoute adds a default route via the gateway on Parent with a
	// metric high enough never to win over the machine's real one, so
	// detection can read the gateway from the route table.
	DefaultRoute bool
	// Bridge makes the LAN a switch (a bridge in the LAN machine's
	// namespace), so AddPort can attach more workers to the same segment.
	Bridge bool
	// Bits is the prefix length of a picked subnet, 24 to 26 (default 26):
	// a bigger LAN for tests that need more than 60 addresses.
	Bits int
	// Busy makes the LAN machine hold that many extra addresses, back to
	// back right after Peer (the bottom of an ip_pool-less allocation), as
	// on a dense office LAN; they are in LAN.Busy.
	Busy int
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Suffix returns a short random name part (interface names max 15 bytes).
func Suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates a LAN and registers its removal with t.Cleanup.
func New(t testing.TB, opt Options) *LAN {
	t.Helper()
	RequireRoot(t)
	if opt.Subnet == "" {
		bits := opt.Bits
		if bits == 0 {
			bits = 26
		}
		if bits < 24 || bits > 26 {
			t.Fatalf("testlan: Options.Bits %d is not 24, 25 or 26", bits)
		}
		opt.Subnet = freeSubnet(t, bits).String()
	}
	sn := netip.MustParsePrefix(opt.Subnet).Masked()
	for _, doc := range []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"} {
		if netip.MustParsePrefix(doc).Overlaps(sn) && netip.MustParsePrefix(doc).Bits() <= sn.Bits() {
			goto ok
		}
	}
	t.Fatalf("test LAN %s is outside the documentation ranges", sn)
ok:
	id := Suffix()
	l := &LAN{
		Parent:  "pa" + id,
		NS:      "pans" + id,
		Subnet:  sn,
		Gateway: sn.Addr().Next(),
	}
	l.Host = l.Gateway.Next()
	l.Peer = l.Host.Next()
	l.id = id
	peer := "pb" + id
	l.peerDev = peer
	bits := fmt.Sprint(sn.Bits())
	run(t, "ip", "netns", "add", l.NS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.NS).Run() })
	run(t, "ip", "link", "add", l.Parent, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", l.Parent).Run() })
	run(t, "ip", "link", "set", peer, "netns", l.NS)
	run(t, "ip", "addr", "add", l.Host.String()+"/"+bits, "dev", l.Parent)
	run(t, "ip", "link", "set", l.Parent, "up")
	if opt.Bridge {
		l.peerDev = "br" + id
		run(t, "ip", "-n", l.NS, "link", "add", l.peerDev, "type", "bridge")
		run(t, "ip", "-n", l.NS, "link", "set", peer, "master", l.peerDev)
		run(t, "ip", "-n", l.NS, "link", "set", l.peerDev, "up")
	}
	run(t, "ip", "-n", l.NS, "addr", "add", l.Peer.String()+"/"+bits, "dev", l.peerDev)
	run(t, "ip", "-n", l.NS, "link", "set", peer, "up")
	run(t, "ip", "-n", l.NS, "link", "set", "lo", "up")
	if opt.DefaultRoute {
		run(t, "ip", "route", "add", "default", "via", l.Gateway.String(), "dev", l.Parent, "metric", "4242")
	}
	if opt.Busy > 0 {
		l.AddPeerAddrs(t, l.Peer.Next(), opt.Busy)
	}
	return l
}

// AddPeerAddrs makes the LAN machine hold n more consecutive addresses
// from first on (live hosts back to back), and returns them.
func (l *LAN) AddPeerAddrs(t testing.TB, first netip.Addr, n int) []netip.Addr {
	t.Helper()
	var added []netip.Addr
	a := first
	for i := 0; i < n; i, a = i+1, a.Next() {
		if !l.Subnet.Contains(a) {
			t.Fatalf("testlan: %d addresses from %s do not fit in %s", n, first, l.Subnet)
		}
		l.AddPeerAddr(t, a)
		added = append(added, a)
	}
	return added
}

// AddMachine puts one more machine on the LAN: its own MAC, answering ARP
// for a alone (a macvlan in the LAN machine's namespace). The namespace
// answers ARP only on the device that holds the address asked for
// (arp_ignore=1), so every machine is seen with its own MAC.
func (l *LAN) AddMachine(t testing.TB, a netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	l.machines++
	dev := fmt.Sprintf("pm%s%d", l.id, l.machines)
	run(t, "ip", "netns", "exec", l.NS, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
	run(t, "ip", "-n", l.NS, "link", "add", dev, "link", l.peerDev, "address", mac.String(), "type", "macvlan", "mode", "bridge")
	run(t, "ip", "-n", l.NS, "addr", "add", fmt.Sprintf("%s/%d", a, l.Subnet.Bits()), "dev", dev)
	run(t, "ip", "-n", l.NS, "link", "set", dev, "up")
}

// AddSiblings puts n machines on the worker's own NIC, as Docker puts
// deckies there: macvlans in bridge mode on Parent, each with its own MAC
// and one address from first on, answering ARP for that address alone
// (arp_ignore=1). They share a namespace of their own, removed with the
// LAN. As with real deckies, every broadcast sent from a macvlan on Parent
// (the host helper link) is copied to each of them.
func (l *LAN) AddSiblings(t testing.TB, first netip.Addr, n int) map[netip.Addr]net.HardwareAddr {
	t.Helper()
	ns := l.SiblingNS()
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
	// No IPv6 on them: each link's address autoconfiguration and
	// multicast reports would be copied to every other (n*n frames) while
	// a test counts the frames an ARP round costs them.
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	out := make(map[netip.Addr]net.HardwareAddr, n)
	var root, inNS strings.Builder
	a := first
	for i := 0; i < n; i, a = i+1, a.Next() {
		if !l.Subnet.Contains(a) || a == l.Host || a == l.Peer || slices.Contains(l.Busy, a) {
			t.Fatalf("testlan: sibling address %s is outside %s or taken", a, l.Subnet)
		}
		dev := fmt.Sprintf("ps%s%d", l.id, i)
		mac := net.HardwareAddr{0x02, 0x5e, 0x00, 0x00, byte(i >> 8), byte(i)}
		out[a] = mac
		fmt.Fprintf(&root, "link add %s link %s address %s type macvlan mode bridge\nlink set %s netns %s\n", dev, l.Parent, mac, dev, ns)
		fmt.Fprintf(&inNS, "addr add %s/%d dev %s\nlink set %s up\n", a, l.Subnet.Bits(), dev, dev)
	}
	for _, b := range []struct {
		args []string
		cmds string
	}{
		{[]string{"ip", "-batch", "-"}, root.String()},
		{[]string{"ip", "-n", ns, "-batch", "-"}, inNS.String()},
	} {
		cmd := exec.Command(b.args[0], b.args[1:]...)
		cmd.Stdin = strings.NewReader(b.cmds)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("testlan: %s: %v\n%s", strings.Join(b.args, " "), err, o)
		}
	}
	return out
}

// SiblingNS is the namespace AddSiblings puts the worker's siblings in.
func (l *LAN) SiblingNS() string { return l.NS + "s" }

// AddPeerAddr makes the LAN machine hold one more address (an address a
// real machine already uses).
func (l *LAN) AddPeerAddr(t testing.TB, a netip.Addr) {
	t.Helper()
	run(t, "ip", "-n", l.NS, "addr", "add", fmt.Sprintf("%s/%d", a, l.Subnet.Bits()), "dev", l.peerDev)
	l.Busy = append(l.Busy, a)
	sort.Slice(l.Busy, func(i, j int) bool { return l.Busy[i].Less(l.Busy[j]) })
}

// PeerMAC returns the MAC the LAN machine answers ARP with for Peer and
// every address in Busy.
func (l *LAN) PeerMAC(t testing.TB) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := l.InNS(func() error {
		ifi, err := net.InterfaceByName(l.peerDev)
		if err == nil {
			mac = ifi.HardwareAddr
		}
		return err
	})
	if err != nil {
		t.Fatalf("testlan: MAC of %s: %v", l.peerDev, err)
	}
	return mac
}

// AddPort attaches another worker NIC to a Bridge LAN: a veth whose root
// end (returned) gets the address given and can be a macvlan parent.
func (l *LAN) AddPort(t testing.TB, hostAddr netip.Addr) string {
	t.Helper()
	if !strings.HasPrefix(l.peerDev, "br") {
		t.Fatal("AddPort needs a LAN made with Options.Bridge")
	}
	l.ports++
	root, peer := fmt.Sprintf("pp%s%d", l.id, l.ports), fmt.Sprintf("pq%s%d", l.id, l.ports)
	run(t, "ip", "link", "add", root, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", root).Run() })
	run(t, "ip", "link", "set", peer, "netns", l.NS)
	run(t, "ip", "-n", l.NS, "link", "set", peer, "master", l.peerDev)
	run(t, "ip", "-n", l.NS, "link", "set", peer, "up")
	run(t, "ip", "addr", "add", fmt.Sprintf("%s/%d", hostAddr, l.Subnet.Bits()), "dev", root)
	run(t, "ip", "link", "set", root, "up")
	return root
}

// InNS runs fn with the calling goroutine's OS thread in the LAN machine's
// namespace. Sockets created inside fn stay in that namespace.
func (l *LAN) InNS(fn func() error) error { return InNamedNS(l.NS, fn) }

// InNamedNS runs fn with the calling goroutine's OS thread in network
// namespace ns (e.g. SiblingNS). Sockets created inside fn stay there.
func InNamedNS(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer netns.Set(orig) //nolint:errcheck // best effort; the thread is locked
	return fn()
}

// Banner connects from the LAN machine to addr:port and returns the first
// line the server sends, or for HTTP (send != "") the answer to send.
func (l *LAN) Banner(addr netip.Addr, port int, send string) (string, error) {
	var conn net.Conn
	err := l.InNS(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), 3*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if send != "" {
		if _, err := conn.Write([]byte(send)); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if n == 0 {
		return "", err
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	return strings.TrimRight(line, "\r"), nil
}

// WaitBanner retries Banner until it succeeds or the timeout passes:
// a freshly started decoy needs a moment to listen.
func (l *LAN) WaitBanner(addr netip.Addr, port int, send string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := l.Banner(addr, port, send)
		if err == nil || time.Now().After(deadline) {
			return b, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freeSubnet reserves a /bits (24 to 26) of the documentation ranges for
// the test's lifetime, with an flock on each /26 it covers, so tests in
// parallel processes never share one whatever sizes they ask for.
func freeSubnet(t testing.TB, bits int) netip.Prefix {
	t.Helper()
	var cands []netip.Prefix
	for _, base := range []string{"198.51.100.0", "203.0.113.0", "192.0.2.0"} {
		a := netip.MustParseAddr(base).As4()
		step := 1 << (32 - bits)
		for off := 0; off < 256; off += step {
			a[3] = byte(off)
			cands = append(cands, netip.PrefixFrom(netip.AddrFrom4(a), bits))
		}
	}
	used := usedPrefixes()
next:
	for _, p := range cands {
		if overlapsAny(p, used) {
			continue
		}
		var held []*os.File
		release := func() {
			for _, f := range held {
				f.Close()
			}
		}
		a := p.Addr().As4()
		for off := 0; off < 1<<(32-bits); off += 64 {
			q := a
			q[3] += byte(off)
			quarter := netip.PrefixFrom(netip.AddrFrom4(q), 26)
			f, err := os.OpenFile(filepath.Join(os.TempDir(), "pull-agent-testlan-"+strings.ReplaceAll(quarter.String(), "/", "_")+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				release()
				continue next
			}
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
				f.Close()
				release()
				continue next
			}
			held = append(held, f)
		}
		t.Cleanup(release)
		return p
	}
	t.Fatalf("no free test subnet: every /%d of the documentation ranges is in use", bits)
	return netip.Prefix{}
}

func overlapsAny(p netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		if u.Overlaps(p) {
			return true
		}
	}
	return false
}

// usedPrefixes lists the subnets of local interfaces and Docker networks.
func usedPrefixes() []netip.Prefix {
	var out []netip.Prefix
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
				out = append(out, p.Masked())
			}
		}
	}
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return out
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nets, err := c.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		return out
	}
	for _, n := range nets {
		for _, cfg := range n.IPAM.Config {
			if p, err := netip.ParsePrefix(cfg.Subnet); err == nil {
				out = append(out, p.Masked())
			}
		}
	}
	return out
}
