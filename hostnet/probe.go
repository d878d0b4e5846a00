package hostnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// ProbeOptions tune duplicate-address detection.
type ProbeOptions struct {
	Probes   int           // probes sent per address; default 3
	Interval time.Duration // between probes; default 150ms
	Wait     time.Duration // listening after the last probe; default 500ms
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

// Probe performs duplicate-address detection in the spirit of RFC 5227 on
// iface: ARP probes with sender address 0.0.0.0 (so no neighbour cache on
// the LAN learns anything), then listens for any machine that answers for,
// announces, or is itself probing one of addrs. It returns the conflicts
// found; addresses not in the result are free as far as the LAN can tell.
// It needs CAP_NET_RAW.
func Probe(ctx context.Context, iface string, addrs []netip.Addr, opt ProbeOptions) (map[netip.Addr]Conflict, error) {
	out := map[netip.Addr]Conflict{}
	if len(addrs) == 0 {
		return out, nil
	}
	if opt.Probes <= 0 {
		opt.Probes = 3
	}
	if opt.Interval <= 0 {
		opt.Interval = 150 * time.Millisecond
	}
	if opt.Wait <= 0 {
		opt.Wait = 500 * time.Millisecond
	}
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("probe: interface %s: %w", iface, err)
	}
	conn, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ARP, nil)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("probe: ARP needs CAP_NET_RAW: %w", err)
		}
		return nil, fmt.Errorf("probe: raw socket on %s: %w", iface, err)
	}
	c, err := arp.New(ifi, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("probe: %w", err)
	}
	defer c.Close()
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	mine := ifi.HardwareAddr

	done := make(chan error, 1)
	go func() {
		for i := 0; i < opt.Probes; i++ {
			for _, a := range addrs {
				p, err := arp.NewPacket(arp.OperationRequest, mine, netip.IPv4Unspecified(), ethernet.Broadcast, a)
				if err != nil {
					done <- err
					return
				}
				if err := c.WriteTo(p, ethernet.Broadcast); err != nil {
					done <- fmt.Errorf("probe: send on %s: %w", iface, err)
					return
				}
			}
			select {
			case <-ctx.Done():
				done <- ctx.Err()
				return
			case <-time.After(opt.Interval):
			}
		}
		done <- nil
	}()

	deadline := time.Now().Add(time.Duration(opt.Probes)*opt.Interval + opt.Wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	for {
		p, _, err := c.Read()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			// Anything else is a frame that is not Ethernet/IPv4 ARP: skip it.
			if time.Now().After(deadline) {
				break
			}
			continue
		}
		if p.SenderHardwareAddr.String() == mine.String() {
			continue // our own probe, looped back
		}
		switch {
		case want[p.SenderIP]:
			out[p.SenderIP] = Conflict{IP: p.SenderIP, MAC: p.SenderHardwareAddr}
		case p.Operation == arp.OperationRequest && p.SenderIP.IsUnspecified() && want[p.TargetIP]:
			if _, seen := out[p.TargetIP]; !seen {
				out[p.TargetIP] = Conflict{IP: p.TargetIP, MAC: p.SenderHardwareAddr, Probing: true}
			}
		}
	}
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return out, err
	}
	return out, nil
}
