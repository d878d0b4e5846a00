package apply

import "github.com/decnet/pull-agent/desired"

// This file is the one place that reads the catalog's per-service safety
// settings (check:, limits:, read_only:, the NET_RAW reason), so rendering
// and the LAN check agree on them.

// Limits are the resource limits of one container.
type Limits struct {
	Pids        int64 // processes and threads; 0 = no limit
	MemoryBytes int64 // memory (and memory+swap: no swap beyond it); 0 = no limit
	NanoCPUs    int64 // CPU time in billionths of a CPU; 0 = no limit
}

// DefaultServiceLimits are the limits of a service container whose catalog
// entry sets none: room for a real daemon (OpenSSH, Postfix, a Python
// service) and its children, small enough that a decoy taken over by an
// attacker can neither fork-bomb nor starve the worker. They match the
// defaults package desired fills in.
var DefaultServiceLimits = Limits{Pids: desired.DefaultPids, MemoryBytes: desired.DefaultMemoryBytes, NanoCPUs: desired.DefaultNanoCPUs}

// BaseLimits are the fixed limits of every base container. A base only
// holds the decky's network namespace with one idle process (DECNET runs
// `sleep infinity`), so it gets little.
var BaseLimits = Limits{Pids: 32, MemoryBytes: 64 << 20, NanoCPUs: 250_000_000}

// serviceLimits returns a catalog service's limits, defaults filled in
// (desired fills them already; a zero field never means "unlimited").
func serviceLimits(s *desired.Service) Limits {
	l := Limits{Pids: s.Limits.Pids, MemoryBytes: s.Limits.MemoryBytes, NanoCPUs: s.Limits.NanoCPUs}
	if l.Pids <= 0 {
		l.Pids = DefaultServiceLimits.Pids
	}
	if l.MemoryBytes <= 0 {
		l.MemoryBytes = DefaultServiceLimits.MemoryBytes
	}
	if l.NanoCPUs <= 0 {
		l.NanoCPUs = DefaultServiceLimits.NanoCPUs
	}
	return l
}

// serviceChecked reports whether the LAN check probes the service's ports.
func serviceChecked(s *desired.Service) bool { return s.Check }

// serviceReadOnly reports whether the service runs on a read-only root
// filesystem.
func serviceReadOnly(s *desired.Service) bool { return s.ReadOnly }

// netRawReason is why the catalog lets the service keep NET_RAW ("" = it
// may not).
func netRawReason(s *desired.Service) string { return s.NetRawReason }
