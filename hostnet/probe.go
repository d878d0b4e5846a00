package hostnet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	stdsync "sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// ProbeOptions tune duplicate-address detection and [Resolve].
type ProbeOptions struct {
	Probes   int           // requests sent per address; default 3
	Interval time.Duration // between bursts; default 150ms
	Wait     time.Duration // listening after the last burst; default 500ms
}

func (o ProbeOptions) withDefaults() ProbeOptions {
	if o.Probes <= 0 {
		o.Probes = 3
	}
	if o.Interval <= 0 {
		o.Interval = 150 * time.Millisecond
	}
	if o.Wait <= 0 {
		o.Wait = 500 * time.Millisecond
	}
	return o
}

// Conflict is an address some machine on the LAN already uses.
type Conflict struct {
	IP  netip.Addr
	MAC net.HardwareAddr
	// Probing is set when the other machine was itself probing for the
	// address (a simultaneous claim), rather than holding it.
	Probing bool
}

func (c Conflict) String() string {
	if c.Probing {
		return fmt.Sprintf("%s is being claimed by %s at the same time", c.IP, c.MAC)
	}
	return fmt.Sprintf("%s is in use on the LAN (answered ARP from %s)", c.IP, c.MAC)
}

// ErrFramesDropped: the kernel dropped ARP frames meant for the probe's
// socket, so an answer may have been lost and "no answer" proves nothing.
var ErrFramesDropped = errors.New("ARP frames were dropped before they could be read")

