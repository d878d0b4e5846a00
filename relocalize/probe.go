package relocalize

import (
	"fmt"
	"net/netip"
	"sort"
)

// MovedAfterConflict: the address allocation first chose answered on the
// LAN, so the decky took the next free one.
const MovedAfterConflict Reason = "moved-after-conflict"

// ProbeFunc reports which of the given addresses are in use on the LAN,
// with a description (hostnet.Probe in production).
type ProbeFunc func(addrs []netip.Addr) (map[netip.Addr]string, error)

// maxProbeRounds bounds re-allocation when probes keep finding conflicts.
const maxProbeRounds = 8

// AllocateProbed allocates, then probes every address that is about to be
// used for the first time (fresh reports whether decky name is not yet
// running at ip), reserves those found in use, and allocates again until
// no fresh address conflicts. Pinned deckies whose address is in use fail;
// the others move on, with the conflict in their assignment's Detail.
// It is pure given a pure probe.
func AllocateProbed(in Input, fresh func(name string, ip netip.Addr) bool, probe ProbeFunc) (Result, error) {
	reserved := map[netip.Addr]string{}
	for a, why := range in.Reserved {
		reserved[a] = why
	}
	in.Reserved = reserved
	probed := map[netip.Addr]bool{}
	conflictOf := map[string]string{}
	var res Result
	for round := 0; ; round++ {
		res = Allocate(in)
		owner := map[netip.Addr]string{}
		var cand []netip.Addr
		for name, a := range res.Assignments {
			if fresh(name, a.IP) && !probed[a.IP] {
				cand = append(cand, a.IP)
				owner[a.IP] = name
			}
		}
		if len(cand) == 0 || round == maxProbeRounds {
			break
		}
		sort.Slice(cand, func(i, j int) bool { return cand[i].Less(cand[j]) })
		found, err := probe(cand)
		if err != nil {
			return res, fmt.Errorf("duplicate address detection: %w", err)
		}
		for _, a := range cand {
			probed[a] = true
		}
		if len(found) == 0 {
			break
		}
		for a, why := range found {
			reserved[a] = why
			if n := owner[a]; n != "" {
				conflictOf[n] = why
			}
		}
	}
	for name, why := range conflictOf {
		if as, ok := res.Assignments[name]; ok {
			as.Reason = MovedAfterConflict
			as.Detail = joinNote(why, as.Detail)
			res.Assignments[name] = as
		}
	}
	return res, nil
}
