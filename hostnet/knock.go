package hostnet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	stdsync "sync"
	"time"

	"golang.org/x/sys/unix"
)

// Knocker checks TCP ports by half-open handshakes from one raw socket:
// it sends a SYN, and a SYN-ACK means the port is open, a RST that it is
// closed. The worker's kernel, which has no socket for the SYN-ACK,
// answers it with a RST, so the decky's kernel drops the half-open
// connection: the decoy's service is never woken and accepts nothing.
//
// That is why the identity check knocks rather than dials. A dial
// completes a connection the decoy's service must accept and close, so a
// check of 250 deckies woke 250 service processes per pass (200 to 340 ms
// of the pass, measured), and every decoy logged the check as a visitor.
// A knock is three frames handled by the kernels alone.
//
// Answers are matched by address, ports and acknowledgement number (the
// SYN's random sequence number plus one), so a machine on the LAN that
// cannot see the SYN cannot forge an answer to it. One Knocker serves
// any number of concurrent [Knocker.Knock] calls. It needs CAP_NET_RAW.
type Knocker struct {
	conn *net.IPConn
	src  netip.Addr

	mu      stdsync.Mutex
	waiting map[knockKey]*knockWait
	done    chan struct{}
}

// knockKey names one knock: the port knocked at and the source port the
// SYN left from.
type knockKey struct {
	dst  netip.AddrPort
	port uint16
}

type knockWait struct {
	seq    uint32
	answer chan bool // true: SYN-ACK, false: RST
}

// OpenKnocker opens a Knocker whose SYNs leave from iface (SO_BINDTODEVICE:
// the host helper link) with sender address src, the worker's address on
// the LAN. Close it when done.
func OpenKnocker(iface string, src netip.Addr) (*Knocker, error) {
	if !src.Is4() {
		return nil, fmt.Errorf("knock: sender address %v is not IPv4", src)
	}
	conn, err := net.ListenIP("ip4:tcp", &net.IPAddr{IP: src.AsSlice()})
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("knock needs CAP_NET_RAW: %w", err)
		}
		return nil, fmt.Errorf("knock: raw TCP socket on %s: %w", src, err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("knock: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.BindToDevice(int(fd), iface)
		setRcvBuf(int(fd))
	}); err != nil || serr != nil {
		conn.Close()
		return nil, fmt.Errorf("knock: bind to %s: %w", iface, errors.Join(err, serr))
	}
	k := &Knocker{conn: conn, src: src, waiting: map[knockKey]*knockWait{}, done: make(chan struct{})}
	go k.read()
	return k, nil
}

// Close stops the Knocker; knocks still waiting end with an error.
func (k *Knocker) Close() error {
	err := k.conn.Close()
	<-k.done
	return err
}

// ErrKnockerClosed ends a knock whose Knocker was closed.
var ErrKnockerClosed = errors.New("knocker closed")

// Knock sends a SYN to dst and waits for the answer: nil for a SYN-ACK
// (the port accepts connections), an error wrapping unix.ECONNREFUSED for
// a RST, ctx's error when nothing answered before ctx ended. The SYN is
// sent again every resend (1s when 0), as a TCP stack would.
func (k *Knocker) Knock(ctx context.Context, dst netip.AddrPort, resend time.Duration) error {
	if !dst.Addr().Is4() {
		return fmt.Errorf("knock %s: not an IPv4 address", dst)
	}
	if resend <= 0 {
		resend = time.Second
	}
	w := &knockWait{seq: rand.Uint32(), answer: make(chan bool, 1)}
	key, err := k.register(dst, w)
	if err != nil {
		return err
	}
	defer k.unregister(key)
	syn := synSegment(k.src, dst.Addr(), key.port, dst.Port(), w.seq)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case open := <-w.answer:
			if open {
				return nil
			}
			return fmt.Errorf("knock %s: %w", dst, unix.ECONNREFUSED)
		case <-ctx.Done():
			return fmt.Errorf("knock %s: %w", dst, ctx.Err())
		case <-k.done:
			return fmt.Errorf("knock %s: %w", dst, ErrKnockerClosed)
		case <-t.C:
			if err := k.send(ctx, syn, dst.Addr()); err != nil {
				if errors.Is(err, net.ErrClosed) {
					err = ErrKnockerClosed
				}
				return fmt.Errorf("knock %s: %w", dst, err)
			}
			t.Reset(resend)
		}
	}
}

