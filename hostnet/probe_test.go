package hostnet

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/testlan"
	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"golang.org/x/sys/unix"
)

func TestProbeFindsAddressesInUse(t *testing.T) {
	l := testlan.New(t, testlan.Options{})
	taken := l.Peer.Next().Next().Next()
	l.AddPeerAddr(t, taken)
	free := taken.Next()
	start := time.Now()
	got, err := Probe(context.Background(), l.Parent, []netip.Addr{l.Peer, taken, free}, ProbeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("want conflicts for %s and %s, got %v", l.Peer, taken, got)
	}
	for _, a := range []netip.Addr{l.Peer, taken} {
		c, ok := got[a]
		if !ok || c.MAC == nil || c.Probing {
			t.Errorf("%s: want a conflict with the LAN machine's MAC, got %+v", a, c)
		}
	}
	if _, ok := got[free]; ok {
		t.Errorf("%s is free but was reported in use", free)
	}
	t.Logf("probed 3 addresses in %s", time.Since(start).Round(time.Millisecond))
}

// One burst covers a whole dense LAN: 124 targets in one call, 42 of them
// answering (40 back to back, the LAN machine, and another machine with its
// own MAC), and every answer is matched to its address, whatever the order.
func TestProbeBurstOfManyTargets(t *testing.T) {
	l := testlan.New(t, testlan.Options{Bits: 25, Busy: 40})
	other := netip.MustParseAddr("0.0.0.0")
	for a, i := l.Subnet.Addr(), 0; i < 100; i++ {
		a = a.Next()
		other = a
	}
	otherMAC := net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}
	l.AddMachine(t, other, otherMAC)
	peerMAC := l.PeerMAC(t)

	var targets []netip.Addr
	for a := l.Host.Next(); l.Subnet.Contains(a.Next()); a = a.Next() {
		targets = append(targets, a) // .3 .. .126
	}
	if len(targets) < 64 {
		t.Fatalf("only %d targets", len(targets))
	}
	got, err := Probe(context.Background(), l.Parent, targets, ProbeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]string{l.Peer: peerMAC.String(), other: otherMAC.String()}
	for _, a := range l.Busy {
		want[a] = peerMAC.String()
	}
	if len(want) != 42 {
		t.Fatalf("test set-up: %d addresses in use", len(want))
	}
	for a, mac := range want {
		c, ok := got[a]
		if !ok {
			t.Errorf("%s answers ARP but was not found", a)
			continue
		}
		if c.MAC.String() != mac || c.Probing {
			t.Errorf("%s: conflict %+v, want MAC %s", a, c, mac)
		}
	}
	for a := range got {
		if _, ok := want[a]; !ok {
			t.Errorf("%s is free but was reported in use: %v", a, got[a])
		}
	}
}

