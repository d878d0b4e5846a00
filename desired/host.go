package desired

import (
	"net/netip"
	"strings"

	"gopkg.in/yaml.v3"
)

func parseHost(name, file string, data []byte, l *loader) *Host {
	root := l.document(file, data)
	if root == nil {
		return nil
	}
	w := l.walker(file)
	h := &Host{Name: name, File: file}
	// Network overrides are decoded into a "not set" Network and merged
	// with the fleet defaults later (validate), after fleet.yaml is read.
	h.Network = Network{}
	var seenNames = map[string]int{}
	var deckiesKey *yaml.Node
	isMap := w.fields(root, "", nil, map[string]func(pair){
		"host_uuid": func(p pair) { h.HostUUID, _ = w.str(p.v, p.field) },
		"prune":     func(p pair) { w.prune(p, &h.Prune) },
		"decommission": func(p pair) {
			h.Decommission, _ = w.boolean(p.v, p.field)
			h.DecommissionPos = w.pos(w.deref(p.v))
		},
		"suspend": func(p pair) {
			h.Suspend, _ = w.boolean(p.v, p.field)
			h.SuspendPos = w.pos(w.deref(p.v))
		},
		"network": func(p pair) { w.network(p.v, p.field, &h.Network, &h.netPos) },
		"ip_pool": func(p pair) {
			h.poolPos = w.pos(w.deref(p.v))
			if s, ok := w.str(p.v, p.field); ok {
				if pool, msg := ParsePool(s); msg != "" {
					w.fail(p.v, p.field, "%q %s", s, msg)
				} else {
					h.IPPool = pool
				}
			}
		},
		"deckies": func(p pair) {
			deckiesKey = p.k
			w.list(p.v, p.field, func(_ int, item *yaml.Node, f string) {
				d := w.decky(item, f)
				if d == nil {
					return
				}
				if at, dup := seenNames[d.Name]; dup && d.Name != "" {
					w.fail(w.deref(item), f+".name", "decky %q is declared twice in this file (first on line %d)", d.Name, at)
					return
				}
				seenNames[d.Name] = d.Pos.Line
				h.Deckies = append(h.Deckies, d)
			})
		},
	})
	switch {
	case !isMap || w.budget.exhausted():
	case h.Decommission && len(h.Deckies) > 0:
		w.fail(deckiesKey, "deckies", "a host with decommission: true runs no deckies; remove them (or the decommission)")
	case h.Decommission && h.Suspend:
		w.fail(h.SuspendPos.node(), "suspend", "decommission: true and suspend: true contradict each other; keep one")
	case deckiesKey == nil && !h.Decommission:
		// Required, so that an empty or truncated host file is never read
		// as "no deckies".
		w.fail(w.deref(root), "deckies", "required key is missing (deckies: [] with prune: {max: all} removes every decky)")
	}
	return h
}

// node returns a stand-in node carrying p's line, for walker.fail.
func (p Pos) node() *yaml.Node { return &yaml.Node{Line: p.Line} }

// prune decodes prune: {max: N | all}.
func (w *walker) prune(p pair, pr *Prune) {
	pr.Set, pr.Pos = true, w.pos(w.deref(p.v))
	ok := w.fields(p.v, p.field, []string{"max"}, map[string]func(pair){
		"max": func(q pair) {
			n := w.deref(q.v)
			if n != nil && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
				if n.Value != "all" {
					w.fail(n, q.field, "%q is not a number of deckies or \"all\"", n.Value)
					pr.Set = false
					return
				}
				pr.All = true
				return
			}
			v, ok := w.integer(q.v, q.field)
			switch {
			case !ok:
				pr.Set = false
			case v < 1 || v > 1_000_000:
				w.fail(q.v, q.field, "%d is not a number of deckies (1 or more) or \"all\"", v)
				pr.Set = false
			default:
				pr.Max = int(v)
			}
		},
	})
	if !ok || (!pr.All && pr.Max == 0) {
		pr.Set, pr.All, pr.Max = false, false, 0
	}
}

