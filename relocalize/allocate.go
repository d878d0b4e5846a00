package relocalize

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/decnet/pull-agent/desired"
)

// LAN is the decoy network as detected (or overridden) on the worker.
type LAN struct {
	Interface string
	Subnet    netip.Prefix
	Gateway   netip.Addr
	HostAddrs []netip.Addr // the worker's own addresses on the LAN
}

// Decky is the part of a desired decky that addressing depends on.
type Decky struct {
	Name   string
	Pinned netip.Addr // the repo's ip:, zero when none
}

// Reason says why a decky got its address; `pull-agent plan` prints it.
type Reason string

// Why an address was chosen.
const (
	Kept        Reason = "kept"        // same address as the previous pass
	Pinned      Reason = "pinned"      // the repo's ip:, which lies on the local subnet
	Allocated   Reason = "allocated"   // a new decky, lowest free pool address
	Relocalized Reason = "relocalized" // the repo's ip: is for another subnet; allocated locally
	Moved       Reason = "moved"       // the previous address became unusable
)

// Assignment is one decky's address on the local LAN.
type Assignment struct {
	IP     netip.Addr
	MAC    string
	Reason Reason
	Detail string // human explanation for relocalized/moved
}

// Input is everything allocation depends on.
type Input struct {
	Host     string // the worker's name; part of every MAC
	LAN      LAN
	Pool     *desired.Pool // nil = the whole subnet
	Deckies  []Decky
	Previous map[string]netip.Addr // decky -> address of the last pass
	// Reserved are addresses no decky may take, with the reason: held by a
	// container the agent does not own, or found answering on the LAN.
	Reserved map[netip.Addr]string
	// Held are the decoy-network addresses held right now by containers the
	// agent owns (in any state), with the decky that holds each. Such an
	// address is never given to another decky: a removed or failed-but-running
	// decky keeps its address reserved until its containers are gone.
	Held map[netip.Addr]string
}

// Result is the outcome per decky: an assignment or an error.
type Result struct {
	Assignments map[string]Assignment
	Errors      map[string]error
}

// PoolExhaustedError says a decky did not fit in its pool, and why: how
// many of the pool's addresses other deckies hold and how many are
// reserved (the network's own, the worker's, held by containers the agent
// does not own, or found in use on the LAN).
type PoolExhaustedError struct {
	Pool     string
	Size     int // addresses in the pool
	Deckies  int // taken by, or still held by, other deckies
	Reserved int // reserved for any other reason
	// InUse is how many of the pool's addresses the duplicate-address probe
	// found answering on the LAN (counted in Reserved); set by
	// [AllocateProbed].
	InUse int
}

func (e *PoolExhaustedError) Error() string {
	s := fmt.Sprintf("no free address left in pool %s (%d addresses: %d taken by deckies, %d reserved", e.Pool, e.Size, e.Deckies, e.Reserved)
	if e.InUse > 0 {
		s += fmt.Sprintf(", of which %d found in use on the LAN", e.InUse)
	}
	return s + ")"
}

// PinnedUnusableError says a pinned address cannot be used on this LAN.
type PinnedUnusableError struct {
	IP     netip.Addr
	Reason string
	// HeldBy is set when the only obstacle is another decky whose
	// containers still hold the address (it is being moved or removed):
	// the pin can be honoured in a later pass, once they are gone.
	HeldBy string
}

func (e *PinnedUnusableError) Error() string {
	return fmt.Sprintf("pinned address %s %s; pick another ip: in the host file", e.IP, e.Reason)
}

// rules decide which address a decky may take. They are shared by
// [Allocate] and the look-ahead of [AllocateProbed], so both agree on what
// a candidate is.
type rules struct {
	sn      netip.Prefix
	gateway netip.Addr
	blocked map[netip.Addr]string // nobody may take these
	held    map[netip.Addr]string // address -> the only decky that may take it
	pool    *desired.Pool
	first   netip.Addr // the allocation range: pool ∩ subnet host range
	last    netip.Addr
}

