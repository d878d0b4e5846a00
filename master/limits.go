package master

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sync"

	"github.com/decnet/pull-agent/report"
)

// Limits on what one report may carry (documented in
// docs/report-protocol.md). A body over MaxBodyBytes is a 413; any other
// limit is a 400 naming the field. Every limit is in bytes unless named.
const (
	MaxBodyBytes      = 4 << 20 // one POST body
	MaxEventsPerBody  = 500     // lifecycle events in one body
	MaxSeq            = 1<<53 - 1
	MaxEventError     = 64 << 10 // event error: container states and log lines
	MaxEventNote      = 4 << 10
	MaxCommit         = 64 // a SHA-1 or SHA-256 in hex
	MaxConfigHash     = 128
	MaxHostUUID       = 128
	MaxAgentVersion   = 64
	MaxRemote         = 2048
	MaxPassError      = 16 << 10
	MaxVerified       = 512  // who signed the applied commit
	MaxDeckies        = 4096 // status.deckies entries, and status.runtime entries
	MaxServices       = 64   // services of one decky
	MaxShortField     = 255  // ip, mac, hostname, archetype, nmap_os, distro, states, service names
	MaxRuntimeError   = 64 << 10
	MaxOutboxCounters = 1<<31 - 1
)

var (
	nameRE = lazyRE(`^[a-z0-9][a-z0-9-]{0,62}$`)
	idRE   = lazyRE(`^[A-Za-z0-9-]{8,64}$`)
	ops    = map[string]bool{"deploy": true, "mutate": true, "teardown": true, "repair": true, "drift": true}
	states = map[string]bool{"running": true, "succeeded": true, "failed": true, "quarantined": true}
)

// RejectedEvent names one event the master refused and why: the agent
// sets aside that event alone (matched by event_id and seq both) and sends
// the others again. The shape is report.RejectedEvent's plus index.
type RejectedEvent struct {
	EventID string `json:"event_id"`
	Seq     uint64 `json:"seq"`
	Field   string `json:"field,omitempty"` // the offending field, when one is
	Reason  string `json:"reason"`
	Index   int    `json:"index"` // position in the body's lifecycle array
}

// ErrorBody is every error answer's JSON body. Rejected is set only when
// specific events are malformed; then nothing of the body was recorded.
type ErrorBody struct {
	Error    string          `json:"error"`
	Rejected []RejectedEvent `json:"rejected,omitempty"`
}

// wireBody reads the lifecycle events one by one, so that one event that
// does not even decode (a negative seq, a string for a number) is named
// alone instead of failing the whole body.
type wireBody struct {
	report.Heartbeat
	Lifecycle []json.RawMessage `json:"lifecycle"`
}

// decodeBody parses and checks a report. A non-nil error is about the
// whole body (400); rejected lists malformed events (400 with the list).
func decodeBody(data []byte) (b *report.Body, rejected []RejectedEvent, err error) {
	var w wireBody
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&w); err != nil {
		return nil, nil, fmt.Errorf("malformed report: %w", err)
	}
	b = &report.Body{Heartbeat: w.Heartbeat}
	if b.Host == "" {
		b.Host = b.HostUUID // a DECNET agent names itself by UUID only
	}
	if err := checkHeartbeat(&b.Heartbeat); err != nil {
		return nil, nil, err
	}
	if len(w.Lifecycle) > MaxEventsPerBody {
		return nil, nil, fmt.Errorf("lifecycle: %d events, at most %d per body", len(w.Lifecycle), MaxEventsPerBody)
	}
	seen := map[string]bool{}
	for i, raw := range w.Lifecycle {
		var e report.Event
		if err := json.Unmarshal(raw, &e); err != nil {
			// Name what can be read of it.
			var partial struct {
				EventID string `json:"event_id"`
			}
			_ = json.Unmarshal(raw, &partial)
			rejected = append(rejected, RejectedEvent{Index: i, EventID: partial.EventID, Reason: fmt.Sprintf("lifecycle[%d]: %v", i, err)})
			continue
		}
		if field, msg := checkEvent(&e, b.Host); msg != "" {
			rejected = append(rejected, RejectedEvent{Index: i, EventID: e.EventID, Seq: e.Seq, Field: field,
				Reason: fmt.Sprintf("lifecycle[%d] (seq %d): %s", i, e.Seq, msg)})
			continue
		}
		if seen[e.EventID] {
			continue // the same event twice in one body is stored once, like a resend
		}
		seen[e.EventID] = true
		b.Lifecycle = append(b.Lifecycle, e)
	}
	return b, rejected, nil
}

func tooLong(field string, got, limit int) string {
	return fmt.Sprintf("%s: %d bytes, at most %d", field, got, limit)
}