func TestProbeCancelledIsNotFree(t *testing.T) {
	l := testlan.New(t, testlan.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Probe(ctx, l.Parent, []netip.Addr{l.Peer.Next()}, ProbeOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled probe must fail, not call the address free: %v", err)
	}
}

// Resolve from the host helper link sees each address with the MAC that
// answers for it on the LAN, from the worker's own address (the LAN learns
// the helper as the asker), and reports a second machine claiming the same
// address: asked by broadcast from the helper, and asked by unicast to
// the expected MACs with a broadcast on the parent, which must hear the
// LAN just the same (a second claimant included).
func TestResolveFromHelper(t *testing.T) {
	l := testlan.New(t, testlan.Options{Busy: 2})
	name := helperOn(t, l)
	helper, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	peerMAC := l.PeerMAC(t)
	decky, deckyMAC := l.Busy[1].Next().Next(), net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	l.AddMachine(t, decky, deckyMAC)
	dup, dupMAC := decky.Next(), net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x66}
	l.AddMachine(t, dup, dupMAC)
	l.AddPeerAddr(t, dup) // the LAN machine claims it too
	silent := dup.Next().Next()
	targets := []netip.Addr{l.Peer, l.Busy[0], decky, dup, silent}

	for _, tc := range []struct {
		name string
		q    Query
	}{
		{"broadcast from the helper", Query{Iface: name, Src: l.Host, Targets: targets}},
		{"unicast to the expected MACs, broadcast on the parent", Query{Iface: name, Src: l.Host, Targets: targets, Parent: l.Parent,
			Expect: map[netip.Addr]net.HardwareAddr{l.Peer: peerMAC, l.Busy[0]: peerMAC, decky: deckyMAC, dup: dupMAC, silent: {0x02, 0x11, 0x22, 0x33, 0x44, 0x77}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := exec.Command("ip", "-n", l.NS, "neigh", "flush", "all").Run(); err != nil {
				t.Fatal(err)
			}
			got, err := Resolve(context.Background(), tc.q, ProbeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			macs := func(a netip.Addr) string {
				var s []string
				for _, m := range got[a] {
					s = append(s, m.String())
				}
				return strings.Join(s, " ")
			}
			for a, want := range map[netip.Addr]string{l.Peer: peerMAC.String(), l.Busy[0]: peerMAC.String(), decky: deckyMAC.String()} {
				if macs(a) != want {
					t.Errorf("%s resolved to [%s], want %s", a, macs(a), want)
				}
			}
			if d := macs(dup); len(got[dup]) != 2 || !strings.Contains(d, dupMAC.String()) || !strings.Contains(d, peerMAC.String()) {
				t.Errorf("%s is claimed by two machines; resolved to [%s]", dup, d)
			}
			if _, ok := got[silent]; ok {
				t.Errorf("%s answered nobody, resolved to [%s]", silent, macs(silent))
			}
			// The requests came from the helper: the decky's side learnt the
			// worker's address at the helper's MAC.
			out, err := exec.Command("ip", "-n", l.NS, "neigh", "show", l.Host.String()).CombinedOutput()
			if err != nil {
				t.Fatalf("ip neigh: %v %s", err, out)
			}
			if !strings.Contains(string(out), helper.HardwareAddr.String()) {
				t.Errorf("the LAN did not see the helper (%s) asking: %s", helper.HardwareAddr, out)
			}
		})
	}

	if _, err := Resolve(context.Background(), Query{Iface: name, Targets: []netip.Addr{decky}}, ProbeOptions{}); err == nil {
		t.Error("Resolve without a sender address must fail")
	}
}

// TestResolveStopsWhenEveryTargetAnswered: a round whose every target has
// answered sends no further burst (the check of hundreds of healthy
// deckies costs one burst), and still hears a second machine claiming an
// address; a round with a silent target sends every burst.
func TestResolveStopsWhenEveryTargetAnswered(t *testing.T) {
	l := testlan.New(t, testlan.Options{Busy: 2})
	name := helperOn(t, l)
	decky, deckyMAC := l.Busy[1].Next().Next(), net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	l.AddMachine(t, decky, deckyMAC)
	dup, dupMAC := decky.Next(), net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x66}
	l.AddMachine(t, dup, dupMAC)
	l.AddPeerAddr(t, dup) // the LAN machine claims it too
	silent := dup.Next().Next()
	// Bursts a second apart: a round that did not stop early sends 3.
	opt := ProbeOptions{Probes: 3, Interval: time.Second, Wait: 200 * time.Millisecond}

	got, bursts, err := resolve(context.Background(), Query{Iface: name, Src: l.Host, Targets: []netip.Addr{l.Peer, decky, dup}}, opt)
	if err != nil {
		t.Fatal(err)
	}
	if bursts != 1 {
		t.Errorf("every target answered the first burst, yet %d bursts were sent", bursts)
	}
	if len(got[decky]) != 1 || got[decky][0].String() != deckyMAC.String() {
		t.Errorf("%s resolved to %v, want %s", decky, got[decky], deckyMAC)
	}
	if len(got[dup]) != 2 {
		t.Errorf("%s is claimed by two machines; an early end heard %v", dup, got[dup])
	}

	got, bursts, err = resolve(context.Background(), Query{Iface: name, Src: l.Host, Targets: []netip.Addr{decky, silent}}, opt)
	if err != nil {
		t.Fatal(err)
	}
	if bursts != opt.Probes {
		t.Errorf("with %s silent, %d bursts were sent, want all %d", silent, bursts, opt.Probes)
	}
	if _, ok := got[silent]; ok || len(got[decky]) != 1 {
		t.Errorf("resolved %v", got)
	}
}

// The wait for a second claimant follows how fast the LAN answered: three
// times the slowest first answer, never below settleMin (scheduling noise)
// nor above half the burst interval (the old fixed wait).
func TestSettle(t *testing.T) {
	for _, tc := range []struct{ answered, interval, want time.Duration }{
		{time.Millisecond, 150 * time.Millisecond, settleMin},
		{5 * time.Millisecond, 150 * time.Millisecond, 15 * time.Millisecond},
		{20 * time.Millisecond, 150 * time.Millisecond, 60 * time.Millisecond},
		{60 * time.Millisecond, 150 * time.Millisecond, 75 * time.Millisecond},
		{time.Millisecond, 10 * time.Millisecond, 5 * time.Millisecond},
	} {
		if got := settle(tc.answered, tc.interval); got != tc.want {
			t.Errorf("settle(%v, %v) = %v, want %v", tc.answered, tc.interval, got, tc.want)
		}
	}
}

// TestResolveManyDeckiesOnTheParent checks hundreds of deckies from the
// helper link, as a full pass on a big worker does, both ways a round can
// ask. By broadcast (an ipvlan network, or a target silent so far) each
// request is copied to every macvlan on the parent, so one burst is
// hundreds of times as many frames as requests for the kernel's backlog:
// when it fills, the send fails with ENOBUFS and copies are dropped.
// Round after round every decky must still be heard, with its own MAC
// alone, and no round may fail. Whether the backlog fills here depends on
// the machine's load (it did on a loaded worker with 250 Docker deckies,
// two rounds in three); TestWriteFrameWaitsOutAFullBacklog forces it.
// By unicast to the expected MACs (a macvlan network) each decky gets
// its own request and the others nothing: the deckies' links count the
// frames they received. One decky's MAC was changed by hand: its unicast
// finds nobody, and the later broadcast hears it with the MAC it has.
func TestResolveManyDeckiesOnTheParent(t *testing.T) {
	l := testlan.New(t, testlan.Options{Bits: 24})
	name := helperOn(t, l)
	const n = 240
	deckies := l.AddSiblings(t, l.Peer.Next(), n)
	targets := make([]netip.Addr, 0, len(deckies))
	expect := map[netip.Addr]net.HardwareAddr{}
	for a, mac := range deckies {
		targets = append(targets, a)
		expect[a] = mac
	}
	changed := l.Peer.Next()
	expect[changed] = net.HardwareAddr{0x02, 0x5e, 0xff, 0xff, 0xff, 0xff} // what the agent derived; the decky now has another
	for _, tc := range []struct {
		name string
		q    Query
		// most is how many frames the deckies may receive in all per round.
		most int
	}{
		{"broadcast from the helper", Query{Iface: name, Src: l.Host, Targets: targets}, 0},
		{"unicast to the expected MACs", Query{Iface: name, Src: l.Host, Targets: targets, Expect: expect, Parent: l.Parent}, 3 * n},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := 1; round <= 5; round++ {
				before := siblingRxFrames(t, l.SiblingNS())
				got, err := Resolve(context.Background(), tc.q, ProbeOptions{})
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				received := siblingRxFrames(t, l.SiblingNS()) - before
				wrong := 0
				for a, mac := range deckies {
					if len(got[a]) != 1 || got[a][0].String() != mac.String() {
						wrong++
						if wrong <= 3 {
							t.Errorf("round %d: %s resolved to %v, want %s alone", round, a, got[a], mac)
						}
					}
				}
				if wrong > 0 {
					t.Fatalf("round %d: %d of %d deckies not heard as themselves", round, wrong, len(deckies))
				}
				if tc.most > 0 && received > tc.most {
					t.Errorf("round %d: the %d deckies received %d frames, want at most %d (a broadcast to each is %d)", round, n, received, tc.most, n*n)
				}
			}
		})
	}
}

