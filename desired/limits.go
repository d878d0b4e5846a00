package desired

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Limits are the resource limits of one service container. Load fills in
// the defaults for what the catalog leaves out, so every field is set.
type Limits struct {
	Pids        int64 // maximum number of processes (pids cgroup)
	MemoryBytes int64 // memory limit in bytes
	NanoCPUs    int64 // CPU quota in billionths of a CPU (Docker's NanoCPUs)
}

// Default limits of a service container: enough for a decoy daemon and its
// sessions, small enough that a compromised decoy cannot starve the worker.
const (
	DefaultPids        = 256
	DefaultMemoryBytes = 256 << 20     // 256 MiB
	DefaultNanoCPUs    = 1_000_000_000 // one CPU
)

// Accepted ranges of limits.
const (
	MinPids        = 8
	MaxPids        = 65536
	MinMemoryBytes = 8 << 20  // below this a container hardly starts
	MaxMemoryBytes = 64 << 30 // a decoy needing more is a mistake
	MinNanoCPUs    = 10_000_000
	MaxNanoCPUs    = 64_000_000_000
)

// DefaultLimits returns the limits of a service whose catalog entry sets none.
func DefaultLimits() Limits {
	return Limits{Pids: DefaultPids, MemoryBytes: DefaultMemoryBytes, NanoCPUs: DefaultNanoCPUs}
}

var (
	memoryRE = lazyRE(`^([0-9]{1,12})([kKmMgG])$`)
	cpusRE   = lazyRE(`^([0-9]{1,3})(?:\.([0-9]{1,9}))?$`)
)

// limits decodes a catalog service's limits block over the defaults.
func (w *walker) limits(n *yaml.Node, field string, l *Limits) {
	w.fields(n, field, nil, map[string]func(pair){
		"pids": func(p pair) {
			if v, ok := w.integer(p.v, p.field); ok {
				if v < MinPids || v > MaxPids {
					w.fail(p.v, p.field, "%d is not between %d and %d", v, MinPids, MaxPids)
					return
				}
				l.Pids = v
			}
		},
		"memory": func(p pair) {
			if s := w.deref(p.v); s != nil && s.Kind == yaml.ScalarNode && s.ShortTag() == "!!int" {
				w.fail(s, p.field, "%s needs a unit: write a string such as \"256m\" (k, m or g, binary)", s.Value)
				return
			}
			s, ok := w.str(p.v, p.field)
			if !ok {
				return
			}
			b, msg := ParseMemory(s)
			if msg != "" {
				w.fail(p.v, p.field, "%q %s", s, msg)
				return
			}
			l.MemoryBytes = b
		},
		"cpus": func(p pair) {
			s := w.scalar(p.v, p.field, "a number of CPUs")
			if s == nil {
				return
			}
			switch s.ShortTag() {
			case "!!int", "!!float", "!!str":
			default:
				w.fail(s, p.field, "expected a number of CPUs such as 0.5, got %s", kindName(s))
				return
			}
			n, msg := ParseCPUs(s.Value)
			if msg != "" {
				w.fail(s, p.field, "%q %s", s.Value, msg)
				return
			}
			l.NanoCPUs = n
		},
	})
}

// ParseMemory parses a memory size as the catalog writes it: an integer
// and a binary unit k, m or g ("256m"). The message is empty on success.
func ParseMemory(s string) (int64, string) {
	m := memoryRE().FindStringSubmatch(s)
	if m == nil {
		return 0, `is not a size: write an integer and a unit k, m or g (binary), such as "256m"`
	}
	v, _ := strconv.ParseInt(m[1], 10, 64) // at most 12 digits
	shift := map[string]uint{"k": 10, "m": 20, "g": 30}[strings.ToLower(m[2])]
	if v > MaxMemoryBytes>>shift || v<<shift < MinMemoryBytes {
		return 0, fmt.Sprintf("is not between %dm and %dg", MinMemoryBytes>>20, MaxMemoryBytes>>30)
	}
	return v << shift, ""
}

// ParseCPUs parses a CPU quota written as a decimal ("0.5", "2") into
// billionths of a CPU, exactly (no floating point). The message is empty
// on success.
func ParseCPUs(s string) (int64, string) {
	m := cpusRE().FindStringSubmatch(s)
	if m == nil {
		return 0, "is not a decimal number of CPUs such as 0.5 or 2"
	}
	whole, _ := strconv.ParseInt(m[1], 10, 64)
	frac := int64(0)
	if m[2] != "" {
		frac, _ = strconv.ParseInt(m[2]+strings.Repeat("0", 9-len(m[2])), 10, 64)
	}
	n := whole*1_000_000_000 + frac
	if n < MinNanoCPUs || n > MaxNanoCPUs {
		return 0, "is not between 0.01 and 64 CPUs"
	}
	return n, ""
}
