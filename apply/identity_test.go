package apply

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/desired"
)

// fakeLAN answers ARP from a table and records what was asked.
type fakeLAN struct {
	macs  map[netip.Addr][]string
	err   error
	asked []netip.Addr
}

func (f *fakeLAN) Resolve(_ context.Context, targets []netip.Addr) (map[netip.Addr][]net.HardwareAddr, error) {
	f.asked = append(f.asked, targets...)
	out := map[netip.Addr][]net.HardwareAddr{}
	for _, t := range targets {
		for _, m := range f.macs[t] {
			hw, err := net.ParseMAC(m)
			if err != nil {
				panic(err)
			}
			out[t] = append(out[t], hw)
		}
	}
	return out, f.err
}

func TestCheckIdentity(t *testing.T) {
	const (
		own   = "02:00:00:00:00:0a"
		other = "02:00:00:00:00:bb"
	)
	ip := netip.MustParseAddr("198.51.100.10")
	d := IdentityOf(lanDecky())
	d.MAC = "02:00:00:00:00:0A" // upper case: compared as a MAC, not a string
	tests := []struct {
		name      string
		mac       string // "-": none to compare
		macs      []string
		closed    map[uint16]bool
		noARP     bool // no Resolver: ports only
		wantWhat  []string
		repair    bool
		wantDials []string
	}{
		{name: "own MAC, ports answer: no drift", macs: []string{own},
			wantDials: []string{"198.51.100.10 22/tcp,2200/tcp", "198.51.100.10 53/tcp"}},
		{name: "another MAC answers (changed by hand): repaired", macs: []string{other},
			wantWhat: []string{"mac 02:00:00:00:00:bb answers for 198.51.100.10, want 02:00:00:00:00:0a"}, repair: true},
		{name: "nothing answers ARP (address changed by hand): repaired",
			wantWhat: []string{"address 198.51.100.10 does not answer ARP"}, repair: true},
		{name: "two MACs answer: another machine claims the address, reported only", macs: []string{own, other},
			wantWhat: []string{"2 MACs answer for 198.51.100.10: 02:00:00:00:00:0a (this decky's), 02:00:00:00:00:bb; another machine claims the address (want only 02:00:00:00:00:0a)"}},
		{name: "a port stopped answering: repaired, naming port and service", macs: []string{own}, closed: map[uint16]bool{2200: true},
			wantWhat:  []string{"2200/tcp (ssh) does not accept connections"},
			repair:    true,
			wantDials: []string{"198.51.100.10 22/tcp,2200/tcp", "198.51.100.10 53/tcp"}},
		{name: "no resolver: ports only", noARP: true, closed: map[uint16]bool{53: true},
			wantWhat:  []string{"53/tcp (dns) does not accept connections"},
			repair:    true,
			wantDials: []string{"198.51.100.10 22/tcp,2200/tcp", "198.51.100.10 53/tcp"}},
		{name: "no MAC to compare (ipvlan): one answer is healthy", mac: "-", macs: []string{other},
			wantDials: []string{"198.51.100.10 22/tcp,2200/tcp", "198.51.100.10 53/tcp"}},
		{name: "no MAC to compare (ipvlan): two answers are still another machine", mac: "-", macs: []string{own, other},
			wantWhat: []string{"2 MACs answer for 198.51.100.10: 02:00:00:00:00:0a, 02:00:00:00:00:bb; another machine claims the address"}},
		{name: "wrong MAC: ports are not dialed (they might reach another machine)", macs: []string{other}, closed: map[uint16]bool{22: true},
			wantWhat: []string{"mac 02:00:00:00:00:bb answers for 198.51.100.10, want 02:00:00:00:00:0a"}, repair: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lan := &fakeLAN{macs: map[netip.Addr][]string{ip: tt.macs}}
			chk := &recordingChecker{closed: tt.closed}
			d := d
			if tt.mac == "-" {
				d.MAC = ""
			}
			in := IdentityInput{Deckies: []IdentityDecky{d}, Resolver: lan, Ports: chk}
			if tt.noARP {
				in.Resolver = nil
			}
			drifts, err := CheckIdentity(t.Context(), in)
			if err != nil {
				t.Fatal(err)
			}
			var what []string
			repair := false
			if len(drifts) > 0 {
				if len(drifts) != 1 || drifts[0].Decky != "d" {
					t.Fatalf("drifts %+v", drifts)
				}
				what, repair = drifts[0].What, drifts[0].Repair
			}
			if !reflect.DeepEqual(what, tt.wantWhat) {
				t.Errorf("what:\n got %q\nwant %q", what, tt.wantWhat)
			}
			if repair != tt.repair {
				t.Errorf("repair %v, want %v", repair, tt.repair)
			}
			if !reflect.DeepEqual(sortedCalls(chk.calls), tt.wantDials) {
				t.Errorf("dials %q, want %q (UDP, check: false and other addresses never)", chk.calls, tt.wantDials)
			}
		})
	}
}

