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
	lan = LAN{
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
			in:   Input{LAN: lan, Deckies: []Decky{{Name: "b"}, {Name: "a"}, {Name: "c"}}},
			want: map[string]string{"a": "198.51.100.3 allocated", "b": "198.51.100.4 allocated", "c": "198.51.100.5 allocated"},
		},
		{
			name: "previous addresses are kept whatever the list order",
			in: Input{LAN: lan, Deckies: []Decky{{Name: "z"}, {Name: "a"}},
				Previous: map[string]netip.Addr{"z": ip("198.51.100.3"), "a": ip("198.51.100.9")}},
			want: map[string]string{"z": "198.51.100.3 kept", "a": "198.51.100.9 kept"},
		},
		{
			name: "a removed decky frees its address for the next new one",
			in: Input{LAN: lan, Deckies: []Decky{{Name: "b"}, {Name: "new"}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3"), "b": ip("198.51.100.4")}},
			want: map[string]string{"b": "198.51.100.4 kept", "new": "198.51.100.3 allocated"},
		},
		{
			name: "pinned address on the local subnet is honoured and beats a sticky one",
			in: Input{LAN: lan, Deckies: []Decky{{Name: "a"}, {Name: "p", Pinned: ip("198.51.100.3")}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3")}},
			want: map[string]string{"p": "198.51.100.3 pinned", "a": "198.51.100.4 moved"},
		},
		{
			name: "pinned address on another subnet is relocalized",
			in:   Input{LAN: lan, Deckies: []Decky{{Name: "p", Pinned: ip("192.0.2.70")}}},
			want: map[string]string{"p": "198.51.100.3 relocalized"},
		},
		{
			name: "pinned address that is the worker's own fails, others still placed",
			in:   Input{LAN: lan, Deckies: []Decky{{Name: "p", Pinned: ip("198.51.100.2")}, {Name: "q"}}},
			want: map[string]string{"p": "error: pinned address 198.51.100.2 is this worker's own address; pick another ip: in the host file", "q": "198.51.100.3 allocated"},
		},
		{
			name: "reserved addresses are skipped and a sticky reserved address moves",
			in: Input{LAN: lan, Deckies: []Decky{{Name: "a"}, {Name: "b"}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3")},
				Reserved: map[netip.Addr]string{ip("198.51.100.3"): "answers ARP from 02:00:00:00:00:01", ip("198.51.100.4"): "is held by container printer"}},
			want: map[string]string{"a": "198.51.100.5 moved", "b": "198.51.100.6 allocated"},
		},
		{
			name: "pool bounds allocation and exhaustion fails only the deckies that do not fit",
			in:   Input{LAN: lan, Pool: pool("198.51.100.64-198.51.100.65"), Deckies: []Decky{{Name: "a"}, {Name: "b"}, {Name: "c"}}},
			want: map[string]string{"a": "198.51.100.64 allocated", "b": "198.51.100.65 allocated",
				"c": "error: no free address left in pool 198.51.100.64-198.51.100.65 (all 2 usable addresses are taken or reserved)"},
		},
		{
			name: "a previous address outside a new pool moves into the pool",
			in: Input{LAN: lan, Pool: pool("198.51.100.64/30"), Deckies: []Decky{{Name: "a"}},
				Previous: map[string]netip.Addr{"a": ip("198.51.100.3")}},
			want: map[string]string{"a": "198.51.100.64 moved"},
		},
		{
			name: "pool on another subnet is an error, not a guess",
			in:   Input{LAN: lan, Pool: pool("192.0.2.64/27"), Deckies: []Decky{{Name: "a"}, {Name: "p", Pinned: ip("198.51.100.10")}}},
			want: map[string]string{"a": "error: ip_pool 192.0.2.64/27 is not on the local subnet 198.51.100.0/24; fix the pool or the host's network override", "p": "198.51.100.10 pinned"},
		},
		{
			name: "broadcast is never handed out",
			in: Input{LAN: LAN{Subnet: netip.MustParsePrefix("203.0.113.0/30"), Gateway: ip("203.0.113.1")},
				Deckies: []Decky{{Name: "a"}, {Name: "b"}}},
			want: map[string]string{"a": "203.0.113.2 allocated", "b": "error: no free address left in pool 203.0.113.0/30 (all 2 usable addresses are taken or reserved)"},
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
	res := Allocate(Input{LAN: lan, Pool: pool("198.51.100.64/32"), Deckies: []Decky{{Name: "a"}, {Name: "b"}, {Name: "p", Pinned: ip("198.51.100.1")}}})
	var ex *PoolExhaustedError
	if !errors.As(res.Errors["b"], &ex) || ex.Pool != "198.51.100.64/32" {
		t.Errorf("b: want PoolExhaustedError, got %v", res.Errors["b"])
	}
	var pu *PinnedUnusableError
	if !errors.As(res.Errors["p"], &pu) || !strings.Contains(pu.Reason, "gateway") {
		t.Errorf("p: want PinnedUnusableError about the gateway, got %v", res.Errors["p"])
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

// FuzzAllocate replays 1,000 random fleet edits from a fuzzed seed and
// checks, after each pass, that no two deckies share an address, no
// reserved address is used, and every decky that survives an edit keeps
// its address unless that address became invalid.
func FuzzAllocate(f *testing.F) {
	f.Add(uint64(1), uint8(26))
	f.Add(uint64(42), uint8(28))
	f.Add(uint64(7), uint8(30))
	f.Fuzz(func(t *testing.T, seed uint64, bits uint8) {
		bits = 24 + bits%7 // /24 .. /30
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		sn := netip.PrefixFrom(ip("198.51.100.0"), int(bits)).Masked()
		l := LAN{Subnet: sn, Gateway: sn.Addr().Next(), HostAddrs: []netip.Addr{sn.Addr().Next().Next()}}
		var pl *desired.Pool
		if rng.IntN(2) == 0 && bits <= 28 {
			pl = pool(fmt.Sprintf("%s-%s", sn.Addr().Next().Next().Next(), desired.Broadcast(sn).Prev().Prev()))
		}
		live := map[string]bool{}
		prev := map[string]netip.Addr{}
		for round := 0; round < 1000; round++ {
			// edit: add, remove, rename-free reorder, reserve or unreserve
			switch op := rng.IntN(10); {
			case op < 4:
				live[fmt.Sprintf("d%03d", rng.IntN(300))] = true
			case op < 7:
				for n := range live {
					delete(live, n)
					break
				}
			}
			reserved := map[netip.Addr]string{}
			for i := 0; i < rng.IntN(3); i++ {
				a := sn.Addr()
				for j := rng.IntN(1 << (32 - bits)); j > 0; j-- {
					a = a.Next()
				}
				reserved[a] = "answers ARP"
			}
			in := Input{Host: "w", LAN: l, Pool: pl, Previous: prev, Reserved: reserved}
			for n := range live {
				in.Deckies = append(in.Deckies, Decky{Name: n})
			}
			rng.Shuffle(len(in.Deckies), func(i, j int) { in.Deckies[i], in.Deckies[j] = in.Deckies[j], in.Deckies[i] })
			res := Allocate(in)
			checkInvariants(t, in, res)
			// Determinism: the same input in another order gives the same result.
			rng.Shuffle(len(in.Deckies), func(i, j int) { in.Deckies[i], in.Deckies[j] = in.Deckies[j], in.Deckies[i] })
			if again := Allocate(in); fmt.Sprint(again.Assignments) != fmt.Sprint(res.Assignments) {
				t.Fatalf("round %d: allocation depends on list order", round)
			}
			for n, a := range res.Assignments {
				if p, had := prev[n]; had && p != a.IP {
					if _, r := reserved[p]; !r {
						t.Fatalf("round %d: %s moved from %s to %s although %s stayed valid", round, n, p, a.IP, p)
					}
				}
			}
			prev = map[string]netip.Addr{}
			for n, a := range res.Assignments {
				prev[n] = a.IP
			}
		}
	})
}
