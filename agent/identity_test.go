package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/fake"
	"github.com/decnet/pull-agent/relocalize"
)

// ports is a PortChecker fake: the ports in closed never answer; every
// call is recorded as "ip ports".
type ports struct {
	mu     stdsync.Mutex
	closed map[netip.Addr][]uint16 // the zero address: at every address
	calls  []string
}

func (p *ports) CheckPorts(_ context.Context, ip netip.Addr, ps []desired.Port) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, ip.String()+" "+apply.PortsText(ps))
	var bad []desired.Port
	for _, x := range ps {
		if slices.Contains(p.closed[ip], x.Number) || slices.Contains(p.closed[netip.Addr{}], x.Number) {
			bad = append(bad, x)
		}
	}
	if len(bad) > 0 {
		return &apply.PortsClosedError{IP: ip, Ports: bad, Timeout: time.Second}
	}
	return nil
}

func (p *ports) set(ip netip.Addr, closed ...uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed == nil {
		p.closed = map[netip.Addr][]uint16{}
	}
	p.closed[ip] = closed
}

func (p *ports) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.calls)
}

// arpLAN adds the optional ARP role to the fake LAN: each address answers
// with its decky's derived MAC unless macs says otherwise.
type arpLAN struct {
	*fake.LAN
	mu    stdsync.Mutex
	macs  map[netip.Addr][]string // nil entry: the derived MAC; empty: silent
	err   error
	asked []string // "iface src targets [at MACs via parent]"
	names map[netip.Addr]string
}

func (l *arpLAN) Resolve(_ context.Context, q hostnet.Query) (map[netip.Addr][]net.HardwareAddr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	targets := q.Targets
	asked := q.Iface + " " + q.Src.String() + " " + fmtAddrs(targets)
	if len(q.Expect) > 0 {
		var at []string
		for _, t := range targets {
			if mac, ok := q.Expect[t]; ok {
				at = append(at, mac.String())
			}
		}
		asked += " at " + strings.Join(at, ",") + " via " + q.Parent
	}
	l.asked = append(l.asked, asked)
	if l.err != nil {
		return nil, l.err
	}
	out := map[netip.Addr][]net.HardwareAddr{}
	for _, t := range targets {
		macs, ok := l.macs[t]
		if !ok {
			macs = []string{relocalize.MAC("w", l.names[t])}
		}
		for _, m := range macs {
			hw, _ := net.ParseMAC(m)
			out[t] = append(out[t], hw)
		}
	}
	return out, nil
}

func fmtAddrs(as []netip.Addr) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, " ")
}