// checkEvent returns the field at fault in one event and why, or "", "".
func checkEvent(e *report.Event, host string) (field, reason string) {
	switch {
	case !idRE().MatchString(e.EventID):
		return "event_id", fmt.Sprintf("event_id %q: want 8 to 64 letters, digits or '-'", truncate(e.EventID, 80))
	case e.Seq == 0 || e.Seq > MaxSeq:
		return "seq", fmt.Sprintf("seq %d: out of range 1..%d", e.Seq, uint64(MaxSeq))
	case !nameRE().MatchString(e.DeckyName):
		return "decky_name", fmt.Sprintf("decky_name %q is invalid", truncate(e.DeckyName, 80))
	case !ops[e.Operation]:
		return "operation", fmt.Sprintf("operation %q is not deploy, mutate, teardown or repair", truncate(e.Operation, 80))
	case !states[e.Status]:
		return "status", fmt.Sprintf("status %q is not running, succeeded, failed or quarantined", truncate(e.Status, 80))
	case e.Host != "" && e.Host != host:
		return "host", fmt.Sprintf("event of host %q in a report of host %q", truncate(e.Host, 80), host)
	case len(e.Error) > MaxEventError:
		return "error", tooLong("error", len(e.Error), MaxEventError)
	case len(e.Note) > MaxEventNote:
		return "note", tooLong("note", len(e.Note), MaxEventNote)
	case len(e.Commit) > MaxCommit:
		return "commit", tooLong("commit", len(e.Commit), MaxCommit)
	case len(e.ConfigHash) > MaxConfigHash:
		return "config_hash", tooLong("config_hash", len(e.ConfigHash), MaxConfigHash)
	}
	return "", ""
}

// checkHeartbeat bounds the heartbeat's fields: they describe the host's
// current state, so a violation refuses the whole body.
func checkHeartbeat(h *report.Heartbeat) error {
	type field struct {
		name  string
		value string
		limit int
	}
	if !nameRE().MatchString(h.Host) {
		return fmt.Errorf("host %q is not a valid host name (lower-case letters, digits and '-', at most 63)", truncate(h.Host, 80))
	}
	fields := []field{
		{"host_uuid", h.HostUUID, MaxHostUUID},
		{"agent_version", h.AgentVersion, MaxAgentVersion},
		{"commit", h.Commit, MaxCommit},
		{"remote", h.Remote, MaxRemote},
		{"pass_error", h.PassError, MaxPassError},
		{"verified", h.Verified, MaxVerified},
	}
	if h.OutboxDepth < 0 || h.OutboxDepth > MaxOutboxCounters || h.OutboxRejects < 0 || h.OutboxRejects > MaxOutboxCounters {
		return fmt.Errorf("outbox_depth %d / outbox_rejected %d: out of range 0..%d", h.OutboxDepth, h.OutboxRejects, MaxOutboxCounters)
	}
	if len(h.Status.Deckies) > MaxDeckies || len(h.Status.Runtime) > MaxDeckies {
		return fmt.Errorf("status: %d deckies, %d runtime entries, at most %d each", len(h.Status.Deckies), len(h.Status.Runtime), MaxDeckies)
	}
	for i, d := range h.Status.Deckies {
		p := fmt.Sprintf("status.deckies[%d].", i)
		if !nameRE().MatchString(d.Name) {
			return fmt.Errorf("%sname %q is invalid", p, truncate(d.Name, 80))
		}
		if len(d.Services) > MaxServices {
			return fmt.Errorf("%sservices: %d, at most %d", p, len(d.Services), MaxServices)
		}
		for j, svc := range d.Services {
			fields = append(fields, field{fmt.Sprintf("%sservices[%d]", p, j), svc, MaxShortField})
		}
		fields = append(fields, field{p + "ip", d.IP, MaxShortField}, field{p + "mac", d.MAC, MaxShortField},
			field{p + "hostname", d.Hostname, MaxShortField}, field{p + "archetype", d.Archetype, MaxShortField},
			field{p + "nmap_os", d.NmapOS, MaxShortField}, field{p + "distro", d.Distro, MaxShortField},
			field{p + "host_uuid", d.HostUUID, MaxHostUUID}, field{p + "config_hash", d.ConfigHash, MaxConfigHash})
	}
	for name, rt := range h.Status.Runtime {
		p := fmt.Sprintf("status.runtime[%q].", truncate(name, 80))
		if !nameRE().MatchString(name) {
			return fmt.Errorf("status.runtime: decky name %q is invalid", truncate(name, 80))
		}
		if len(rt.Services) > MaxServices {
			return fmt.Errorf("%sservices: %d, at most %d", p, len(rt.Services), MaxServices)
		}
		for svc, st := range rt.Services {
			fields = append(fields, field{p + "services key", svc, MaxShortField}, field{p + "services[" + truncate(svc, 80) + "]", st, MaxShortField})
		}
		fields = append(fields, field{p + "state", rt.State, MaxShortField}, field{p + "base", rt.Base, MaxShortField},
			field{p + "error", rt.Error, MaxRuntimeError})
	}
	for _, f := range fields {
		if len(f.value) > f.limit {
			return fmt.Errorf("%s", tooLong(f.name, len(f.value), f.limit))
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// lazyRE compiles pattern on first use: package-level regexps and
// templates are built when the process starts, by every command (the
// agent's once and version too, since everything links into one binary).
func lazyRE(pattern string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(pattern) })
}
