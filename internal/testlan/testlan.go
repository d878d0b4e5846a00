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

	peerDev string // the LAN machine's device holding Peer
	id      string
	ports   int
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
		opt.Subnet = freeSubnet(t).String()
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
	return l
}

// AddPeerAddr makes the LAN machine hold one more address (an address a
// real machine already uses).
func (l *LAN) AddPeerAddr(t testing.TB, a netip.Addr) {
	t.Helper()
	run(t, "ip", "-n", l.NS, "addr", "add", fmt.Sprintf("%s/%d", a, l.Subnet.Bits()), "dev", l.peerDev)
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
func (l *LAN) InNS(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(l.NS)
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

// freeSubnet reserves a /26 of the documentation ranges for the test's
// lifetime with an flock, so tests in parallel processes never share one.
func freeSubnet(t testing.TB) netip.Prefix {
	t.Helper()
	var cands []netip.Prefix
	for _, base := range []string{"198.51.100.0", "203.0.113.0", "192.0.2.0"} {
		a := netip.MustParseAddr(base).As4()
		for i := 0; i < 4; i++ {
			a[3] = byte(i * 64)
			cands = append(cands, netip.PrefixFrom(netip.AddrFrom4(a), 26))
		}
	}
	used := usedPrefixes()
	for _, p := range cands {
		if overlapsAny(p, used) {
			continue
		}
		f, err := os.OpenFile(filepath.Join(os.TempDir(), "pull-agent-testlan-"+strings.ReplaceAll(p.String(), "/", "_")+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close()
			continue
		}
		t.Cleanup(func() { f.Close() })
		return p
	}
	t.Fatal("no free test subnet: every /26 of the documentation ranges is in use")
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