// driftWorld is a world whose LAN answers ARP and whose deckies' ports
// are checked by a fake; a and b run (ssh; ssh and http).
func driftWorld(t *testing.T) (*world, *arpLAN, *ports, *bytes.Buffer) {
	t.Helper()
	w := newWorld(t)
	lan := &arpLAN{LAN: w.lan, macs: map[netip.Addr][]string{}, names: map[netip.Addr]string{}}
	pc := w.ports
	var logs bytes.Buffer
	a, err := agent.New(w.cfg, agent.Deps{Engine: w.eng, LAN: lan, Source: source{w.src}, Outbox: w.box, Reporter: w.rep, Ports: pc,
		Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	w.a = a
	w.push("a:ssh", "b:ssh,http")
	w.mustPass(false)
	for name, as := range w.a.State().Addresses {
		lan.names[as.IP] = name
	}
	return w, lan, pc, &logs
}

func (w *world) ip(decky string) netip.Addr { return w.a.State().Addresses[decky].IP }

func TestIdentityDriftIsReportedAndRepaired(t *testing.T) {
	tests := []struct {
		name       string
		drift      func(w *world, lan *arpLAN, pc *ports)
		wantEvents []string
		errHas     string
		recreated  bool
	}{
		{name: "another MAC answers: drift, then the decky is recreated",
			drift:      func(w *world, lan *arpLAN, _ *ports) { lan.macs[w.ip("a")] = []string{"02:de:ad:be:ef:01"} },
			wantEvents: []string{"a drift failed", "a repair succeeded"},
			errHas:     "mac 02:de:ad:be:ef:01 answers for 198.51.100.", recreated: true},
		{name: "the address does not answer ARP: drift, repaired",
			drift:      func(w *world, lan *arpLAN, _ *ports) { lan.macs[w.ip("a")] = []string{} },
			wantEvents: []string{"a drift failed", "a repair succeeded"},
			errHas:     "does not answer ARP", recreated: true},
		{name: "a declared port stopped answering: drift, repaired",
			drift: func(w *world, _ *arpLAN, pc *ports) {
				pc.set(w.ip("a"), 22)
				// A firewall rule in the decky's namespace goes with it.
				w.eng.UpFn = func(ctx context.Context, p *types.Project, services, recreate []string) error {
					pc.set(w.ip("a"))
					return w.eng.UpDefault(ctx, p, services, recreate)
				}
			},
			wantEvents: []string{"a drift failed", "a repair succeeded"},
			errHas:     "22/tcp (ssh) does not accept connections", recreated: true},
		{name: "a port still closed after the repair fails the repair",
			drift:      func(w *world, _ *arpLAN, pc *ports) { pc.set(w.ip("a"), 22) },
			wantEvents: []string{"a drift failed", "a repair failed"},
			errHas:     "22/tcp (ssh) does not accept connections", recreated: true},
		{name: "another machine answers too: reported, not repaired",
			drift: func(w *world, lan *arpLAN, _ *ports) {
				lan.macs[w.ip("a")] = []string{relocalize.MAC("w", "a"), "02:de:ad:be:ef:02"}
			},
			wantEvents: []string{"a drift failed"},
			errHas:     "another machine claims the address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, lan, pc, _ := driftWorld(t)
			before := w.eng.Mutations()
			tt.drift(w, lan, pc)
			res := w.mustPass(true)
			if got := events(res.Events); !slices.Equal(got, tt.wantEvents) {
				t.Fatalf("events = %v, want %v", got, tt.wantEvents)
			}
			d := res.Events[0]
			if d.Operation != agent.OpDrift || !strings.Contains(d.Error, tt.errHas) || d.Commit != res.Commit || d.ConfigHash == "" {
				t.Errorf("drift event %+v, want operation drift naming %q", d, tt.errHas)
			}
			if got := events(w.rep.Events()); !slices.Contains(got, "a drift failed") {
				t.Errorf("the drift event was not delivered: %v", got)
			}
			up := slices.ContainsFunc(w.eng.Mutations()[len(before):], func(c string) bool { return c == "Up a,a-ssh" })
			if up != tt.recreated {
				t.Errorf("recreated %v, want %v; mutations %v", up, tt.recreated, w.eng.Mutations()[len(before):])
			}
			for _, c := range w.eng.Mutations()[len(before):] {
				if strings.Contains(c, " b") {
					t.Errorf("b was touched: %s", c)
				}
			}
		})
	}
}

// An address claimed by another machine is reported once while it lasts,
// and again when it comes back after it went away.
func TestIdentityDriftReportedOnceWhileItLasts(t *testing.T) {
	w, lan, _, _ := driftWorld(t)
	lan.macs[w.ip("a")] = []string{relocalize.MAC("w", "a"), "02:de:ad:be:ef:02"}
	var got []string
	for range 2 {
		got = append(got, events(w.mustPass(true).Events)...)
	}
	delete(lan.macs, w.ip("a"))
	got = append(got, events(w.mustPass(true).Events)...)
	lan.macs[w.ip("a")] = []string{relocalize.MAC("w", "a"), "02:de:ad:be:ef:02"}
	got = append(got, events(w.mustPass(true).Events)...)
	if want := []string{"a drift failed", "a drift failed"}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v (once, then again after it cleared)", got, want)
	}
}

// Only full passes look, only at deckies running as desired, from the
// helper link with the worker's address; a failed ARP round concludes
// nothing.
func TestIdentityCheckScope(t *testing.T) {
	t.Run("a pass that is not full does not look", func(t *testing.T) {
		w, lan, pc, _ := driftWorld(t)
		n := pc.count()
		lan.macs[w.ip("a")] = []string{}
		if res := w.mustPass(false); len(res.Events) != 0 {
			t.Fatalf("events %v", events(res.Events))
		}
		if pc.count() != n || len(lan.asked) != 0 {
			t.Errorf("a skipped pass checked: ports %d->%d, arp %v", n, pc.count(), lan.asked)
		}
	})
	t.Run("a full pass asks from the helper link", func(t *testing.T) {
		w, lan, pc, _ := driftWorld(t)
		n := pc.count()
		if res := w.mustPass(true); len(res.Events) != 0 {
			t.Fatalf("a clean full pass reported %v", events(res.Events))
		}
		// Each decky at its derived MAC, the LAN by a broadcast on the NIC.
		want := fmt.Sprintf("decnet_macvlan0 198.51.100.2 %s at %s,%s via eth1", fmtAddrs([]netip.Addr{w.ip("a"), w.ip("b")}),
			relocalize.MAC("w", "a"), relocalize.MAC("w", "b"))
		if len(lan.asked) != 1 || lan.asked[0] != want {
			t.Errorf("arp asked %q, want one round %q", lan.asked, want)
		}
		// a: ssh 22; b: http 80 and ssh 22.
		if got := pc.count() - n; got != 3 {
			t.Errorf("%d port checks, want 3 (one per service)", got)
		}
	})
	t.Run("a failed ARP round concludes nothing", func(t *testing.T) {
		w, lan, _, logs := driftWorld(t)
		lan.err = errors.New("operation not permitted")
		before := w.eng.Mutations()
		if res := w.mustPass(true); len(res.Events) != 0 {
			t.Fatalf("events %v", events(res.Events))
		}
		if len(w.eng.Mutations()) != len(before) {
			t.Errorf("mutations after a failed check: %v", w.eng.Mutations()[len(before):])
		}
		if !strings.Contains(logs.String(), "operation not permitted") {
			t.Errorf("the failed check was not logged:\n%s", logs)
		}
	})
}

