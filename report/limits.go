package report

import (
	"fmt"
	"maps"
	"strings"
	"unicode/utf8"
)

// Size limits of text fields, in bytes of UTF-8. They keep one event, and
// one batch, far below the master's body limit (4 MiB in the reference
// master): an event at its largest holds under 13 KiB of text, a batch of
// DefaultBatchSize such events under 1.3 MiB, and even if every byte had to
// be JSON-escaped (\u00XX, six bytes) one event stays under 80 KiB.
// docs/report-protocol.md lists them.
const (
	// MaxErrorBytes caps Event.Error: container states and the last log
	// lines of a decky that did not reach a steady state.
	MaxErrorBytes = 8 << 10
	// MaxNoteBytes caps Event.Note (the address explanation).
	MaxNoteBytes = 1 << 10
	// MaxRuntimeErrorBytes caps Runtime.Error in the heartbeat, which
	// carries one per decky; the full text travels in the lifecycle event.
	MaxRuntimeErrorBytes = 2 << 10
	// MaxPassErrorBytes caps Heartbeat.PassError.
	MaxPassErrorBytes = 4 << 10
	// MaxShortFieldBytes caps the other strings an agent fills in (names,
	// hashes, the remote URL, the signer): they are short by construction,
	// and the cap only guarantees the bound.
	MaxShortFieldBytes = 512
)

// truncMarker ends a truncated text; %d is the number of bytes cut.
const truncMarker = "…[truncated %d bytes]"

// Truncate returns s cut to at most max bytes of valid UTF-8. A cut text
// ends with a marker saying how many bytes were removed, and the marker is
// counted in max. Invalid UTF-8 is replaced by U+FFFD first, as encoding/json
// would do, so the bound holds for what goes on the wire.
func Truncate(s string, max int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= max {
		return s
	}
	// The marker's length depends on the count it prints; the count is at
	// most len(s), so reserving for that many digits is always enough.
	reserve := len(fmt.Sprintf(truncMarker, len(s)))
	if max < reserve {
		// No room for a marker: a plain cut at a rune boundary.
		return cutRunes(s, max)
	}
	kept := cutRunes(s, max-reserve)
	return kept + fmt.Sprintf(truncMarker, len(s)-len(kept))
}

// cutRunes returns the longest prefix of s of at most n bytes that ends on
// a rune boundary.
func cutRunes(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Capped returns e with every free-text field within its limit
// (MaxErrorBytes, MaxNoteBytes, MaxShortFieldBytes). Add applies it before
// storing an event, and the sender again before posting one stored by an
// older version.
func (e Event) Capped() Event {
	e.Error = Truncate(e.Error, MaxErrorBytes)
	e.Note = Truncate(e.Note, MaxNoteBytes)
	for _, f := range []*string{&e.EventID, &e.Host, &e.DeckyName, &e.Operation, &e.Status, &e.Commit, &e.ConfigHash} {
		*f = Truncate(*f, MaxShortFieldBytes)
	}
	return e
}

// Capped returns h with its free-text fields within their limits:
// PassError (MaxPassErrorBytes), each Runtime.Error (MaxRuntimeErrorBytes)
// and the short fields (MaxShortFieldBytes). The runtime map is copied,
// never changed in place: the caller may still be reading it.
func (h Heartbeat) Capped() Heartbeat {
	h.PassError = Truncate(h.PassError, MaxPassErrorBytes)
	for _, f := range []*string{&h.HostUUID, &h.Host, &h.AgentVersion, &h.Commit, &h.Remote, &h.Verified} {
		*f = Truncate(*f, MaxShortFieldBytes)
	}
	if len(h.Status.Runtime) > 0 {
		rt := maps.Clone(h.Status.Runtime)
		for k, r := range rt {
			if len(r.Error) > MaxRuntimeErrorBytes || !utf8.ValidString(r.Error) {
				r.Error = Truncate(r.Error, MaxRuntimeErrorBytes)
				rt[k] = r
			}
		}
		h.Status.Runtime = rt
	}
	return h
}