// Several deckies are resolved in one ARP round; only those that drifted
// come back, in input order, and a drift reads as an event's error.
func TestCheckIdentitySeveralDeckies(t *testing.T) {
	a := IdentityDecky{Name: "a", IP: netip.MustParseAddr("198.51.100.10"), MAC: "02:00:00:00:00:0a"}
	b := IdentityDecky{Name: "b", IP: netip.MustParseAddr("198.51.100.11"), MAC: "02:00:00:00:00:0b"}
	c := IdentityDecky{Name: "c", IP: netip.MustParseAddr("198.51.100.12"), MAC: "02:00:00:00:00:0c"}
	lan := &fakeLAN{macs: map[netip.Addr][]string{a.IP: {"02:00:00:00:00:0a"}, c.IP: {"02:00:00:00:00:ff"}}}
	drifts, err := CheckIdentity(t.Context(), IdentityInput{Deckies: []IdentityDecky{a, b, c}, Resolver: lan})
	if err != nil {
		t.Fatal(err)
	}
	if len(lan.asked) != 3 {
		t.Errorf("asked %v, want the three addresses in one round", lan.asked)
	}
	if len(drifts) != 2 || drifts[0].Decky != "b" || drifts[1].Decky != "c" {
		t.Fatalf("drifts %+v, want b then c", drifts)
	}
	if got := drifts[1].Error(); got != "decky c drifted: mac 02:00:00:00:00:ff answers for 198.51.100.12, want 02:00:00:00:00:0c" {
		t.Errorf("Error() = %q", got)
	}
}

// When the check itself fails, no drift is claimed: a decky is never
// recreated because the agent could not look.
func TestCheckIdentityNoConclusionWithoutAnswer(t *testing.T) {
	d := IdentityOf(lanDecky())
	t.Run("the ARP round fails", func(t *testing.T) {
		lan := &fakeLAN{err: errors.New("operation not permitted")}
		drifts, err := CheckIdentity(t.Context(), IdentityInput{Deckies: []IdentityDecky{d}, Resolver: lan, Ports: &recordingChecker{}})
		if err == nil || !strings.Contains(err.Error(), "operation not permitted") || drifts != nil {
			t.Fatalf("drifts %+v err %v, want an error and no drift", drifts, err)
		}
	})
	t.Run("a port check errs for another reason than a closed port", func(t *testing.T) {
		pc := PortCheckerFunc(func(context.Context, netip.Addr, []desired.Port) error { return errors.New("no route") })
		drifts, err := CheckIdentity(t.Context(), IdentityInput{Deckies: []IdentityDecky{d}, Ports: pc})
		if err == nil || !strings.Contains(err.Error(), "service ssh: no route") || len(drifts) != 0 {
			t.Fatalf("drifts %+v err %v, want the error and no drift", drifts, err)
		}
	})
	t.Run("ctx ended", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		drifts, err := CheckIdentity(ctx, IdentityInput{Deckies: []IdentityDecky{d}, Ports: &recordingChecker{closed: map[uint16]bool{22: true}}})
		if !errors.Is(err, context.Canceled) || drifts != nil {
			t.Fatalf("drifts %+v err %v, want context.Canceled and no drift", drifts, err)
		}
	})
}

func sortedCalls(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}
