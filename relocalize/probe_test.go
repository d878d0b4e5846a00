package relocalize

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestAllocateProbed(t *testing.T) {
	inUse := map[netip.Addr]string{
		ip("198.51.100.3"): "198.51.100.3 is in use on the LAN (answered ARP from 02:00:00:00:00:03)",
		ip("198.51.100.4"): "198.51.100.4 is in use on the LAN (answered ARP from 02:00:00:00:00:04)",
		ip("198.51.100.9"): "198.51.100.9 is in use on the LAN (answered ARP from 02:00:00:00:00:09)",
	}
	var probedLists [][]netip.Addr
	probe := func(as []netip.Addr) (map[netip.Addr]string, error) {
		probedLists = append(probedLists, as)
		out := map[netip.Addr]string{}
		for _, a := range as {
			if why, ok := inUse[a]; ok {
				out[a] = why
			}
		}
		return out, nil
	}
	running := map[string]netip.Addr{"old": ip("198.51.100.9")} // already up: never probed
	fresh := func(name string, a netip.Addr) bool { return running[name] != a }
	in := Input{LAN: lan, Deckies: []Decky{{Name: "a"}, {Name: "b"}, {Name: "old"}, {Name: "pin", Pinned: ip("198.51.100.4")}},
		Previous: map[string]netip.Addr{"old": ip("198.51.100.9")}}
	res, err := AllocateProbed(in, fresh, probe)
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
	for _, l := range probedLists {
		for _, x := range l {
			if x == ip("198.51.100.9") {
				t.Errorf("the address of a running decky was probed")
			}
		}
	}
	if len(probedLists) < 2 {
		t.Errorf("the replacement addresses were not probed: %v", probedLists)
	}
}

func TestAllocateProbedFailsWhenProbeFails(t *testing.T) {
	_, err := AllocateProbed(Input{LAN: lan, Deckies: []Decky{{Name: "a"}}},
		func(string, netip.Addr) bool { return true },
		func([]netip.Addr) (map[netip.Addr]string, error) { return nil, errors.New("no raw socket") })
	if err == nil || !strings.Contains(err.Error(), "no raw socket") {
		t.Fatalf("got %v", err)
	}
}
