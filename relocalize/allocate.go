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

// PoolExhaustedError says a decky did not fit in its pool.
type PoolExhaustedError struct {
	Pool string
	Size int // addresses in the pool that a decky could ever use
}

func (e *PoolExhaustedError) Error() string {
	return fmt.Sprintf("no free address left in pool %s (all %d usable addresses are taken or reserved)", e.Pool, e.Size)
}

// PinnedUnusableError says a pinned address cannot be used on this LAN.
type PinnedUnusableError struct {
	IP     netip.Addr
	Reason string
}

func (e *PinnedUnusableError) Error() string {
	return fmt.Sprintf("pinned address %s %s; pick another ip: in the host file", e.IP, e.Reason)
}

// Allocate assigns every decky an address on in.LAN. See the package
// documentation for the rules.
func Allocate(in Input) Result {
	res := Result{Assignments: map[string]Assignment{}, Errors: map[string]error{}}
	sn := in.LAN.Subnet.Masked()
	if !sn.IsValid() || !sn.Addr().Is4() || sn.Bits() > 30 {
		for _, d := range in.Deckies {
			res.Errors[d.Name] = fmt.Errorf("local subnet %q is not an IPv4 network with room for deckies", in.LAN.Subnet)
		}
		return res
	}

	// blocked: addresses nobody may take, with the reason.
	blocked := map[netip.Addr]string{}
	for a, why := range in.Reserved {
		blocked[a] = why
	}
	for _, a := range in.LAN.HostAddrs {
		blocked[a] = "is this worker's own address"
	}
	reason := func(a netip.Addr) string {
		if why := desired.ReservedIn(a, sn, in.LAN.Gateway); why != "" {
			return why
		}
		return blocked[a]
	}

	deckies := append([]Decky(nil), in.Deckies...)
	sort.Slice(deckies, func(i, j int) bool { return deckies[i].Name < deckies[j].Name })

	taken := map[netip.Addr]string{} // address -> decky
	assign := func(d Decky, a netip.Addr, r Reason, detail string) {
		taken[a] = d.Name
		res.Assignments[d.Name] = Assignment{IP: a, MAC: MAC(in.Host, d.Name), Reason: r, Detail: detail}
	}

	// 1. Pinned addresses on the local subnet are the operator's explicit
	// choice: they win over sticky ones, and fail rather than move.
	var rest []Decky
	notes := map[string]string{}
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
		if why := reason(d.Pinned); why != "" {
			res.Errors[d.Name] = &PinnedUnusableError{IP: d.Pinned, Reason: why}
			continue
		}
		if other, dup := taken[d.Pinned]; dup {
			res.Errors[d.Name] = &PinnedUnusableError{IP: d.Pinned, Reason: "is pinned by decky " + other + " too"}
			continue
		}
		assign(d, d.Pinned, Pinned, "")
	}

	inPool := func(a netip.Addr) bool { return in.Pool == nil || in.Pool.Contains(a) }
	poolText := sn.String()
	if in.Pool != nil {
		poolText = in.Pool.Text
		if !sn.Contains(in.Pool.First) || !sn.Contains(in.Pool.Last) {
			err := fmt.Errorf("ip_pool %s is not on the local subnet %s; fix the pool or the host's network override", in.Pool.Text, sn)
			for _, d := range rest {
				res.Errors[d.Name] = err
			}
			return res
		}
	}

	// 2. Sticky: keep last pass's address while it is still valid.
	var fresh []Decky
	for _, d := range rest {
		prev, had := in.Previous[d.Name]
		if !had {
			fresh = append(fresh, d)
			continue
		}
		why := reason(prev)
		switch {
		case why != "":
		case !inPool(prev):
			why = "is outside ip_pool " + poolText
		case taken[prev] != "":
			why = "is now pinned by decky " + taken[prev]
		}
		if why == "" {
			r := Kept
			if notes[d.Name] != "" {
				r = Relocalized
			}
			assign(d, prev, r, notes[d.Name])
			continue
		}
		notes[d.Name] = joinNote(notes[d.Name], fmt.Sprintf("previous address %s %s", prev, why))
		fresh = append(fresh, d)
	}

	// 3. Everyone else takes the lowest free pool address, in name order.
	first, last := sn.Addr().Next(), desired.Broadcast(sn).Prev()
	if in.Pool != nil {
		first, last = maxAddr(first, in.Pool.First), minAddr(last, in.Pool.Last)
	}
	next := first
	for _, d := range fresh {
		var got netip.Addr
		for a := next; a.IsValid() && a.Compare(last) <= 0; a = a.Next() {
			if reason(a) == "" && taken[a] == "" {
				got = a
				break
			}
		}
		if !got.IsValid() {
			size := 0
			if first.Compare(last) <= 0 {
				size = addrDistance(first, last) + 1
			}
			res.Errors[d.Name] = &PoolExhaustedError{Pool: poolText, Size: size}
			continue
		}
		next = got.Next()
		r := Allocated
		switch {
		case in.Previous[d.Name].IsValid():
			r = Moved
		case d.Pinned.IsValid():
			r = Relocalized
		}
		assign(d, got, r, notes[d.Name])
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