// The LAN check is part of success: a decky whose declared port does not
// answer fails, naming the port and service; the helper link routes to it
// before apply. The next pass verifies it again (it is not taken as
// unchanged) without touching a container, and it succeeds once the port
// answers.
func TestLANCheckIsWired(t *testing.T) {
	w := newWorld(t)
	w.ports.set(netip.Addr{}, 22)
	w.push("a:ssh")
	res, err := w.pass(false)
	if err != nil {
		t.Fatal(err)
	}
	if got := events(res.Events); !slices.Equal(got, []string{"a deploy failed"}) {
		t.Fatalf("events = %v", got)
	}
	for _, s := range []string{"22/tcp", "service ssh"} {
		if !strings.Contains(res.Events[0].Error, s) {
			t.Errorf("the failure %q does not name %q", res.Events[0].Error, s)
		}
	}
	ip := w.ip("a")
	if hs := w.lan.Helpers(); len(hs) == 0 || !slices.Contains(hs[0].Deckies, ip) {
		t.Errorf("the helper link had no route to %s before apply: %+v", ip, hs)
	}
	w.ports.set(netip.Addr{})
	before := len(w.eng.Mutations())
	res = w.mustPass(false)
	if got := events(res.Events); !slices.Equal(got, []string{"a deploy succeeded"}) {
		t.Fatalf("events of the verifying pass = %v", got)
	}
	if len(res.Changes.Entries) != 1 || res.Changes.Entries[0].Action != apply.Verify {
		t.Errorf("change set %+v, want verify", res.Changes.Entries)
	}
	for _, m := range w.eng.Mutations()[before:] {
		if strings.HasPrefix(m, "Up ") || strings.HasPrefix(m, "Remove ") {
			t.Errorf("verifying touched containers: %s", m)
		}
	}
}

// Without a helper link nothing is checked from the LAN: a warning, once.
func TestNoHelperNoLANCheckWarnedOnce(t *testing.T) {
	w := newWorld(t, func(c *agent.Config) { c.Helper = "" })
	var logs bytes.Buffer
	a, err := agent.New(w.cfg, agent.Deps{Engine: w.eng, LAN: w.lan, Source: source{w.src}, Outbox: w.box, Reporter: w.rep,
		Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	w.a = a
	w.push("a:ssh")
	if got := events(w.mustPass(true).Events); !slices.Equal(got, []string{"a deploy succeeded"}) {
		t.Fatalf("events = %v", got)
	}
	w.mustPass(true)
	if n := strings.Count(logs.String(), "no host helper link"); n != 1 {
		t.Errorf("warned %d times, want once:\n%s", n, logs.String())
	}
}

// With ipvlan every decky answers ARP with the parent NIC's MAC: that is
// not drift (no MAC is compared); the ARP round goes out of decnet_ipvlan0.
func TestIdentityIpvlanComparesNoMAC(t *testing.T) {
	w := newWorld(t)
	lan := &arpLAN{LAN: w.lan, macs: map[netip.Addr][]string{}, names: map[netip.Addr]string{}}
	a, err := agent.New(w.cfg, agent.Deps{Engine: w.eng, LAN: lan, Source: source{w.src}, Outbox: w.box, Reporter: w.rep, Ports: w.ports})
	if err != nil {
		t.Fatal(err)
	}
	w.a = a
	w.src.Push(map[string]string{"fleet.yaml": fleetYAML, "hosts/w.yaml": "network:\n  driver: ipvlan\ndeckies:\n  - name: a\n    services: [ssh]\n"})
	w.mustPass(false)
	lan.macs[w.ip("a")] = []string{"02:00:00:00:00:99"}
	if res := w.mustPass(true); len(res.Events) != 0 {
		t.Fatalf("events %v: the parent's MAC taken for drift", events(res.Events))
	}
	// No MAC to ask at: every ipvlan decky shares the parent's.
	if len(lan.asked) != 1 || !strings.HasPrefix(lan.asked[0], "decnet_ipvlan0 ") || strings.Contains(lan.asked[0], " at ") {
		t.Errorf("arp asked %v, want one round of broadcasts from decnet_ipvlan0", lan.asked)
	}
}
