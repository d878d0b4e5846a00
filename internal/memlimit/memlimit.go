package memlimit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultLimit is the soft limit when neither GOMEMLIMIT nor a cgroup
// memory limit says otherwise: about twice the daemon's high-water mark
// while converging 250 deckies (116 MB measured), so the collector only
// works harder well above anything the agent normally holds.
const DefaultLimit = 256 << 20

// cgroupShare is the part of a cgroup's memory limit given to the Go
// runtime: the rest covers what the runtime does not count (the binary's
// mapped text, C allocations, kernel buffers charged to the cgroup).
const cgroupShare = 0.9

// Source says where a Limit came from.
type Source string

const (
	FromEnv     Source = "GOMEMLIMIT" // the environment set it; untouched
	FromCgroup2 Source = "cgroup v2"  // memory.max
	FromCgroup1 Source = "cgroup v1"  // memory.limit_in_bytes
	FromDefault Source = "default"    // DefaultLimit
)

// Limit is the soft memory limit chosen, in bytes (math.MaxInt64: none).
type Limit struct {
	Bytes  int64
	Source Source
	// Cgroup is the cgroup file the limit was derived from, if any.
	Cgroup string
}

func (l Limit) String() string {
	if l.Bytes == math.MaxInt64 {
		return fmt.Sprintf("no limit (%s)", l.Source)
	}
	if l.Cgroup != "" {
		return fmt.Sprintf("%d MiB (%s, %s)", l.Bytes>>20, l.Source, l.Cgroup)
	}
	return fmt.Sprintf("%d MiB (%s)", l.Bytes>>20, l.Source)
}

// SetDefault sets the runtime's soft memory limit from Derive, unless
// GOMEMLIMIT is set in the environment (the runtime has already applied
// it). It returns what is in force. Call it once, first thing in main.
func SetDefault() Limit {
	env, set := os.LookupEnv("GOMEMLIMIT")
	l := Derive(env, set, os.DirFS("/"))
	if l.Source != FromEnv {
		debug.SetMemoryLimit(l.Bytes)
	} else {
		l.Bytes = debug.SetMemoryLimit(-1) // as the runtime parsed it
	}
	return l
}

// AfterPass returns the memory a pass freed to the system: a collection,
// then every free page released (runtime/debug.FreeOSMemory). Call it once
// a daemon pass has finished and its results are delivered; it costs one
// collection of a heap that is then mostly garbage.
func AfterPass() { debug.FreeOSMemory() }

// Derive chooses the limit: GOMEMLIMIT when set (envSet; its value is the
// runtime's to parse), else 90% of the tightest cgroup memory limit on the
// path from the process's cgroup to the root as read from root (a file
// system rooted at "/": proc/self/cgroup, sys/fs/cgroup/...), else
// DefaultLimit. Unreadable or malformed cgroup files are ignored: the
// default is a safe answer.
func Derive(env string, envSet bool, root fs.FS) Limit {
	if envSet && strings.TrimSpace(env) != "" {
		return Limit{Bytes: -1, Source: FromEnv}
	}
	if l, ok := cgroupLimit(root); ok {
		return l
	}
	return Limit{Bytes: DefaultLimit, Source: FromDefault}
}

// cgroupLimit reads /proc/self/cgroup and then, for v2 (the "0::" line),
// memory.max of the process's cgroup and each parent; for v1, the memory
// controller's memory.limit_in_bytes likewise. In a container with its own
// cgroup namespace the listed path may not exist under the mount (the
// container's cgroup is mounted as the root): the walk up reaches the
// mount's root file too.
func cgroupLimit(root fs.FS) (Limit, bool) {
	data, err := fs.ReadFile(root, "proc/self/cgroup")
	if err != nil {
		return Limit{}, false
	}
	var v2 string
	var v1 string
	have2, have1 := false, false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2, have2 = parts[2], true
		case hasController(parts[1], "memory"):
			v1, have1 = parts[2], true
		}
	}
	if have1 {
		if b, file, ok := tightest(root, "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"); ok {
			return Limit{Bytes: share(b), Source: FromCgroup1, Cgroup: "/" + file}, true
		}
	}
	if have2 {
		if b, file, ok := tightest(root, "sys/fs/cgroup", v2, "memory.max"); ok {
			return Limit{Bytes: share(b), Source: FromCgroup2, Cgroup: "/" + file}, true
		}
	}
	return Limit{}, false
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// unlimitedV1 is the smallest value cgroup v1 reports for "no limit"
// (LONG_MAX rounded down to the page size; any value this large is none).
const unlimitedV1 = math.MaxInt64 / 2

// tightest returns the smallest limit in file along cgroup path p (and
// its parents) under mount, and the file it came from.
func tightest(root fs.FS, mount, p, file string) (int64, string, bool) {
	p = path.Clean("/" + p)
	best, from, found := int64(math.MaxInt64), "", false
	for {
		f := path.Join(mount, p, file)
		if b, err := readLimit(root, f); err == nil && b < best {
			best, from, found = b, f, true
		}
		if p == "/" {
			break
		}
		p = path.Dir(p)
	}
	return best, from, found
}

var errNoLimit = errors.New("no limit")

// readLimit reads a cgroup memory limit file: a byte count, or "max"
// (v2) / a huge number (v1) meaning none (errNoLimit).
func readLimit(root fs.FS, name string) (int64, error) {
	data, err := fs.ReadFile(root, name)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, errNoLimit
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	if n <= 0 || n >= unlimitedV1 {
		return 0, errNoLimit
	}
	return n, nil
}

func share(b int64) int64 { return int64(float64(b) * cgroupShare) }