// Probe performs duplicate-address detection in the spirit of RFC 5227 on
// iface: ARP probes with sender address 0.0.0.0 (so no neighbour cache on
// the LAN learns anything), then listens for any machine that answers for,
// announces, or is itself probing one of addrs. It returns the conflicts
// found; addresses not in the result are free as far as the LAN can tell.
//
// All of addrs are probed in one burst, then up to [ProbeOptions.Probes]-1
// more bursts ask those not heard yet (hundreds of addresses cost about
// the same time as one; a full kernel backlog delays a request, never
// drops it: writeFrame), answers are matched by their sender address (any
// order, any count) under one deadline for the whole round, and a round
// in which the kernel dropped frames fails with [ErrFramesDropped] rather
// than call unheard addresses free. It needs
// CAP_NET_RAW.
func Probe(ctx context.Context, iface string, addrs []netip.Addr, opt ProbeOptions) (map[netip.Addr]Conflict, error) {
	out := map[netip.Addr]Conflict{}
	if len(addrs) == 0 {
		return out, nil
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	_, err := arpRound(ctx, iface, netip.IPv4Unspecified(), addrs, opt, nil, func(mine net.HardwareAddr, p *arp.Packet) bool {
		switch {
		case want[p.SenderIP]:
			out[p.SenderIP] = Conflict{IP: p.SenderIP, MAC: p.SenderHardwareAddr}
		case p.Operation == arp.OperationRequest && p.SenderIP.IsUnspecified() && want[p.TargetIP]:
			if _, seen := out[p.TargetIP]; !seen {
				out[p.TargetIP] = Conflict{IP: p.TargetIP, MAC: p.SenderHardwareAddr, Probing: true}
			}
		}
		return false // a probe listens to the end: silence is what it proves
	})
	if err != nil {
		return out, fmt.Errorf("probe: %w", err)
	}
	return out, nil
}

// Query is what [Resolve] asks the LAN, and from where.
type Query struct {
	// Iface is the link requests leave from and answers arrive on: the
	// host helper link (a macvlan parent cannot reach its own children,
	// the helper can).
	Iface string
	// Src is the requests' sender address: the worker's address on the LAN.
	Src     netip.Addr
	Targets []netip.Addr
	// Expect holds, per target, the MAC that should answer for it (a
	// macvlan decky's derived MAC), and Parent the NIC that Iface sits on.
	// With both, the first request for such a target is sent to that MAC
	// alone, and a broadcast for it leaves on Parent. A broadcast sent from
	// Iface is copied to every macvlan on the parent, each decky's
	// included: n deckies would cost n*n frames, all handled by the
	// kernel. The unicast reaches the decky alone; the broadcast on Parent
	// reaches the LAN beyond the worker (where another machine claiming
	// the address is) and none of the macvlans. A target still silent
	// after the first burst is asked by broadcast from Iface, as one
	// without an expected MAC always is: a decky whose MAC was changed by
	// hand is then heard with the MAC it has.
	Expect map[netip.Addr]net.HardwareAddr
	Parent string
}

// Resolve asks the LAN which MAC answers ARP for each of q.Targets: the
// LAN's view of an address, for checking that a decky is seen with its own
// derived MAC. It needs CAP_NET_RAW.
//
// The result holds, per target that answered, every distinct MAC that did,
// in the order first heard: one entry is the healthy case; two or more mean
// another machine claims the address too. Targets that did not answer are
// absent. A second claimant that is itself a macvlan on the worker's own
// NIC is heard only when the target's first request was a broadcast from
// Iface (no expected MAC, or the target was silent); the Engine, not the
// LAN, knows the worker's own containers.
//
// A round in which every target has answered ends a settle time after the
// last of them first did, before the next burst: three times as long as
// the slowest target took to answer the request last sent to it (at least
// settleMin, at most opt.Interval/2), counted from that request, not from
// the start of a burst that may take a while to send. A second machine
// claiming an address answers the same broadcast request in about the
// time the first did (ARP is answered by the kernel; a LAN round trip is
// well under a millisecond, Wi-Fi a few), and one that is slower is still
// found by a later check.
// This is what keeps a check of hundreds of healthy deckies to one burst
// (about a tenth of the full round) in every full pass and every `once`.
// A round with a target still silent listens to the end, as before.
func Resolve(ctx context.Context, q Query, opt ProbeOptions) (map[netip.Addr][]net.HardwareAddr, error) {
	out, _, err := resolve(ctx, q, opt)
	return out, err
}

// resolve is Resolve, also returning the number of bursts sent.
func resolve(ctx context.Context, q Query, opt ProbeOptions) (map[netip.Addr][]net.HardwareAddr, int, error) {
	out := map[netip.Addr][]net.HardwareAddr{}
	if len(q.Targets) == 0 {
		return out, 0, nil
	}
	if !q.Src.Is4() || q.Src.IsUnspecified() {
		return nil, 0, fmt.Errorf("resolve: sender address %v is not a usable IPv4 address", q.Src)
	}
	want := map[netip.Addr]bool{}
	for _, a := range q.Targets {
		want[a] = true
	}
	var uni *unicast
	if q.Parent != "" && len(q.Expect) > 0 {
		w, err := openLANWriter(q.Parent)
		if err != nil {
			return nil, 0, fmt.Errorf("resolve: %w", err)
		}
		defer w.Close()
		uni = &unicast{expect: q.Expect, lan: w}
	}
	bursts, err := arpRound(ctx, q.Iface, q.Src, q.Targets, opt, uni, func(mine net.HardwareAddr, p *arp.Packet) bool {
		if !want[p.SenderIP] || p.SenderHardwareAddr.String() == mine.String() {
			return false
		}
		for _, m := range out[p.SenderIP] {
			if m.String() == p.SenderHardwareAddr.String() {
				return false
			}
		}
		out[p.SenderIP] = append(out[p.SenderIP], append(net.HardwareAddr(nil), p.SenderHardwareAddr...))
		return len(out) == len(want)
	})
	if err != nil {
		return out, bursts, fmt.Errorf("resolve: %w", err)
	}
	return out, bursts, nil
}

// unicast is how a round's first burst asks targets with an expected MAC:
// a request to that MAC from the round's link, and a broadcast on the
// worker's NIC (lan) for the rest of the LAN.
type unicast struct {
	expect map[netip.Addr]net.HardwareAddr
	lan    frameWriter
}

// settleMin is the shortest wait for a second claimant once every target
// has answered: scheduling noise on a busy worker, not the LAN, sets it.
const settleMin = 10 * time.Millisecond

// settle is how long a round listens on once every target has answered,
// answered being how long after the first burst the last one did.
func settle(answered, interval time.Duration) time.Duration {
	return min(interval/2, max(settleMin, 3*answered))
}

// rcvBuf is the receive buffer asked for: room for thousands of ARP
// frames, so a burst whose answers all arrive at once loses none.
const rcvBuf = 4 << 20

// arpRound sends opt.Probes bursts of ARP requests for every target
// (sender address src, 0.0.0.0 for a probe) on iface and hands every ARP
// frame received from another machine to seen until one deadline, covering
// all bursts plus opt.Wait, passes. Replies are matched by the caller (by
// sender address), never by order, so any number of targets can share a
// round. When seen returns true (the caller has heard all it needs), the
// round ends a settle time later and sends no further burst. With uni,
// the first burst asks each target with an expected MAC by unicast (and
// a broadcast on the worker's NIC) instead of a broadcast from iface. It
// returns the number of bursts sent.
func arpRound(ctx context.Context, iface string, src netip.Addr, targets []netip.Addr, opt ProbeOptions, uni *unicast, seen func(mine net.HardwareAddr, p *arp.Packet) bool) (int, error) {
	opt = opt.withDefaults()
	targets = append([]netip.Addr(nil), targets...)
	sort.Slice(targets, func(i, j int) bool { return targets[i].Less(targets[j]) })
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", iface, err)
	}
	conn, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ARP, nil)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return 0, fmt.Errorf("ARP needs CAP_NET_RAW: %w", err)
		}
		return 0, fmt.Errorf("raw socket on %s: %w", iface, err)
	}
	tuneSocket(conn)
	c, err := arp.New(ifi, conn)
	if err != nil {
		conn.Close()
		return 0, err
	}
	defer c.Close()
	mine := ifi.HardwareAddr

	// One deadline for the whole round, set before the first frame leaves.
	deadline := time.Now().Add(time.Duration(opt.Probes)*opt.Interval + opt.Wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()

	// enough is closed once seen has heard all it needs: no further burst.
	enough := make(chan struct{})
	// What the sender and the reader share: when each target was last
	// asked, and which have answered (a later burst asks only the silent).
	var (
		mu     stdsync.Mutex
		sentAt = make(map[netip.Addr]time.Time, len(targets))
		heard  = make(map[netip.Addr]bool, len(targets))
	)
	sendBy := deadline // the sender's copy: the reader moves deadline
	bursts := 0
	done := make(chan error, 1)
	go func() {
		for i := 0; i < opt.Probes; i++ {
			mu.Lock()
			ask := make([]netip.Addr, 0, len(targets))
			for _, a := range targets {
				if !heard[a] {
					ask = append(ask, a)
				}
			}
			mu.Unlock()
			for _, a := range ask {
				p, err := arp.NewPacket(arp.OperationRequest, mine, src, ethernet.Broadcast, a)
				if err != nil {
					done <- err
					return
				}
				mu.Lock()
				sentAt[a] = time.Now()
				mu.Unlock()
				if mac := uni.mac(a); i == 0 && mac != nil {
					if err := writeFrame(ctx, uni.lan, p, ethernet.Broadcast, sendBy); err != nil {
						done <- fmt.Errorf("send on the LAN: %w", err)
						return
					}
					if err := writeFrame(ctx, c, p, mac, sendBy); err != nil {
						done <- fmt.Errorf("send on %s: %w", iface, err)
						return
					}
					continue
				}
				if err := writeFrame(ctx, c, p, ethernet.Broadcast, sendBy); err != nil {
					done <- fmt.Errorf("send on %s: %w", iface, err)
					return
				}
			}
			bursts++
			if i == opt.Probes-1 {
				break
			}
			select {
			case <-ctx.Done():
				done <- ctx.Err()
				return
			case <-enough:
				done <- nil
				return
			case <-time.After(opt.Interval):
			}
		}
		done <- nil
	}()

	// slowest is the longest any target took to first answer the request
	// last sent to it: the LAN's answer time, not the burst's length (a
	// burst to hundreds of deckies takes longer to send than any of them
	// takes to answer).
	var slowest time.Duration
	for {
		p, _, err := c.Read()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			// Anything else is a frame that is not Ethernet/IPv4 ARP: skip it.
			if time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			continue
		}
		if p.SenderHardwareAddr.String() == mine.String() {
			continue // our own request, looped back
		}
		mu.Lock()
		if at, asked := sentAt[p.SenderIP]; asked && !heard[p.SenderIP] {
			heard[p.SenderIP] = true
			slowest = max(slowest, time.Since(at))
		}
		mu.Unlock()
		if seen(mine, p) {
			select {
			case <-enough:
			default:
				close(enough)
				if end := time.Now().Add(settle(slowest, opt.Interval)); end.Before(deadline) {
					deadline = end
					_ = c.SetReadDeadline(deadline)
				}
			}
		}
	}
	if err := <-done; err != nil {
		return bursts, err
	}
	if err := ctx.Err(); err != nil {
		return bursts, err
	}
	if st, err := conn.Stats(); err == nil && st.Drops > 0 {
		return bursts, fmt.Errorf("%w: %d on %s", ErrFramesDropped, st.Drops, iface)
	}
	return bursts, nil
}

