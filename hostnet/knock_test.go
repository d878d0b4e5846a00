package hostnet

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	stdsync "sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/decnet/pull-agent/internal/testlan"
)

// TestKnock knocks from the worker at a LAN machine: open ports answer,
// closed ones refuse, a silent address times out, many knocks share one
// socket, and the machine's service never sees a connection.
func TestKnock(t *testing.T) {
	l := testlan.New(t, testlan.Options{})
	const n = 40
	var listeners []net.Listener
	err := l.InNS(func() error {
		for range n {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(l.Peer, 0).String())
			if err != nil {
				return err
			}
			listeners = append(listeners, ln)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, ln := range listeners {
			ln.Close()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	var open []netip.AddrPort
	for _, ln := range listeners {
		open = append(open, netip.MustParseAddrPort(ln.Addr().String()))
	}
	// Closed: the same machine, ports nothing listens on (the listeners'
	// ports plus one, skipping any that is one of them).
	var closed []netip.AddrPort
	taken := map[uint16]bool{}
	for _, a := range open {
		taken[a.Port()] = true
	}
	for _, a := range open {
		if p := a.Port() + 1; !taken[p] && p != 0 {
			closed = append(closed, netip.AddrPortFrom(l.Peer, p))
		}
	}

	k, err := OpenKnocker(l.Parent, l.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ctx := context.Background()

	var wg stdsync.WaitGroup
	errs := make(map[netip.AddrPort]error)
	var mu stdsync.Mutex
	for _, a := range append(append([]netip.AddrPort(nil), open...), closed...) {
		wg.Go(func() {
			kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			err := k.Knock(kctx, a, 200*time.Millisecond)
			mu.Lock()
			errs[a] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, a := range open {
		if errs[a] != nil {
			t.Errorf("open port %s: %v", a, errs[a])
		}
	}
	for _, a := range closed {
		if !errors.Is(errs[a], unix.ECONNREFUSED) {
			t.Errorf("closed port %s: %v, want connection refused", a, errs[a])
		}
	}
	// Nobody holds this address: no answer until the deadline.
	silent := netip.AddrPortFrom(l.Peer.Next().Next().Next(), 22)
	sctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	defer cancel()
	if err := k.Knock(sctx, silent, 200*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent %s: %v, want the deadline", silent, err)
	}
	// The services were knocked at, never connected to: nothing to accept.
	for _, ln := range listeners {
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
		if c, err := ln.Accept(); err == nil {
			c.Close()
			t.Errorf("%s accepted a connection from the knock", ln.Addr())
		}
	}
	if err := k.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := k.Knock(ctx, open[0], 0); !errors.Is(err, ErrKnockerClosed) {
		t.Errorf("knock after close: %v, want ErrKnockerClosed", err)
	}
}

// A SYN's checksum sums to all ones over the pseudo-header with it in
// place (RFC 1071), and answers are read only when they acknowledge a SYN.
func TestSynSegmentAndAnswers(t *testing.T) {
	src, dst := netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("198.51.100.77")
	for _, seq := range []uint32{0, 1, 0xfffffffe, 0x12345678} {
		seg := synSegment(src, dst, 40000, 22, seq)
		var sum uint32
		s4, d4 := src.As4(), dst.As4()
		for _, w := range [][]byte{s4[:2], s4[2:], d4[:2], d4[2:]} {
			sum += uint32(binary.BigEndian.Uint16(w))
		}
		sum += unix.IPPROTO_TCP + uint32(len(seg))
		for i := 0; i < len(seg); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(seg[i:]))
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		if sum != 0xffff {
			t.Errorf("seq %#x: checksum sums to %#x, want 0xffff", seq, sum)
		}
		if seg[13] != tcpSYN || binary.BigEndian.Uint32(seg[4:]) != seq {
			t.Errorf("seq %#x: not a SYN with that sequence number: % x", seq, seg)
		}
	}
	reply := func(flags byte, ack uint32) []byte {
		b := make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], 22)
		binary.BigEndian.PutUint16(b[2:], 40000)
		binary.BigEndian.PutUint32(b[8:], ack)
		b[12], b[13] = 5<<4, flags
		return b
	}
	for _, tc := range []struct {
		name     string
		seg      []byte
		ok, open bool
	}{
		{"SYN-ACK", reply(tcpSYN|tcpACK, 8), true, true},
		{"RST-ACK", reply(tcpRST|tcpACK, 8), true, false},
		{"bare RST (answers no SYN)", reply(tcpRST, 8), false, false},
		{"bare ACK", reply(tcpACK, 8), false, false},
		{"SYN alone (another's open)", reply(tcpSYN, 8), false, false},
		{"short", reply(tcpSYN|tcpACK, 8)[:19], false, false},
	} {
		a, ok := parseAnswer(tc.seg)
		if ok != tc.ok || (ok && (a.open != tc.open || a.ack != 8 || a.srcPort != 22 || a.dstPort != 40000)) {
			t.Errorf("%s: %+v %v, want ok %v open %v", tc.name, a, ok, tc.ok, tc.open)
		}
	}
}

// TestKnockFromTheHelper knocks as the agent does: from the host helper
// link, at a decky on the worker's own NIC (a sibling of the helper in a
// namespace of its own), reached through the helper's /32 route. Only
// macvlan: these kernels have no ipvlan link type (test-environment.md),
// where the knock takes the path the dial it replaces took.
func TestKnockFromTheHelper(t *testing.T) {
	l := testlan.New(t, testlan.Options{})
	decky := l.Peer.Next().Next()
	l.AddSiblings(t, decky, 1)
	var ln net.Listener
	if err := testlan.InNamedNS(l.SiblingNS(), func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(decky, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	open := netip.MustParseAddrPort(ln.Addr().String())

	name := helperOn(t, l, decky)
	k, err := OpenKnocker(name, l.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.Knock(ctx, open, 200*time.Millisecond); err != nil {
		t.Errorf("open port %s through %s: %v", open, name, err)
	}
	closed := netip.AddrPortFrom(decky, open.Port()+1)
	if err := k.Knock(ctx, closed, 200*time.Millisecond); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("closed port %s through %s: %v, want connection refused", closed, name, err)
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Errorf("the decky accepted a connection from the knock")
	}
}
