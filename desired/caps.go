package desired

import (
	"sort"
	"strings"
)

// CapNetRaw is the capability a service may only hold with a written
// reason (net_raw_reason): raw sockets on a macvlan bridged onto the real
// LAN let a compromised decoy ARP-spoof it.
const CapNetRaw = "NET_RAW"

// CapNetAdmin is the base container's capability (it sets the decky's
// sysctls); a service never gets it.
const CapNetAdmin = "NET_ADMIN"

// serviceCaps is the capability allowlist of catalog services: Docker's
// default set minus NET_RAW (see CapNetRaw) and MKNOD (device nodes).
// Everything here acts inside the container's own namespaces and files.
// The rest is refused: what acts on the host or on kernel state that is not
// namespaced (SYS_ADMIN, SYS_MODULE, AUDIT_CONTROL, SYS_PACCT,
// SYS_RESOURCE, IPC_LOCK, ...), and NET_ADMIN, the base's alone.
var serviceCaps = map[string]bool{
	"AUDIT_WRITE":      true, // log in audit records (sshd, login)
	"CHOWN":            true,
	"DAC_OVERRIDE":     true,
	"FOWNER":           true,
	"FSETID":           true,
	"KILL":             true,
	"NET_BIND_SERVICE": true, // listen below 1024: most decoys
	"SETFCAP":          true,
	"SETGID":           true, // drop privileges after bind
	"SETPCAP":          true,
	"SETUID":           true,
	"SYS_CHROOT":       true, // sshd's privilege separation
}

// linuxCaps is every capability of Linux 6.x, so that a typo is told
// apart from a real capability that is not allowed.
var linuxCaps = []string{
	"AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE",
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER",
	"KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN",
	"NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP",
	"SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE",
	"SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG",
	"WAKE_ALARM",
}

// ServiceCapabilities returns the capabilities a catalog service may add
// with cap_add, sorted, without the "CAP_" prefix. NET_RAW is not among
// them: it also needs net_raw_reason.
func ServiceCapabilities() []string {
	out := make([]string, 0, len(serviceCaps))
	for c := range serviceCaps {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

func allowedCapsText() string {
	return "allowed: " + strings.Join(ServiceCapabilities(), ", ") + "; NET_RAW with net_raw_reason"
}

// checkCap checks one cap_add entry as written. It returns the canonical
// name (upper case, no "CAP_" prefix) and "" when the entry is acceptable
// (NET_RAW still needs its reason), or a message.
func checkCap(written string) (string, string) {
	upper := strings.ToUpper(written)
	name := strings.TrimPrefix(upper, "CAP_")
	known := false
	for _, c := range linuxCaps {
		known = known || c == name
	}
	switch {
	case written != upper && known:
		// Docker would take it, but the catalog is written one way.
		return "", `is not how capability names are written: write "` + name + `" (upper case)`
	case name == "ALL":
		return "", "would give a decoy every capability; list the ones it needs (" + allowedCapsText() + ")"
	case !known:
		msg := "is not a Linux capability"
		if near := nearestCap(name); near != "" {
			msg += "; did you mean " + near + "?"
		}
		return "", msg + " (" + allowedCapsText() + ")"
	case name == CapNetAdmin:
		return "", "belongs to the decky's base container alone; a service may not have it (" + allowedCapsText() + ")"
	case name == CapNetRaw, serviceCaps[name]:
		return name, ""
	}
	return "", "is not allowed for a decoy service (" + allowedCapsText() + ")"
}

// nearestCap returns the capability closest to name (at most two edits),
// or "".
func nearestCap(name string) string {
	best, bestD := "", 3
	for _, c := range linuxCaps {
		if d := editDistance(name, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of two short ASCII strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
