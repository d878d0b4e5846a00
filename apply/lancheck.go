package apply

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	stdsync "sync"
	"syscall"
	"time"

	"github.com/decnet/pull-agent/desired"
)

// PortChecker checks, from the worker's side of the decoy LAN, that a
// decky answers on its declared ports. The Applier calls it after the
// decky's containers are steady, once per service with the check on, with
// the decky's own address and the service's TCP ports only. An error fails
// the decky; it should name each port that did not answer ("22/tcp").
type PortChecker interface {
	CheckPorts(ctx context.Context, ip netip.Addr, ports []desired.Port) error
}

// PortCheckerFunc adapts a function to [PortChecker], e.g. to make sure
// the host helper link routes to ip before delegating to a [DialChecker].
type PortCheckerFunc func(ctx context.Context, ip netip.Addr, ports []desired.Port) error

// CheckPorts calls f.
func (f PortCheckerFunc) CheckPorts(ctx context.Context, ip netip.Addr, ports []desired.Port) error {
	return f(ctx, ip, ports)
}

// DialChecker is the real [PortChecker]: it opens a TCP connection to each
// port at the decky's address and closes it at once, retrying each port
// until it accepts or Timeout passes. It sends nothing: a SYN, the
// handshake and a close are all a decoy sees. Only the address it is given
// is ever dialed.
type DialChecker struct {
	// Timeout is how long a port may take to answer; default 15s.
	Timeout time.Duration
	// Interval is the pause between attempts on a port; default 250ms.
	Interval time.Duration
	// Device, when set, binds every connection to that network interface
	// (SO_BINDTODEVICE), e.g. the host helper link, so a probe can only
	// leave through it; "" follows the routing table (the helper link's
	// /32 route to the decky).
	Device string
	// Knock, when set, checks each attempt at a port instead of a dial: a
	// half-open handshake (hostnet.Knocker) that the decoy's service never
	// sees. It returns nil when the port accepts connections and an error
	// wrapping ECONNREFUSED when it refuses them.
	Knock func(ctx context.Context, addr netip.AddrPort) error
}

// ErrPortClosed classifies a LAN check failure ([PortsClosedError]).
var ErrPortClosed = errors.New("declared port does not answer")

// PortsClosedError lists the ports that did not accept a connection.
type PortsClosedError struct {
	IP      netip.Addr
	Ports   []desired.Port
	Timeout time.Duration
	Last    map[desired.Port]error // the last dial error of each port
}

func (e *PortsClosedError) Error() string {
	parts := make([]string, len(e.Ports))
	for i, p := range e.Ports {
		parts[i] = PortText(p)
		if err := e.Last[p]; err != nil {
			parts[i] += " (" + dialReason(err) + ")"
		}
	}
	return fmt.Sprintf("%s did not accept a TCP connection at %s within %s", strings.Join(parts, ", "), e.IP, e.Timeout)
}

// Is makes errors.Is(err, ErrPortClosed) true.
func (e *PortsClosedError) Is(target error) bool { return target == ErrPortClosed }

// dialReason shortens a dial error to its cause ("connection refused").
func dialReason(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "no answer"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer"
	}
	return err.Error()
}

var _ PortChecker = DialChecker{}

// CheckPorts dials every TCP port of ports at ip (UDP ports are skipped:
// a silent UDP service is indistinguishable from a closed one). It returns
// a *PortsClosedError naming the ports that never accepted a connection.
func (c DialChecker) CheckPorts(ctx context.Context, ip netip.Addr, ports []desired.Port) error {
	timeout, interval := c.Timeout, c.Interval
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	if !ip.IsValid() {
		return fmt.Errorf("LAN check: no address to check")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var tcp []desired.Port
	for _, p := range ports {
		if p.Proto == "tcp" {
			tcp = append(tcp, p)
		}
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	if c.Device != "" {
		dev := c.Device
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = syscall.BindToDevice(int(fd), dev) }); err != nil {
				return err
			}
			return serr
		}
	}
	var (
		mu     stdsync.Mutex
		closed = map[desired.Port]error{}
		wg     stdsync.WaitGroup
	)
	for _, p := range tcp {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := netip.AddrPortFrom(ip, p.Number)
			var last error // the last answer before the deadline: "connection refused" says more than the deadline
			for {
				err := c.try(ctx, d, addr)
				if err == nil {
					return
				}
				if ctx.Err() == nil || last == nil {
					last = err
				}
				select {
				case <-ctx.Done():
					mu.Lock()
					closed[p] = last
					mu.Unlock()
					return
				case <-time.After(interval):
				}
			}
		}()
	}
	wg.Wait()
	if len(closed) == 0 {
		return nil
	}
	e := &PortsClosedError{IP: ip, Timeout: timeout, Last: closed}
	for _, p := range tcp {
		if _, ok := closed[p]; ok {
			e.Ports = append(e.Ports, p)
		}
	}
	return e
}

// try is one attempt at a port: a knock, or a dial closed at once.
func (c DialChecker) try(ctx context.Context, d net.Dialer, addr netip.AddrPort) error {
	if c.Knock != nil {
		ctx, cancel := context.WithTimeout(ctx, d.Timeout)
		defer cancel()
		return c.Knock(ctx, addr)
	}
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err == nil {
		conn.Close()
	}
	return err
}

// checkLAN runs the LAN check of a steady decky: each service with the
// check on and at least one TCP port, all at once, at the decky's own
// address only. Errors name the service and its ports.
func (a *Applier) checkLAN(ctx context.Context, d *DeckySpec) error {
	if a.opt.LANCheck == nil {
		return nil
	}
	var (
		mu   stdsync.Mutex
		errs = map[string]error{}
		wg   stdsync.WaitGroup
	)
	for _, s := range d.Services {
		if !s.Check || !hasTCP(s.Ports) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.opt.LANCheck.CheckPorts(ctx, d.IP, tcpOnly(s.Ports)); err != nil {
				mu.Lock()
				errs[s.Service] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) == 0 {
		return nil
	}
	var out []error
	for _, s := range d.Services { // service order: a stable message
		if err, ok := errs[s.Service]; ok {
			out = append(out, fmt.Errorf("LAN check of decky %s, service %s: %w", d.Name, s.Service, err))
		}
	}
	return errors.Join(out...)
}

func hasTCP(ps []desired.Port) bool { return len(tcpOnly(ps)) > 0 }

func tcpOnly(ps []desired.Port) []desired.Port {
	var out []desired.Port
	for _, p := range ps {
		if p.Proto == "tcp" {
			out = append(out, p)
		}
	}
	return out
}