// register picks a source port no other knock at dst uses, and records w
// under it.
func (k *Knocker) register(dst netip.AddrPort, w *knockWait) (knockKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for range 64 {
		key := knockKey{dst: dst, port: uint16(32768 + rand.IntN(28232))} // Linux's ephemeral range
		if _, taken := k.waiting[key]; !taken {
			k.waiting[key] = w
			return key, nil
		}
	}
	return knockKey{}, fmt.Errorf("knock %s: no free source port", dst)
}

func (k *Knocker) unregister(key knockKey) {
	k.mu.Lock()
	delete(k.waiting, key)
	k.mu.Unlock()
}

// send writes one SYN, waiting out a full queue (ENOBUFS) until ctx's
// deadline, as an ARP request does.
func (k *Knocker) send(ctx context.Context, syn []byte, dst netip.Addr) error {
	deadline, _ := ctx.Deadline()
	return waitOutBacklog(ctx, deadline, func() error {
		_, err := k.conn.WriteToIP(syn, &net.IPAddr{IP: dst.AsSlice()})
		return err
	})
}

// read hands each answer to the knock it answers, until the socket closes.
func (k *Knocker) read() {
	defer close(k.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := k.conn.ReadFromIP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond) // not a busy loop should an error persist
			continue
		}
		src, ok := netip.AddrFromSlice(from.IP)
		if !ok {
			continue
		}
		a, ok := parseAnswer(buf[:n])
		if !ok {
			continue
		}
		key := knockKey{dst: netip.AddrPortFrom(src.Unmap(), a.srcPort), port: a.dstPort}
		k.mu.Lock()
		w := k.waiting[key]
		k.mu.Unlock()
		if w == nil || a.ack != w.seq+1 {
			continue // not an answer to a SYN of ours
		}
		select {
		case w.answer <- a.open:
		default:
		}
	}
}

// answer is what a TCP segment says to a knock.
type answer struct {
	srcPort, dstPort uint16
	ack              uint32
	open             bool // SYN-ACK; false: RST
}

// TCP flags.
const (
	tcpFIN = 1 << iota
	tcpSYN
	tcpRST
	tcpPSH
	tcpACK
)

// parseAnswer reads a TCP segment (IP header already removed) as the
// answer to a SYN: a SYN-ACK or a RST, each acknowledging the SYN.
// Anything else is not an answer.
func parseAnswer(seg []byte) (answer, bool) {
	if len(seg) < 20 {
		return answer{}, false
	}
	a := answer{
		srcPort: binary.BigEndian.Uint16(seg[0:2]),
		dstPort: binary.BigEndian.Uint16(seg[2:4]),
		ack:     binary.BigEndian.Uint32(seg[8:12]),
	}
	flags := seg[13]
	switch {
	case flags&(tcpSYN|tcpACK|tcpRST) == tcpSYN|tcpACK:
		a.open = true
	case flags&(tcpRST|tcpACK) == tcpRST|tcpACK:
	default:
		return answer{}, false
	}
	return a, true
}

// synSegment is a 20-byte TCP SYN from src:sport to dst:dport with
// sequence number seq, checksummed (the kernel adds the IP header).
func synSegment(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], seq)
	b[12] = 5 << 4 // header length: five 32-bit words, no options
	b[13] = tcpSYN
	binary.BigEndian.PutUint16(b[14:], 64240) // window
	binary.BigEndian.PutUint16(b[16:], tcpChecksum(src, dst, b))
	return b
}

// tcpChecksum is the Internet checksum of seg over the IPv4 pseudo-header
// (RFC 793), with seg's checksum field taken as zero.
func tcpChecksum(src, dst netip.Addr, seg []byte) uint16 {
	var sum uint32
	s4, d4 := src.As4(), dst.As4()
	for _, w := range [][]byte{s4[:], d4[:]} {
		sum += uint32(binary.BigEndian.Uint16(w[0:])) + uint32(binary.BigEndian.Uint16(w[2:]))
	}
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	for i := 0; i+1 < len(seg); i += 2 {
		if i == 16 {
			continue // the checksum field itself
		}
		sum += uint32(binary.BigEndian.Uint16(seg[i:]))
	}
	if len(seg)%2 == 1 {
		sum += uint32(seg[len(seg)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
