package apply

import (
	"reflect"

	"github.com/decnet/pull-agent/desired"
)

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
var DefaultServiceLimits = Limits{Pids: 256, MemoryBytes: 256 << 20, NanoCPUs: 1_000_000_000}

// BaseLimits are the fixed limits of every base container. A base only
// holds the decky's network namespace with one idle process (DECNET runs
// `sleep infinity`), so it gets little.
var BaseLimits = Limits{Pids: 32, MemoryBytes: 64 << 20, NanoCPUs: 250_000_000}

// serviceLimits returns a catalog service's limits, defaults filled in.
func serviceLimits(s *desired.Service) Limits {
	var l Limits
	if v := field(s, "Limits"); v.IsValid() {
		l = Limits{Pids: intField(v, "Pids"), MemoryBytes: intField(v, "MemoryBytes"), NanoCPUs: intField(v, "NanoCPUs")}
	}
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
func serviceChecked(s *desired.Service) bool {
	v := field(s, "Check")
	return !v.IsValid() || v.Bool()
}

// serviceReadOnly reports whether the service runs on a read-only root
// filesystem.
func serviceReadOnly(s *desired.Service) bool {
	v := field(s, "ReadOnly")
	return v.IsValid() && v.Bool()
}

// netRawReason is why the catalog lets the service keep NET_RAW ("" = it
// may not).
func netRawReason(s *desired.Service) string {
	if v := field(s, "NetRawReason"); v.IsValid() {
		return v.String()
	}
	return ""
}

// field and intField read catalog fields that package desired is adding
// (check, limits, read_only, the NET_RAW reason) while they land, so this
// package builds before and after. TODO(apply): read the fields directly
// once desired has them.
func field(s *desired.Service, name string) reflect.Value {
	return reflect.ValueOf(s).Elem().FieldByName(name)
}

func intField(v reflect.Value, name string) int64 {
	if f := v.FieldByName(name); f.IsValid() && f.CanInt() {
		return f.Int()
	}
	return 0
}