// ParsePool parses an ip_pool: a CIDR ("198.51.100.64/27") or an inclusive
// range ("198.51.100.70-198.51.100.90"). The message is empty on success.
func ParsePool(s string) (*Pool, string) {
	if first, last, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(strings.TrimSpace(first))
		b, err2 := netip.ParseAddr(strings.TrimSpace(last))
		if err1 != nil || err2 != nil || !a.Is4() || !b.Is4() {
			return nil, "is not an IPv4 range first-last"
		}
		if b.Less(a) {
			return nil, "ends before it starts"
		}
		return &Pool{First: a, Last: b, Text: s}, ""
	}
	pf, err := netip.ParsePrefix(s)
	if err != nil || !pf.Addr().Is4() {
		return nil, "is not an IPv4 CIDR or range first-last"
	}
	if pf.Masked() != pf {
		return nil, "has host bits set; write " + pf.Masked().String()
	}
	return &Pool{First: pf.Addr(), Last: lastAddr(pf), Text: s}, ""
}

// lastAddr is the highest address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Broadcast returns the broadcast (highest) address of an IPv4 prefix.
func Broadcast(p netip.Prefix) netip.Addr { return lastAddr(p) }

func (w *walker) decky(n *yaml.Node, field string) *Decky {
	d := &Decky{Pos: w.pos(w.deref(n)), ServiceConfig: map[string]map[string]Value{}}
	var cfgNode *yaml.Node
	var cfgField string
	ok := w.fields(n, field, []string{"name", "services"}, map[string]func(pair){
		"name": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if !NameRE().MatchString(s) {
					w.fail(p.v, p.field, "decky name %q must match %s", s, NameRE())
					return
				}
				d.Name = s
			}
		},
		"services": func(p pair) {
			seen := map[string]bool{}
			w.list(p.v, p.field, func(_ int, item *yaml.Node, f string) {
				s, ok := w.str(item, f)
				if !ok {
					return
				}
				if seen[s] {
					w.fail(item, f, "service %q is listed twice", s)
					return
				}
				seen[s] = true
				d.Services = append(d.Services, s)
			})
			if len(d.Services) == 0 && len(seen) == 0 {
				w.fail(w.deref(p.v), p.field, "a decky needs at least one service")
			}
		},
		"ip": func(p pair) {
			d.IPPos = w.pos(w.deref(p.v))
			if s, ok := w.str(p.v, p.field); ok {
				a, err := netip.ParseAddr(s)
				switch {
				case err != nil || !a.Is4():
					w.fail(p.v, p.field, "%q is not an IPv4 address", s)
				case a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
					w.fail(p.v, p.field, "%s cannot be a decky address", a)
				default:
					d.IP = a
				}
			}
		},
		"hostname": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if len(s) > 63 || !hostnameRE().MatchString(s) {
					w.fail(p.v, p.field, "%q is not a valid hostname (letters, digits, '-', '.', at most 63 characters)", s)
					return
				}
				d.Hostname = s
			}
		},
		"archetype": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if !NameRE().MatchString(s) {
					w.fail(p.v, p.field, "archetype %q must match %s", s, NameRE())
				}
				d.Archetype = s
			}
		},
		"distro": func(p pair) { d.Distro, _ = w.str(p.v, p.field) },
		"nmap_os": func(p pair) {
			if s, ok := w.str(p.v, p.field); ok {
				if _, known := OSFamilies[s]; !known {
					w.fail(p.v, p.field, "nmap_os %q is not one of %s", s, strings.Join(osFamilyNames(), ", "))
					return
				}
				d.NmapOS = s
			}
		},
		"service_config": func(p pair) { cfgNode, cfgField = p.v, p.field },
	})
	if !ok {
		return nil
	}
	if d.NmapOS == "" {
		d.NmapOS = DefaultNmapOS
	}
	if d.Hostname == "" {
		d.Hostname = d.Name
	}
	d.rawConfig = cfgNode
	d.rawConfigField = cfgField
	d.file = w.file
	return d
}
