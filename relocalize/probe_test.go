package relocalize

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// fakeLAN is a pure ProbeFunc: the addresses in busy answer.
type fakeLAN struct {
	busy   map[netip.Addr]bool
	calls  [][]netip.Addr
	probed map[netip.Addr]bool
}

func newFakeLAN(busy ...netip.Addr) *fakeLAN {
	f := &fakeLAN{busy: map[netip.Addr]bool{}, probed: map[netip.Addr]bool{}}
	for _, a := range busy {
		f.busy[a] = true
	}
	return f
}

func (f *fakeLAN) probe(as []netip.Addr) (map[netip.Addr]string, error) {
	f.calls = append(f.calls, as)
	out := map[netip.Addr]string{}
	for _, a := range as {
		f.probed[a] = true
		if f.busy[a] {
			out[a] = fmt.Sprintf("%s is in use on the LAN (answered ARP from 02:00:00:00:00:01)", a)
		}
	}
	return out, nil
}

// addrRun returns n consecutive addresses from first on.
func addrRun(first netip.Addr, n int) []netip.Addr {
	var out []netip.Addr
	for a := first; len(out) < n; a = a.Next() {
		out = append(out, a)
	}
	return out
}

func TestAllocateProbed(t *testing.T) {
	lan := newFakeLAN(ip("198.51.100.3"), ip("198.51.100.4"), ip("198.51.100.9"))
	running := map[string]netip.Addr{"old": ip("198.51.100.9")} // already up: never probed
	fresh := func(name string, a netip.Addr) bool { return running[name] != a }
	in := Input{LAN: lan0, Deckies: []Decky{{Name: "a"}, {Name: "b"}, {Name: "old"}, {Name: "pin", Pinned: ip("198.51.100.4")}},
		Previous: map[string]netip.Addr{"old": ip("198.51.100.9")}}
	res, err := AllocateProbed(in, fresh, lan.probe)
	if err != nil {
		t.Fatal(err)
	}
	a, b, old := res.Assignments["a"], res.Assignments["b"], res.Assignments["old"]
	if a.IP != ip("198.51.100.5") || a.Reason != MovedAfterConflict || !strings.Contains(a.Detail, "198.51.100.3 is in use") {
		t.Errorf("a = %+v, want .5 moved after the conflict on .3", a)
	}
	if b.IP != ip("198.51.100.6") {
		t.Errorf("b = %+v, want .6", b)
	}
	if old.IP != ip("198.51.100.9") || old.Reason != Kept {
		t.Errorf("a running decky must keep its address without a probe: %+v", old)
	}
	var pu *PinnedUnusableError
	if !errors.As(res.Errors["pin"], &pu) || !strings.Contains(pu.Error(), "answered ARP") {
		t.Errorf("pinned address in use must fail the decky: %v", res.Errors["pin"])
	}
	if lan.probed[ip("198.51.100.9")] {
		t.Errorf("the address of a running decky was probed")
	}
	for _, n := range []string{"a", "b"} {
		if !lan.probed[res.Assignments[n].IP] {
			t.Errorf("%s got %s, which was never probed", n, res.Assignments[n].IP)
		}
	}
}