func newRules(in Input) *rules {
	r := &rules{sn: in.LAN.Subnet.Masked(), gateway: in.LAN.Gateway, blocked: map[netip.Addr]string{}, held: in.Held, pool: in.Pool}
	for a, why := range in.Reserved {
		r.blocked[a] = why
	}
	for _, a := range in.LAN.HostAddrs {
		r.blocked[a] = "is this worker's own address"
	}
	r.first, r.last = r.sn.Addr().Next(), desired.Broadcast(r.sn).Prev()
	if in.Pool != nil {
		r.first, r.last = maxAddr(r.first, in.Pool.First), minAddr(r.last, in.Pool.Last)
	}
	return r
}

// valid reports whether the subnet can hold deckies at all.
func (r *rules) valid() bool { return r.sn.IsValid() && r.sn.Addr().Is4() && r.sn.Bits() <= 30 }

// poolOnSubnet reports whether the pool (if any) lies on the subnet.
func (r *rules) poolOnSubnet() bool {
	return r.pool == nil || (r.sn.Contains(r.pool.First) && r.sn.Contains(r.pool.Last))
}

// why says why decky may not take a ("" when it may). An address held by
// another decky's containers is refused: it is still in use on the LAN
// (a removal running in parallel, a failed decky left running), and
// handing it out would make the new decky fail with "address in use", or
// worse, answer next to the old one.
func (r *rules) why(a netip.Addr, decky string) string {
	if why := desired.ReservedIn(a, r.sn, r.gateway); why != "" {
		return why
	}
	if why := r.blocked[a]; why != "" {
		return why
	}
	if h, ok := r.held[a]; ok && h != decky {
		return "is still held by the containers of decky " + h
	}
	return ""
}

func (r *rules) inPool(a netip.Addr) bool { return r.pool == nil || r.pool.Contains(a) }

func (r *rules) poolText() string {
	if r.pool != nil {
		return r.pool.Text
	}
	return r.sn.String()
}

// exhausted describes a full pool; taken maps addresses to deckies.
func (r *rules) exhausted(taken map[netip.Addr]string) *PoolExhaustedError {
	e := &PoolExhaustedError{Pool: r.poolText()}
	for a := r.first; a.IsValid() && a.Compare(r.last) <= 0; a = a.Next() {
		e.Size++
		switch {
		case taken[a] != "":
			e.Deckies++
		case r.why(a, "") == "":
		case r.held[a] != "" && desired.ReservedIn(a, r.sn, r.gateway) == "" && r.blocked[a] == "":
			e.Deckies++
		default:
			e.Reserved++
		}
	}
	return e
}

