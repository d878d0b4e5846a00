package desired

import (
	"sort"
	"strconv"
)

// OSFamily is the network-stack persona of a decky's base container:
// DECNET's per-nmap_os sysctls, which make an OS-fingerprinting scan of the
// decky answer like the named OS family.
type OSFamily struct {
	TTL, SynRetries, Timestamps, WindowScaling, SACK, ECN, NoPMTUDisc, FinTimeout, ICMPRateLimit, ICMPRateMask int
}

// OSFamilies is DECNET's os_fingerprint table (decnet-worker-model.md
// §8.4). DECNET falls back to linux on an unknown slug; this package rejects
// unknown slugs instead, so a typo cannot silently change a persona.
var OSFamilies = map[string]OSFamily{
	"linux":          {64, 6, 1, 1, 1, 2, 0, 60, 1000, 6168},
	"windows":        {128, 2, 1, 1, 1, 0, 0, 30, 0, 0},
	"windows_server": {128, 2, 1, 1, 1, 1, 0, 30, 0, 0},
	"bsd":            {64, 6, 1, 1, 1, 0, 0, 60, 250, 6168},
	"embedded":       {255, 3, 0, 0, 0, 0, 1, 15, 0, 0},
	"cisco":          {255, 2, 0, 0, 0, 0, 1, 15, 0, 0},
}

// DefaultNmapOS is the family of deckies that name none.
const DefaultNmapOS = "linux"

// Sysctls returns the namespaced net.ipv4 settings of the family, with
// string values as Docker takes them.
func (f OSFamily) Sysctls() map[string]string {
	return map[string]string{
		"net.ipv4.ip_default_ttl":     strconv.Itoa(f.TTL),
		"net.ipv4.tcp_syn_retries":    strconv.Itoa(f.SynRetries),
		"net.ipv4.tcp_timestamps":     strconv.Itoa(f.Timestamps),
		"net.ipv4.tcp_window_scaling": strconv.Itoa(f.WindowScaling),
		"net.ipv4.tcp_sack":           strconv.Itoa(f.SACK),
		"net.ipv4.tcp_ecn":            strconv.Itoa(f.ECN),
		"net.ipv4.ip_no_pmtu_disc":    strconv.Itoa(f.NoPMTUDisc),
		"net.ipv4.tcp_fin_timeout":    strconv.Itoa(f.FinTimeout),
		"net.ipv4.icmp_ratelimit":     strconv.Itoa(f.ICMPRateLimit),
		"net.ipv4.icmp_ratemask":      strconv.Itoa(f.ICMPRateMask),
	}
}

func osFamilyNames() []string {
	names := make([]string, 0, len(OSFamilies))
	for n := range OSFamilies {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