// A LAN whose first N candidates all answer (an office LAN without
// ip_pool): no decky ever gets an address that answers or that was never
// probed, and one burst covers many addresses, so the rounds stay few.
func TestAllocateProbedDenseLAN(t *testing.T) {
	for _, busy := range []int{20, 40, 100} {
		t.Run(fmt.Sprintf("first %d candidates answer", busy), func(t *testing.T) {
			lan := newFakeLAN(addrRun(ip("198.51.100.3"), busy)...)
			running := map[string]netip.Addr{"up": ip("198.51.100.250")}
			fresh := func(name string, a netip.Addr) bool { return running[name] != a }
			in := Input{LAN: lan0, Previous: map[string]netip.Addr{"up": ip("198.51.100.250")},
				Held: map[netip.Addr]string{ip("198.51.100.250"): "up"}}
			for i := 0; i < 5; i++ {
				in.Deckies = append(in.Deckies, Decky{Name: fmt.Sprintf("d%d", i)})
			}
			in.Deckies = append(in.Deckies, Decky{Name: "up"})
			res, err := AllocateProbed(in, fresh, lan.probe)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Errors) != 0 {
				t.Fatalf("errors: %v", res.Errors)
			}
			want := ip("198.51.100.3")
			for i := 0; i < busy; i++ {
				want = want.Next()
			}
			for i := 0; i < 5; i++ {
				n := fmt.Sprintf("d%d", i)
				as := res.Assignments[n]
				if lan.busy[as.IP] || !lan.probed[as.IP] {
					t.Errorf("%s got %s (in use: %v, probed: %v)", n, as.IP, lan.busy[as.IP], lan.probed[as.IP])
				}
				if as.IP != want {
					t.Errorf("%s got %s, want the lowest free address %s", n, as.IP, want)
				}
				want = want.Next()
			}
			if d0 := res.Assignments["d0"]; d0.Reason != MovedAfterConflict || !strings.Contains(d0.Detail, "is in use on the LAN") {
				t.Errorf("d0 does not say why it moved: %+v", d0)
			}
			if up := res.Assignments["up"]; up.IP != ip("198.51.100.250") || up.Reason != Kept {
				t.Errorf("the running decky moved: %+v", up)
			}
			if lan.probed[ip("198.51.100.250")] {
				t.Error("the running decky's address was probed")
			}
			// Rounds grow with log(busy), not busy: 20 in use take at most 3.
			if max := 2 + busy/20; len(lan.calls) > max {
				t.Errorf("%d probe rounds for %d addresses in use, want at most %d", len(lan.calls), busy, max)
			}
			for _, c := range lan.calls {
				if len(c) > MaxProbeBatch {
					t.Errorf("a burst of %d addresses", len(c))
				}
			}
		})
	}
}

func TestAllocateProbedExhaustion(t *testing.T) {
	t.Run("every pool address answers: the pool is exhausted and the error counts them", func(t *testing.T) {
		lan := newFakeLAN(addrRun(ip("198.51.100.64"), 16)...)
		res, err := AllocateProbed(Input{LAN: lan0, Pool: pool("198.51.100.64-198.51.100.79"), Deckies: []Decky{{Name: "a"}, {Name: "b"}}},
			func(string, netip.Addr) bool { return true }, lan.probe)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"a", "b"} {
			var pe *PoolExhaustedError
			if !errors.As(res.Errors[n], &pe) || pe.InUse != 16 || pe.Size != 16 {
				t.Fatalf("%s: want PoolExhaustedError with 16 of 16 in use, got %v", n, res.Errors[n])
			}
			if !strings.Contains(pe.Error(), "of which 16 found in use on the LAN") {
				t.Errorf("message: %s", pe)
			}
		}
	})
	t.Run("more addresses answer than the budget can probe: the decky fails unprobed", func(t *testing.T) {
		wide := LAN{Subnet: netip.MustParsePrefix("198.18.0.0/16"), Gateway: ip("198.18.0.1")}
		lan := newFakeLAN()
		probe := func(as []netip.Addr) (map[netip.Addr]string, error) {
			for _, a := range as {
				lan.busy[a] = true // everything answers
			}
			return lan.probe(as)
		}
		res, err := AllocateProbed(Input{LAN: wide, Deckies: []Decky{{Name: "a"}, {Name: "p", Pinned: ip("198.18.200.1")}}},
			func(string, netip.Addr) bool { return true }, probe)
		if err != nil {
			t.Fatal(err)
		}
		var ue *UnprobedError
		if !errors.As(res.Errors["a"], &ue) || ue.Rounds != MaxProbeRounds || ue.InUse != ue.Probed || ue.Probed < 1000 {
			t.Fatalf("want UnprobedError after the budget, got %v", res.Errors["a"])
		}
		if lan.probed[ue.IP] {
			t.Fatalf("UnprobedError names %s, which was probed", ue.IP)
		}
		if !strings.Contains(ue.Error(), "set ip_pool") {
			t.Errorf("message gives no way out: %s", ue)
		}
		var pu *PinnedUnusableError
		if !errors.As(res.Errors["p"], &pu) {
			t.Fatalf("the pinned decky's address answered: want PinnedUnusableError, got %v", res.Errors["p"])
		}
		if len(res.Assignments) != 0 {
			t.Fatalf("assignments handed out: %v", res.Assignments)
		}
	})
}

func TestAllocateProbedFailsWhenProbeFails(t *testing.T) {
	_, err := AllocateProbed(Input{LAN: lan0, Deckies: []Decky{{Name: "a"}}},
		func(string, netip.Addr) bool { return true },
		func([]netip.Addr) (map[netip.Addr]string, error) { return nil, errors.New("no raw socket") })
	if err == nil || !strings.Contains(err.Error(), "no raw socket") {
		t.Fatalf("got %v", err)
	}
}