// Allocate assigns every decky an address on in.LAN. See the package
// documentation for the rules.
func Allocate(in Input) Result {
	res := Result{Assignments: map[string]Assignment{}, Errors: map[string]error{}}
	r := newRules(in)
	sn := r.sn
	if !r.valid() {
		for _, d := range in.Deckies {
			res.Errors[d.Name] = fmt.Errorf("local subnet %q is not an IPv4 network with room for deckies", in.LAN.Subnet)
		}
		return res
	}

	deckies := append([]Decky(nil), in.Deckies...)
	sort.Slice(deckies, func(i, j int) bool { return deckies[i].Name < deckies[j].Name })

	// prev is where each decky was: the last pass's address, or else the
	// lowest address its containers hold right now (the state was lost,
	// but the decky is running: keep it where it is).
	prev := map[string]netip.Addr{}
	for a, name := range in.Held {
		if p, ok := prev[name]; !ok || a.Less(p) {
			prev[name] = a
		}
	}
	for name, a := range in.Previous {
		prev[name] = a
	}

	taken := map[netip.Addr]string{} // address -> decky
	var full *PoolExhaustedError     // counted once, until the next assignment
	assign := func(d Decky, a netip.Addr, rs Reason, detail string) {
		taken[a] = d.Name
		full = nil
		res.Assignments[d.Name] = Assignment{IP: a, MAC: MAC(in.Host, d.Name), Reason: rs, Detail: detail}
	}

	// 1. Pinned addresses on the local subnet are the operator's explicit
	// choice: they win over sticky ones, and fail rather than move. A pin
	// on an address another decky's containers still hold waits (fails
	// this pass) while that decky moves away.
	var rest []Decky
	notes := map[string]string{}
	pinnedBy := map[netip.Addr]string{}
	for _, d := range deckies {
		if !d.Pinned.IsValid() {
			rest = append(rest, d)
			continue
		}
		if !sn.Contains(d.Pinned) {
			notes[d.Name] = fmt.Sprintf("repo pins %s, which is not on the local subnet %s", d.Pinned, sn)
			rest = append(rest, d)
			continue
		}
		why := r.why(d.Pinned, d.Name)
		if other := pinnedBy[d.Pinned]; why == "" && other != "" {
			why = "is pinned by decky " + other + " too"
		}
		if pinnedBy[d.Pinned] == "" {
			pinnedBy[d.Pinned] = d.Name
		}
		if why != "" {
			e := &PinnedUnusableError{IP: d.Pinned, Reason: why}
			if h := in.Held[d.Pinned]; h != "" && h != d.Name && r.why(d.Pinned, h) == "" {
				e.HeldBy = h
			}
			res.Errors[d.Name] = e
			continue
		}
		assign(d, d.Pinned, Pinned, "")
	}

	poolText := r.poolText()
	if !r.poolOnSubnet() {
		err := fmt.Errorf("ip_pool %s is not on the local subnet %s; fix the pool or the host's network override", in.Pool.Text, sn)
		for _, d := range rest {
			res.Errors[d.Name] = err
		}
		return res
	}

	// 2. Sticky: keep the previous address while it is still valid.
	var fresh []Decky
	for _, d := range rest {
		p, had := prev[d.Name]
		if !had {
			fresh = append(fresh, d)
			continue
		}
		why := r.why(p, d.Name)
		switch {
		case why != "":
		case !r.inPool(p):
			why = "is outside ip_pool " + poolText
		case pinnedBy[p] != "":
			why = "is now pinned by decky " + pinnedBy[p]
		}
		if why == "" {
			rs := Kept
			if notes[d.Name] != "" {
				rs = Relocalized
			}
			assign(d, p, rs, notes[d.Name])
			continue
		}
		notes[d.Name] = joinNote(notes[d.Name], fmt.Sprintf("previous address %s %s", p, why))
		fresh = append(fresh, d)
	}

	// 3. Everyone else takes the lowest free pool address, in name order.
	next := r.first
	for _, d := range fresh {
		var got netip.Addr
		for a := next; a.IsValid() && a.Compare(r.last) <= 0; a = a.Next() {
			if taken[a] == "" && pinnedBy[a] == "" && r.why(a, d.Name) == "" {
				got = a
				break
			}
		}
		if !got.IsValid() {
			if full == nil {
				full = r.exhausted(taken)
			}
			e := *full
			res.Errors[d.Name] = &e
			continue
		}
		// Addresses before got are taken or refused for every decky
		// except, possibly, their holder: holders are never fresh with a
		// lower held address (prev covers it), so the scan may go on.
		next = got.Next()
		rs := Allocated
		switch {
		case prev[d.Name].IsValid():
			rs = Moved
		case d.Pinned.IsValid():
			rs = Relocalized
		}
		assign(d, got, rs, notes[d.Name])
	}
	return res
}

func joinNote(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

func addrDistance(a, b netip.Addr) int {
	x, y := a.As4(), b.As4()
	u := uint32(x[0])<<24 | uint32(x[1])<<16 | uint32(x[2])<<8 | uint32(x[3])
	v := uint32(y[0])<<24 | uint32(y[1])<<16 | uint32(y[2])<<8 | uint32(y[3])
	return int(v - u)
}

func maxAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return b
	}
	return a
}

func minAddr(a, b netip.Addr) netip.Addr {
	if a.Less(b) {
		return a
	}
	return b
}

// MAC derives a decky's MAC address from the host and decky names: the
// same decky on the same worker always gets the same MAC, so recreating it
// causes no ARP churn on the LAN. The address is locally administered and
// unicast (first octet xxxxxx10), so it can never collide with a vendor's
// burned-in address.
func MAC(host, decky string) string {
	sum := sha256.Sum256([]byte("pull-agent/mac\x00" + host + "\x00" + decky))
	b := sum[:6]
	b[0] = (b[0] | 0x02) &^ 0x01
	return net.HardwareAddr(b).String()
}