// frameWriter is the part of an *arp.Client that writeFrame uses.
type frameWriter interface {
	WriteTo(p *arp.Packet, addr net.HardwareAddr) error
}

// mac is the MAC target a is asked at by unicast, or nil.
func (u *unicast) mac(a netip.Addr) net.HardwareAddr {
	if u == nil {
		return nil
	}
	return u.expect[a]
}

// writeFrame sends one request to dst, waiting out a full backlog. A
// broadcast on a macvlan or ipvlan parent is copied to every sibling
// endpoint, and each decky holds one: a burst for hundreds of deckies is
// hundreds of times as many frames for the kernel's per-CPU backlog
// (net.core.netdev_max_backlog, 1000 by default). When it is full the
// copies that did not fit are dropped and the send fails with ENOBUFS; a
// healthy decky would then not hear its request, and a check that stopped
// there would conclude nothing (or, had the error been ignored, call the
// decky silent). The request is sent again once the backlog has had time
// to drain, until the round's deadline.
func writeFrame(ctx context.Context, c frameWriter, p *arp.Packet, dst net.HardwareAddr, deadline time.Time) error {
	return waitOutBacklog(ctx, deadline, func() error { return c.WriteTo(p, dst) })
}

// waitOutBacklog calls write until it succeeds or fails for another
// reason than a full kernel queue (ENOBUFS), backing off 1 to 16 ms
// between tries, until deadline (none when zero) or ctx ends. Every send
// of a burst (ARP requests, knocks' SYNs) goes through it.
func waitOutBacklog(ctx context.Context, deadline time.Time, write func() error) error {
	for backoff := time.Millisecond; ; backoff = min(2*backoff, 16*time.Millisecond) {
		err := write()
		if err == nil || !errors.Is(err, unix.ENOBUFS) || !deadline.IsZero() && time.Now().Add(backoff).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// lanWriter sends ARP frames on the worker's NIC itself, the macvlan
// parent: they leave for the LAN, and the kernel hands none of them to
// the macvlans on that NIC (a macvlan hears its parent's incoming frames,
// not the ones it sends). It reads nothing: its socket is bound to
// protocol 0, so the kernel queues no frame for it.
type lanWriter struct {
	fd      int
	ifindex int
}

func openLANWriter(iface string) (*lanWriter, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("ARP needs CAP_NET_RAW: %w", err)
		}
		return nil, fmt.Errorf("raw socket on %s: %w", iface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind raw socket to %s: %w", iface, err)
	}
	return &lanWriter{fd: fd, ifindex: ifi.Index}, nil
}

// WriteTo sends p in an Ethernet frame to dst, from p's sender MAC (the
// helper's: answers come back to the helper, where the round reads).
func (w *lanWriter) WriteTo(p *arp.Packet, dst net.HardwareAddr) error {
	pb, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	fb, err := (&ethernet.Frame{Destination: dst, Source: p.SenderHardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}).MarshalBinary()
	if err != nil {
		return err
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: w.ifindex, Halen: uint8(len(dst))}
	copy(sa.Addr[:], dst)
	if err := unix.Sendto(w.fd, fb, 0, sa); err != nil {
		return os.NewSyscallError("sendto", err)
	}
	return nil
}

func (w *lanWriter) Close() error { return unix.Close(w.fd) }

// htons is v in network byte order, as sockaddr_ll wants it.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// tuneSocket makes a burst's answers fit: a large receive buffer
// (SO_RCVBUFFORCE as root, else as much as the system allows), and no
// copies of our own outgoing requests (PACKET_IGNORE_OUTGOING, Linux 4.20+),
// which would otherwise take half of it. Both are best effort: on failure
// the drop counter still catches a lost answer.
func tuneSocket(conn *packet.Conn) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		setRcvBuf(int(fd))
		_ = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	})
}

// setRcvBuf asks for a receive buffer of rcvBuf bytes: SO_RCVBUFFORCE
// (CAP_NET_ADMIN), else as much of it as SO_RCVBUF allows. Best effort.
func setRcvBuf(fd int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
}
