package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	stdsync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
)

// recordingChecker records every CheckPorts call and fails the ports
// listed in closed.
type recordingChecker struct {
	mu     stdsync.Mutex
	calls  []string // "ip ports"
	closed map[uint16]bool
}

func (c *recordingChecker) CheckPorts(_ context.Context, ip netip.Addr, ports []desired.Port) error {
	c.mu.Lock()
	c.calls = append(c.calls, ip.String()+" "+PortsText(ports))
	c.mu.Unlock()
	var bad []desired.Port
	for _, p := range ports {
		if c.closed[p.Number] {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		return &PortsClosedError{IP: ip, Ports: bad, Timeout: time.Second}
	}
	return nil
}

func tcp(n uint16) desired.Port { return desired.Port{Number: n, Proto: "tcp"} }
func udp(n uint16) desired.Port { return desired.Port{Number: n, Proto: "udp"} }

func lanDecky() *DeckySpec {
	return &DeckySpec{Name: "d", IP: netip.MustParseAddr("198.51.100.10"),
		Base: ContainerSpec{Name: "d"},
		Services: []ContainerSpec{
			{Service: "dns", Name: "d-dns", Ports: []desired.Port{tcp(53), udp(53)}, Check: true},
			{Service: "quiet", Name: "d-quiet", Ports: []desired.Port{tcp(23)}, Check: false},
			{Service: "snmp", Name: "d-snmp", Ports: []desired.Port{udp(161)}, Check: true},
			{Service: "ssh", Name: "d-ssh", Ports: []desired.Port{tcp(22), tcp(2200)}, Check: true},
			{Service: "web", Name: "d-web", Check: true},
		}}
}

// steadyEngine reports every container running.
func steadyEngine(d *DeckySpec) *scriptedEngine {
	eng := &scriptedEngine{script: map[string][]engine.State{}}
	for _, c := range d.Containers() {
		eng.script[c.Name] = []engine.State{running(0, "")}
	}
	return eng
}

func TestLANCheckIsPartOfSuccess(t *testing.T) {
	tests := []struct {
		name      string
		closed    map[uint16]bool
		nilCheck  bool
		wantCalls []string
		errHas    []string
	}{
		{name: "every declared TCP port answers: success",
			wantCalls: []string{"198.51.100.10 22/tcp,2200/tcp", "198.51.100.10 53/tcp"}},
		{name: "a port that does not answer fails the decky, naming service and port",
			closed:    map[uint16]bool{22: true},
			wantCalls: []string{"198.51.100.10 22/tcp,2200/tcp", "198.51.100.10 53/tcp"},
			errHas:    []string{"service ssh", "22/tcp", "198.51.100.10"}},
		{name: "no checker: no check", nilCheck: true, closed: map[uint16]bool{22: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := lanDecky()
			chk := &recordingChecker{closed: tt.closed}
			opt := Options{Steady: SteadyOptions{Samples: 1, Interval: time.Millisecond, Timeout: time.Second}, LANCheck: chk}
			if tt.nilCheck {
				opt.LANCheck = nil
			}
			a := NewApplier(steadyEngine(d), "p", "/", engine.NetworkSpec{}, opt, slog.New(slog.DiscardHandler))
			err := a.applyOne(t.Context(), Entry{Decky: "d", Action: Update, spec: d}, nil)
			sort.Strings(chk.calls)
			// Only the decky's own address is dialed; UDP ports, services
			// with check: false and services without ports are not probed.
			if strings.Join(chk.calls, "|") != strings.Join(tt.wantCalls, "|") {
				t.Errorf("checks %q, want %q", chk.calls, tt.wantCalls)
			}
			if len(tt.errHas) == 0 {
				if err != nil {
					t.Fatalf("failed: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrPortClosed) {
				t.Fatalf("err = %v, want a closed-port failure", err)
			}
			for _, s := range tt.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "2200/tcp") || strings.Contains(err.Error(), "service dns") {
				t.Errorf("error %q names ports that answered", err)
			}
		})
	}
}

func TestLANCheckNotRunWhenNotSteady(t *testing.T) {
	d := lanDecky()
	eng := steadyEngine(d)
	eng.script["d-ssh"] = []engine.State{{Status: "exited", ExitCode: 1}}
	chk := &recordingChecker{}
	a := NewApplier(eng, "p", "/", engine.NetworkSpec{}, Options{Steady: SteadyOptions{Samples: 1, Interval: time.Millisecond, Timeout: 30 * time.Millisecond}, LANCheck: chk}, slog.New(slog.DiscardHandler))
	if err := a.applyOne(t.Context(), Entry{Decky: "d", Action: Update, spec: d}, nil); err == nil {
		t.Fatal("an exited service converged")
	}
	if len(chk.calls) != 0 {
		t.Errorf("checked a decky that never became steady: %v", chk.calls)
	}
}

// freePort returns a loopback TCP port nothing listens on.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return uint16(p)
}

func TestDialChecker(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	open, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	var accepted stdsync.WaitGroup
	accepted.Add(1)
	go func() {
		c, err := open.Accept()
		if err == nil {
			c.Close()
			accepted.Done()
		}
	}()
	openPort := uint16(open.Addr().(*net.TCPAddr).Port)
	closedPort := freePort(t)
	chk := DialChecker{Timeout: 500 * time.Millisecond, Interval: 20 * time.Millisecond}

	if err := chk.CheckPorts(t.Context(), lo, []desired.Port{tcp(openPort), udp(closedPort)}); err != nil {
		t.Errorf("open TCP port (and an unprobed UDP one): %v", err)
	}
	accepted.Wait() // the listener saw the connection

	// Long enough for a dial to be refused before the deadline on a loaded
	// machine (the refusal, not the deadline, is the answer to report).
	chk.Timeout = 3 * time.Second
	err = chk.CheckPorts(t.Context(), lo, []desired.Port{tcp(openPort), tcp(closedPort)})
	var pc *PortsClosedError
	if !errors.As(err, &pc) || len(pc.Ports) != 1 || pc.Ports[0] != tcp(closedPort) {
		t.Fatalf("err = %v, want only %d/tcp closed", err, closedPort)
	}
	if want := fmt.Sprintf("%d/tcp (connection refused)", closedPort); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
}

// A port that starts listening after the check begins is retried until it
// answers: the check waits for a slow service instead of failing it.
func TestDialCheckerRetriesUntilTheServiceListens(t *testing.T) {
	port := freePort(t)
	chk := DialChecker{Timeout: 10 * time.Second, Interval: 10 * time.Millisecond}
	done := make(chan error, 1)
	go func() {
		done <- chk.CheckPorts(t.Context(), netip.MustParseAddr("127.0.0.1"), []desired.Port{tcp(port)})
	}()
	// Let some attempts be refused first: poll the port ourselves until it
	// has been refused a few times, then open it.
	for i := 0; i < 3; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			t.Fatal("port open before the test opened it")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Skipf("port taken meanwhile: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if err := <-done; err != nil {
		t.Errorf("check failed although the port opened within the deadline: %v", err)
	}
}

// With Knock set, each attempt is a knock, never a dial: a port the
// knock finds open passes, one refused until the deadline is named with
// the refusal, one that opens after a few refusals passes.
func TestDialCheckerKnocks(t *testing.T) {
	ip := netip.MustParseAddr("198.51.100.9") // never dialed: nothing is listening anywhere
	var (
		mu    stdsync.Mutex
		tries = map[uint16]int{}
	)
	chk := DialChecker{Timeout: 2 * time.Second, Interval: 5 * time.Millisecond,
		Knock: func(ctx context.Context, a netip.AddrPort) error {
			if a.Addr() != ip {
				t.Errorf("knocked at %s, want %s", a, ip)
			}
			if _, ok := ctx.Deadline(); !ok {
				t.Error("a knock without a deadline")
			}
			mu.Lock()
			defer mu.Unlock()
			tries[a.Port()]++
			switch {
			case a.Port() == 22, a.Port() == 8080 && tries[8080] > 3:
				return nil
			}
			return fmt.Errorf("knock %s: %w", a, syscall.ECONNREFUSED)
		}}
	err := chk.CheckPorts(t.Context(), ip, []desired.Port{tcp(22), tcp(23), tcp(8080), udp(53)})
	var pc *PortsClosedError
	if !errors.As(err, &pc) || len(pc.Ports) != 1 || pc.Ports[0] != tcp(23) {
		t.Fatalf("err = %v, want only 23/tcp closed", err)
	}
	if !strings.Contains(err.Error(), "23/tcp (connection refused)") {
		t.Errorf("error %q does not name the refusal", err)
	}
	if tries[22] != 1 || tries[8080] != 4 || tries[53] != 0 {
		t.Errorf("knocks per port %v, want 22 once, 8080 until it opened (4), 53/udp never", tries)
	}
}