// siblingRxFrames is the number of frames received by every link in
// namespace ns (the deckies testlan.AddSiblings made).
func siblingRxFrames(t *testing.T, ns string) int {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-s", "-j", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip -n %s -s link: %v", ns, err)
	}
	var links []struct {
		Ifname string `json:"ifname"`
		Stats  struct {
			RX struct {
				Packets int `json:"packets"`
			} `json:"rx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("ip -j: %v", err)
	}
	sum := 0
	for _, l := range links {
		if l.Ifname != "lo" {
			sum += l.Stats.RX.Packets
		}
	}
	return sum
}

// enobufs fails its first n writes as a full kernel backlog does.
type enobufs struct{ n, writes int }

func (e *enobufs) WriteTo(*arp.Packet, net.HardwareAddr) error {
	e.writes++
	if e.writes <= e.n {
		return &net.OpError{Op: "write", Err: os.NewSyscallError("sendto", unix.ENOBUFS)}
	}
	return nil
}

// A full backlog delays a request until it fits; it fails the round only
// at the round's deadline, and any other send error fails it at once.
func TestWriteFrameWaitsOutAFullBacklog(t *testing.T) {
	p, err := arp.NewPacket(arp.OperationRequest, net.HardwareAddr{2, 0, 0, 0, 0, 1}, netip.MustParseAddr("198.51.100.2"), ethernet.Broadcast, netip.MustParseAddr("198.51.100.9"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w := &enobufs{n: 3}
	if err := writeFrame(ctx, w, p, ethernet.Broadcast, time.Now().Add(time.Minute)); err != nil || w.writes != 4 {
		t.Errorf("three ENOBUFS then room: err %v after %d writes, want nil after 4", err, w.writes)
	}
	w = &enobufs{n: 1 << 30}
	if err := writeFrame(ctx, w, p, ethernet.Broadcast, time.Now().Add(50*time.Millisecond)); !errors.Is(err, unix.ENOBUFS) {
		t.Errorf("a backlog full to the deadline: err %v, want ENOBUFS", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := writeFrame(cctx, &enobufs{n: 1 << 30}, p, ethernet.Broadcast, time.Now().Add(time.Minute)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled while waiting: err %v, want context.Canceled", err)
	}
	if err := writeFrame(ctx, failing{}, p, ethernet.Broadcast, time.Now().Add(time.Minute)); !errors.Is(err, unix.ENETDOWN) {
		t.Errorf("another send error: err %v, want it returned at once", err)
	}
}

type failing struct{}

func (failing) WriteTo(*arp.Packet, net.HardwareAddr) error {
	return os.NewSyscallError("sendto", unix.ENETDOWN)
}

// helperOn makes a host helper link on l's parent, with a /32 route to
// each of deckies, removed when the test ends, for a test's ARP rounds
// and knocks, and returns its name.
func helperOn(t *testing.T, l *testlan.LAN, deckies ...netip.Addr) string {
	t.Helper()
	d, err := NewDetector()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	name := "hl" + testlan.Suffix()
	t.Cleanup(func() { _ = d.RemoveHelper(name, "w") })
	if _, err := d.EnsureHelper(HelperSpec{Name: name, Parent: l.Parent, Driver: "macvlan", HostIP: l.Host, Deckies: deckies, Owner: "w"}); err != nil {
		t.Fatal(err)
	}
	return name
}
