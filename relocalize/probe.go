package relocalize

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
)

// MovedAfterConflict: the address allocation first chose answered on the
// LAN, so the decky took the next free one.
const MovedAfterConflict Reason = "moved-after-conflict"

// ProbeFunc reports which of the given addresses are in use on the LAN,
// with a description (hostnet.Probe in production). It is called with
// batches of up to [MaxProbeBatch] addresses; one call is one ARP burst.
type ProbeFunc func(addrs []netip.Addr) (map[netip.Addr]string, error)

// Probe budget of one allocation. Each round is one call of the ProbeFunc
// (one burst, about a second with hostnet's defaults) and the look-ahead
// doubles whenever a round finds conflicts, so the budget covers several
// thousand addresses in use before the first free one: far more than any
// LAN segment a worker sits on. Beyond it a decky fails (UnprobedError)
// rather than take an address nobody checked.
const (
	MaxProbeRounds = 12
	MaxProbeBatch  = 1024
	// firstLookAhead is how many free-looking addresses beyond those about
	// to be used the first round probes as well: on a quiet LAN it costs a
	// few ARP frames, on a dense one it saves a round per conflict.
	firstLookAhead = 8
)

// UnprobedError says a decky's address could not be checked on the LAN
// within the probe budget: too many addresses in a row answered. The
// decky is not placed; setting ip_pool to a free range fixes it.
type UnprobedError struct {
	IP     netip.Addr // the address allocation would have used
	Probed int        // addresses probed this pass
	InUse  int        // of which found in use on the LAN
	Rounds int
}

func (e *UnprobedError) Error() string {
	return fmt.Sprintf("address %s was not checked on the LAN: the duplicate-address probe gave up after %d rounds, with %d of the %d addresses it probed in use; set ip_pool to a free range", e.IP, e.Rounds, e.InUse, e.Probed)
}

// AllocateProbed allocates, then probes every address that is about to be
// used for the first time (fresh reports whether decky name is not yet
// running at ip), reserves those found in use, and allocates again until
// every fresh address has been probed and found free.
//
// Each round probes, in one call, the fresh addresses not yet probed plus
// a look-ahead of the next free-looking pool addresses, which doubles
// after a round with conflicts: a dense LAN (many live hosts back to back
// at the bottom of the pool) costs a few rounds, not one per host. An
// address used for the first time is therefore always one that was probed
// and found free in this pass; a decky for which no such address is found
// fails with a [*PoolExhaustedError] (counting what answered) or, when the
// budget runs out, an [*UnprobedError]. Pinned deckies whose address is in
// use fail; the others move on, with the conflict in their assignment's
// Detail. It is pure given a pure probe.
func AllocateProbed(in Input, fresh func(name string, ip netip.Addr) bool, probe ProbeFunc) (Result, error) {
	reserved := map[netip.Addr]string{}
	for a, why := range in.Reserved {
		reserved[a] = why
	}
	in.Reserved = reserved
	probed := map[netip.Addr]bool{}
	inUse := map[netip.Addr]bool{} // found answering by the probe
	conflictOf := map[string]string{}
	lookAhead := firstLookAhead
	var res Result
	for round := 0; ; round++ {
		res = Allocate(in)
		owner := map[netip.Addr]string{}
		var need []netip.Addr
		for name, a := range res.Assignments {
			if fresh(name, a.IP) && !probed[a.IP] {
				need = append(need, a.IP)
				owner[a.IP] = name
			}
		}
		if len(need) == 0 {
			break
		}
		if round == MaxProbeRounds {
			// Out of budget: nothing unprobed is handed out.
			for a, name := range owner {
				delete(res.Assignments, name)
				res.Errors[name] = &UnprobedError{IP: a, Probed: len(probed), InUse: len(inUse), Rounds: round}
			}
			break
		}
		sort.Slice(need, func(i, j int) bool { return need[i].Less(need[j]) })
		batch := append(need, nextCandidates(in, res, probed, owner, min(lookAhead, MaxProbeBatch-len(need)))...)
		if len(batch) > MaxProbeBatch {
			batch = batch[:MaxProbeBatch]
		}
		found, err := probe(batch)
		if err != nil {
			return res, fmt.Errorf("duplicate address detection: %w", err)
		}
		for _, a := range batch {
			probed[a] = true
		}
		conflicts := 0
		for a, why := range found {
			if inUse[a] {
				continue
			}
			reserved[a] = why
			inUse[a] = true
			conflicts++
			if n := owner[a]; n != "" {
				conflictOf[n] = why
			}
		}
		if conflicts > 0 {
			lookAhead = min(max(2*lookAhead, 2*conflicts), MaxProbeBatch)
		}
	}
	for name, why := range conflictOf {
		if as, ok := res.Assignments[name]; ok {
			as.Reason = MovedAfterConflict
			as.Detail = joinNote(why, as.Detail)
			res.Assignments[name] = as
		}
	}
	r := newRules(in)
	for _, err := range res.Errors {
		var pe *PoolExhaustedError
		if errors.As(err, &pe) {
			pe.InUse = 0
			for a := range inUse {
				if r.inPool(a) && r.sn.Contains(a) {
					pe.InUse++
				}
			}
		}
	}
	return res, nil
}

// nextCandidates returns up to n addresses, lowest first, that a new decky
// could be given next (in the pool, refused to nobody in particular, not
// assigned) and that were not probed yet.
func nextCandidates(in Input, res Result, probed map[netip.Addr]bool, need map[netip.Addr]string, n int) []netip.Addr {
	r := newRules(in)
	if n <= 0 || !r.valid() || !r.poolOnSubnet() {
		return nil
	}
	taken := map[netip.Addr]bool{}
	for _, a := range res.Assignments {
		taken[a.IP] = true
	}
	var out []netip.Addr
	for a := r.first; a.IsValid() && a.Compare(r.last) <= 0 && len(out) < n; a = a.Next() {
		if !taken[a] && !probed[a] && need[a] == "" && r.why(a, "") == "" {
			out = append(out, a)
		}
	}
	return out
}
