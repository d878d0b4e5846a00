package relocalize

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/desired"
)

var (
	lan0 = LAN{
		Interface: "eth0",
		Subnet:    netip.MustParsePrefix("198.51.100.0/24"),
		Gateway:   netip.MustParseAddr("198.51.100.1"),
		HostAddrs: []netip.Addr{netip.MustParseAddr("198.51.100.2")},
	}
	ip = netip.MustParseAddr
)

func pool(s string) *desired.Pool {
	p, msg := desired.ParsePool(s)
	if msg != "" {
		panic(msg)
	}
	return p
}

func TestAllocate(t *testing.T) {
	tests := []struct {
		name string
		in   Input
		want map[string]string // decky -> "ip reason" or "error: text"
	}{
		{
			name: "new deckies take the lowest free addresses in name order, skipping gateway and host",
			in:   Input{LAN: lan0, Deckies: []Decky{{Name: "b"}, {Name: "a"}, {Name: "c"}}},
			want: map[string]string{"a": "198.51.100.3 allocated", "b": "198.51.100.4 allocated", "c": "198.51.100.5 allocated"},
		},
		{
			name: "previous addresses are kept whatever the list order",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "z"}, {Name: "a"}},
				Previous: map[string]netip.Addr{"z": ip("198.51.100.3"), "a": ip("198.51.100.9")}},
			want: map[string]string{"z": "198.51.100.3 kept", "a": "198.51.100.9 kept"},
		},
		{
			name: "a removed decky frees its address for the next new one",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "b"}, {Name: "new"}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3"), "b": ip("198.51.100.4")}},
			want: map[string]string{"b": "198.51.100.4 kept", "new": "198.51.100.3 allocated"},
		},
		{
			name: "pinned address on the local subnet is honoured and beats a sticky one",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "a"}, {Name: "p", Pinned: ip("198.51.100.3")}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3")}},
			want: map[string]string{"p": "198.51.100.3 pinned", "a": "198.51.100.4 moved"},
		},
		{
			name: "pinned address on another subnet is relocalized",
			in:   Input{LAN: lan0, Deckies: []Decky{{Name: "p", Pinned: ip("192.0.2.70")}}},
			want: map[string]string{"p": "198.51.100.3 relocalized"},
		},
		{
			name: "pinned address that is the worker's own fails, others still placed",
			in:   Input{LAN: lan0, Deckies: []Decky{{Name: "p", Pinned: ip("198.51.100.2")}, {Name: "q"}}},
			want: map[string]string{"p": "error: pinned address 198.51.100.2 is this worker's own address; pick another ip: in the host file", "q": "198.51.100.3 allocated"},
		},
		{
			name: "reserved addresses are skipped and a sticky reserved address moves",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "a"}, {Name: "b"}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3")},
				Reserved: map[netip.Addr]string{ip("198.51.100.3"): "answers ARP from 02:00:00:00:00:01", ip("198.51.100.4"): "is held by container printer"}},
			want: map[string]string{"a": "198.51.100.5 moved", "b": "198.51.100.6 allocated"},
		},
		{
			name: "pool bounds allocation and exhaustion fails only the deckies that do not fit",
			in:   Input{LAN: lan0, Pool: pool("198.51.100.64-198.51.100.65"), Deckies: []Decky{{Name: "a"}, {Name: "b"}, {Name: "c"}}},
			want: map[string]string{"a": "198.51.100.64 allocated", "b": "198.51.100.65 allocated",
				"c": "error: no free address left in pool 198.51.100.64-198.51.100.65 (2 addresses: 2 taken by deckies, 0 reserved)"},
		},
		{
			name: "a previous address outside a new pool moves into the pool",
			in: Input{LAN: lan0, Pool: pool("198.51.100.64/30"), Deckies: []Decky{{Name: "a"}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3")}},
			want: map[string]string{"a": "198.51.100.64 moved"},
		},
		{
			name: "pool on another subnet is an error, not a guess",
			in:   Input{LAN: lan0, Pool: pool("192.0.2.64/27"), Deckies: []Decky{{Name: "a"}, {Name: "p", Pinned: ip("198.51.100.10")}}},
			want: map[string]string{"a": "error: ip_pool 192.0.2.64/27 is not on the local subnet 198.51.100.0/24; fix the pool or the host's network override", "p": "198.51.100.10 pinned"},
		},
		{
			name: "an address still held by a removed decky's containers is not given to a new decky",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "b"}, {Name: "new"}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3"), "b": ip("198.51.100.4")},
				Held:     map[netip.Addr]string{ip("198.51.100.3"): "a", ip("198.51.100.4"): "b"}},
			want: map[string]string{"b": "198.51.100.4 kept", "new": "198.51.100.5 allocated"},
		},
		{
			name: "a failed but running decky keeps its address reserved",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "f", Pinned: ip("198.51.100.1")}, {Name: "n"}},
				Previous: map[string]netip.Addr{"f": ip("198.51.100.3")},
				Held:     map[netip.Addr]string{ip("198.51.100.3"): "f"}},
			want: map[string]string{"f": "error: pinned address 198.51.100.1 is the gateway address; pick another ip: in the host file", "n": "198.51.100.4 allocated"},
		},
		{
			name: "a decky moving away keeps its old address reserved too",
			in: Input{LAN: lan0, Pool: pool("198.51.100.3-198.51.100.9"), Deckies: []Decky{{Name: "m"}, {Name: "n"}},
				Previous: map[string]netip.Addr{"m": ip("198.51.100.40")},
				Held:     map[netip.Addr]string{ip("198.51.100.40"): "m", ip("198.51.100.3"): "gone"}},
			want: map[string]string{"m": "198.51.100.4 moved", "n": "198.51.100.5 allocated"},
		},
		{
			name: "a decky whose state was lost keeps the address its containers hold",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "x"}, {Name: "y"}},
				Held: map[netip.Addr]string{ip("198.51.100.9"): "x"}},
			want: map[string]string{"x": "198.51.100.9 kept", "y": "198.51.100.3 allocated"},
		},
		{
			name: "a pin on an address another decky still holds waits while that decky moves away",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "q"}, {Name: "p", Pinned: ip("198.51.100.3")}},
				Previous: map[string]netip.Addr{"q": ip("198.51.100.3")},
				Held:     map[netip.Addr]string{ip("198.51.100.3"): "q"}},
			want: map[string]string{"p": "error: pinned address 198.51.100.3 is still held by the containers of decky q; pick another ip: in the host file", "q": "198.51.100.4 moved"},
		},
		{
			name: "a pin on its own held address is kept",
			in: Input{LAN: lan0, Deckies: []Decky{{Name: "p", Pinned: ip("198.51.100.3")}, {Name: "n"}},
				Held: map[netip.Addr]string{ip("198.51.100.3"): "p"}},
			want: map[string]string{"p": "198.51.100.3 pinned", "n": "198.51.100.4 allocated"},
		},
		{
			name: "exhaustion counts addresses held by other deckies",
			in: Input{LAN: lan0, Pool: pool("198.51.100.64-198.51.100.66"), Deckies: []Decky{{Name: "a"}, {Name: "b"}},
				Reserved: map[netip.Addr]string{ip("198.51.100.66"): "answers ARP"},
				Held:     map[netip.Addr]string{ip("198.51.100.64"): "gone"}},
			want: map[string]string{"a": "198.51.100.65 allocated",
				"b": "error: no free address left in pool 198.51.100.64-198.51.100.66 (3 addresses: 2 taken by deckies, 1 reserved)"},
		},
		{
			name: "broadcast is never handed out",
			in: Input{LAN: LAN{Subnet: netip.MustParsePrefix("203.0.113.0/30"), Gateway: ip("203.0.113.1")},
				Deckies: []Decky{{Name: "a"}, {Name: "b"}}},
			want: map[string]string{"a": "203.0.113.2 allocated", "b": "error: no free address left in pool 203.0.113.0/30 (2 addresses: 1 taken by deckies, 1 reserved)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Allocate(tt.in)
			got := map[string]string{}
			for n, a := range res.Assignments {
				got[n] = a.IP.String() + " " + string(a.Reason)
			}
			for n, err := range res.Errors {
				got[n] = "error: " + err.Error()
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestAllocateErrorsAreTyped(t *testing.T) {
	res := Allocate(Input{LAN: lan0, Pool: pool("198.51.100.64/32"), Deckies: []Decky{{Name: "a"}, {Name: "b"}, {Name: "p", Pinned: ip("198.51.100.1")}}})
	var ex *PoolExhaustedError
	if !errors.As(res.Errors["b"], &ex) || ex.Pool != "198.51.100.64/32" {
		t.Errorf("b: want PoolExhaustedError, got %v", res.Errors["b"])
	}
	var pu *PinnedUnusableError
	if !errors.As(res.Errors["p"], &pu) || !strings.Contains(pu.Reason, "gateway") {
		t.Errorf("p: want PinnedUnusableError about the gateway, got %v", res.Errors["p"])
	}
	if pu != nil && pu.HeldBy != "" {
		t.Errorf("p: the gateway is not held by a decky, got HeldBy %q", pu.HeldBy)
	}
	res = Allocate(Input{LAN: lan0, Deckies: []Decky{{Name: "p", Pinned: ip("198.51.100.3")}, {Name: "q"}},
		Previous: map[string]netip.Addr{"q": ip("198.51.100.3")}, Held: map[netip.Addr]string{ip("198.51.100.3"): "q"}})
	if !errors.As(res.Errors["p"], &pu) || pu.HeldBy != "q" {
		t.Errorf("p: want PinnedUnusableError held by q (a transient wait), got %v", res.Errors["p"])
	}
	// Held by another decky but also found in use: not a mere wait.
	res = Allocate(Input{LAN: lan0, Deckies: []Decky{{Name: "p", Pinned: ip("198.51.100.3")}},
		Reserved: map[netip.Addr]string{ip("198.51.100.3"): "answers ARP"}, Held: map[netip.Addr]string{ip("198.51.100.3"): "q"}})
	if !errors.As(res.Errors["p"], &pu) || pu.HeldBy != "" {
		t.Errorf("p: an address in use on the LAN is no wait: %v", res.Errors["p"])
	}
}

func TestMACIsStableLocalUnicastAndDistinct(t *testing.T) {
	if MAC("w1", "a") != MAC("w1", "a") {
		t.Fatal("MAC is not deterministic")
	}
	seen := map[string]string{}
	for h := 0; h < 20; h++ {
		for d := 0; d < 200; d++ {
			host, decky := fmt.Sprintf("w%d", h), fmt.Sprintf("d%d", d)
			m := MAC(host, decky)
			var b0 byte
			fmt.Sscanf(m[:2], "%02x", &b0)
			if b0&0x02 == 0 || b0&0x01 != 0 {
				t.Fatalf("MAC %s of %s/%s is not locally administered unicast", m, host, decky)
			}
			if prev, dup := seen[m]; dup {
				t.Fatalf("MAC %s shared by %s and %s/%s", m, prev, host, decky)
			}
			seen[m] = host + "/" + decky
		}
	}
}

// checkInvariants asserts what must hold for every allocation.
func checkInvariants(t *testing.T, in Input, res Result) {
	t.Helper()
	owner := map[netip.Addr]string{}
	for name, a := range res.Assignments {
		if other, dup := owner[a.IP]; dup {
			t.Fatalf("%s and %s share %s", name, other, a.IP)
		}
		owner[a.IP] = name
		if why := desired.ReservedIn(a.IP, in.LAN.Subnet, in.LAN.Gateway); why != "" {
			t.Fatalf("%s got %s, which %s", name, a.IP, why)
		}
		if _, r := in.Reserved[a.IP]; r {
			t.Fatalf("%s got reserved address %s", name, a.IP)
		}
		if h, held := in.Held[a.IP]; held && h != name {
			t.Fatalf("%s got %s, which the containers of decky %s still hold", name, a.IP, h)
		}
		for _, h := range in.LAN.HostAddrs {
			if a.IP == h {
				t.Fatalf("%s got the host address %s", name, a.IP)
			}
		}
		if a.Reason != Pinned && in.Pool != nil && !in.Pool.Contains(a.IP) {
			t.Fatalf("%s got %s outside pool %s", name, a.IP, in.Pool.Text)
		}
		if _, failed := res.Errors[name]; failed {
			t.Fatalf("%s has both an address and an error", name)
		}
	}
	for _, d := range in.Deckies {
		_, ok := res.Assignments[d.Name]
		_, failed := res.Errors[d.Name]
		if !ok && !failed {
			t.Fatalf("%s got neither an address nor an error", d.Name)
		}
	}
}

// FuzzAllocate replays 300 random fleet edits from a fuzzed seed and
// checks, after each pass, that no two deckies share an address, no decky
// gets an address that is reserved or still held by another decky's
// containers (removals in progress, failed deckies left running), every
// decky that survives an edit keeps its address unless that address became
// invalid, and, with duplicate-address detection against a fake LAN (a
// block at the bottom of the pool plus scattered hosts answering), every
// address used for the first time was probed and found free.
func FuzzAllocate(f *testing.F) {
	f.Add(uint64(1), uint8(26))
	f.Add(uint64(42), uint8(28))
	f.Add(uint64(7), uint8(30))
	f.Add(uint64(9), uint8(24))
	f.Fuzz(func(t *testing.T, seed uint64, bits uint8) {
		bits = 24 + bits%7 // /24 .. /30
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		sn := netip.PrefixFrom(ip("198.51.100.0"), int(bits)).Masked()
		size := 1 << (32 - bits)
		nth := func(i int) netip.Addr {
			a := sn.Addr()
			for ; i > 0; i-- {
				a = a.Next()
			}
			return a
		}
		l := LAN{Subnet: sn, Gateway: sn.Addr().Next(), HostAddrs: []netip.Addr{sn.Addr().Next().Next()}}
		var pl *desired.Pool
		if rng.IntN(2) == 0 && bits <= 28 {
			pl = pool(fmt.Sprintf("%s-%s", sn.Addr().Next().Next().Next(), desired.Broadcast(sn).Prev().Prev()))
		}
		// The LAN: a dense block at the bottom, and a few scattered hosts.
		busy := newFakeLAN()
		for i := 0; i < rng.IntN(size/2+1); i++ {
			busy.busy[nth(3+i)] = true
		}
		for i := 0; i < rng.IntN(size/8+1); i++ {
			busy.busy[nth(rng.IntN(size))] = true
		}
		live := map[string]netip.Addr{} // decky -> pin (zero when none)
		prev := map[string]netip.Addr{}
		held := map[netip.Addr]string{} // what the containers hold now
		for round := 0; round < 300; round++ {
			// edit: add, pin, remove; a removed decky's containers may
			// still hold its address for this pass (removal in parallel).
			switch op := rng.IntN(10); {
			case op < 4:
				live[fmt.Sprintf("d%03d", rng.IntN(200))] = netip.Addr{}
			case op < 5:
				live[fmt.Sprintf("p%02d", rng.IntN(10))] = nth(rng.IntN(size))
			case op < 7:
				for n := range live {
					delete(live, n)
					break
				}
			}
			for a, n := range held {
				if _, ok := live[n]; !ok && rng.IntN(2) == 0 {
					delete(held, a)
				}
			}
			reserved := map[netip.Addr]string{}
			for i := 0; i < rng.IntN(3); i++ {
				reserved[nth(rng.IntN(size))] = "answers ARP"
			}
			in := Input{Host: "w", LAN: l, Pool: pl, Previous: prev, Reserved: reserved, Held: held}
			for n, pin := range live {
				in.Deckies = append(in.Deckies, Decky{Name: n, Pinned: pin})
			}
			rng.Shuffle(len(in.Deckies), func(i, j int) { in.Deckies[i], in.Deckies[j] = in.Deckies[j], in.Deckies[i] })
			res := Allocate(in)
			checkInvariants(t, in, res)
			// Determinism: the same input in another order gives the same result.
			rng.Shuffle(len(in.Deckies), func(i, j int) { in.Deckies[i], in.Deckies[j] = in.Deckies[j], in.Deckies[i] })
			if again := Allocate(in); fmt.Sprint(again.Assignments) != fmt.Sprint(res.Assignments) {
				t.Fatalf("round %d: allocation depends on list order", round)
			}
			pinned := map[netip.Addr]bool{}
			for _, d := range in.Deckies {
				pinned[d.Pinned] = true
			}
			for n, a := range res.Assignments {
				if p, had := prev[n]; had && p != a.IP && live[n] == (netip.Addr{}) {
					if _, r := reserved[p]; !r && !pinned[p] {
						t.Fatalf("round %d: %s moved from %s to %s although %s stayed valid", round, n, p, a.IP, p)
					}
				}
			}

			// The same pass with duplicate-address detection.
			running := map[string]netip.Addr{}
			for a, n := range held {
				running[n] = a
			}
			busy.probed = map[netip.Addr]bool{}
			pres, err := AllocateProbed(in, func(n string, a netip.Addr) bool { return running[n] != a }, busy.probe)
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, in, pres)
			for n, a := range pres.Assignments {
				if running[n] == a.IP {
					continue
				}
				if !busy.probed[a.IP] || busy.busy[a.IP] {
					t.Fatalf("round %d: %s got %s for the first time (probed: %v, in use on the LAN: %v)", round, n, a.IP, busy.probed[a.IP], busy.busy[a.IP])
				}
			}

			// The containers now hold what this pass gave; a decky that
			// failed keeps running where it was.
			next := map[netip.Addr]string{}
			for a, n := range held {
				if _, placed := pres.Assignments[n]; !placed {
					next[a] = n
				}
			}
			prev = map[string]netip.Addr{}
			for n, a := range pres.Assignments {
				prev[n] = a.IP
				next[a.IP] = n
			}
			held = next
		}
	})
}
