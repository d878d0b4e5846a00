package report

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestTruncate(t *testing.T) {
	cases := []struct {
		name, in   string
		max        int
		want       string // exact result, when given
		wantMarker bool
	}{
		{name: "short text is kept", in: "exited (1)", max: 64, want: "exited (1)"},
		{name: "exactly at the limit is kept", in: strings.Repeat("a", 40), max: 40, want: strings.Repeat("a", 40)},
		{name: "ASCII is cut with a marker", in: strings.Repeat("a", 100), max: 40, wantMarker: true},
		{name: "a cut never splits a rune", in: strings.Repeat("é", 100), max: 41, wantMarker: true},
		{name: "four-byte runes", in: strings.Repeat("🐝", 100), max: 50, wantMarker: true},
		{name: "invalid UTF-8 is replaced, as JSON would", in: "ok\xff\xfe", max: 64, want: "ok\uFFFD"},
		{name: "no room for the marker: a plain cut", in: "ééééé", max: 5, want: "éé"},
		{name: "zero", in: "abc", max: 0, want: ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Truncate(tc.in, tc.max)
			if len(got) > tc.max {
				t.Fatalf("%d bytes, above the %d limit: %q", len(got), tc.max, got)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("invalid UTF-8: %q", got)
			}
			if tc.want != "" || !tc.wantMarker {
				if got != tc.want {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
				return
			}
			if !strings.Contains(got, "…[truncated ") {
				t.Fatalf("no truncation marker: %q", got)
			}
			kept := got[:strings.Index(got, "…[truncated ")]
			if !strings.HasPrefix(tc.in, kept) || kept == "" {
				t.Fatalf("the kept part %q is not a prefix of the input", kept)
			}
		})
	}
}

// One event can never exceed the master's body limit, whatever its error
// text holds: the stored event is capped, and even fully JSON-escaped the
// body stays far below DefaultMaxBodyBytes.
func TestAddCapsEventText(t *testing.T) {
	box, _ := newBox(t)
	huge := strings.Repeat("\x01", 1<<20) // escapes to \u0001: six bytes each
	e, err := box.Add(Event{DeckyName: "d", Operation: "deploy", Status: "failed", Error: huge, Note: huge, Commit: huge})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Error) > MaxErrorBytes || len(e.Note) > MaxNoteBytes || len(e.Commit) > MaxShortFieldBytes {
		t.Fatalf("fields not capped: error %d note %d commit %d", len(e.Error), len(e.Note), len(e.Commit))
	}
	p, _ := box.Pending(0)
	if len(p) != 1 || p[0].Error != e.Error {
		t.Fatal("the stored event is not the capped one")
	}
	data, _ := json.Marshal(Body{Heartbeat: Heartbeat{Host: "worker-a"}, Lifecycle: p})
	if len(data) > 80<<10 { // as documented
		t.Fatalf("one event's body is %d bytes", len(data))
	}
	// A batch of the default size at its worst stays below the limit.
	big := strings.Repeat("x", 64<<10)
	worst := Event{EventID: big, Host: big, DeckyName: big, Operation: big, Status: big, Error: big, Commit: big, ConfigHash: big, Note: big}.Capped()
	batch := make([]Event, DefaultBatchSize)
	for i := range batch {
		batch[i] = worst
	}
	if data, _ := json.Marshal(Body{Lifecycle: batch}); len(data) > 13<<20/10 { // 1.3 MiB, as documented
		t.Fatalf("a full batch is %d bytes", len(data))
	}
}

func TestHeartbeatCappedLeavesTheCallersMapAlone(t *testing.T) {
	long := strings.Repeat("e", 10*MaxRuntimeErrorBytes)
	h := Heartbeat{PassError: strings.Repeat("p", 1<<20), Status: Status{Runtime: map[string]Runtime{"a": {Error: long}, "b": {Error: "short"}}}}
	c := h.Capped()
	if len(c.PassError) > MaxPassErrorBytes || len(c.Status.Runtime["a"].Error) > MaxRuntimeErrorBytes || c.Status.Runtime["b"].Error != "short" {
		t.Fatalf("not capped: %d %d", len(c.PassError), len(c.Status.Runtime["a"].Error))
	}
	if h.Status.Runtime["a"].Error != long {
		t.Fatal("Capped changed the caller's runtime map")
	}
}

// The new heartbeat fields are optional, and DECNET's names are unchanged.
func TestHeartbeatWireFields(t *testing.T) {
	keys := func(v any) map[string]any {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(data, &m)
		return m
	}
	plain := keys(Body{Heartbeat: Heartbeat{HostUUID: "u", Host: "h", AgentVersion: "1"}})
	for _, k := range []string{"host_uuid", "agent_version", "status", "lifecycle"} {
		if _, ok := plain[k]; !ok {
			t.Errorf("DECNET field %q missing", k)
		}
	}
	for _, k := range []string{"verified", "suspended", "delivery"} {
		if _, ok := plain[k]; ok {
			t.Errorf("optional field %q sent while unset", k)
		}
	}
	full := keys(Heartbeat{Verified: "ops@example.org", Suspended: true, Delivery: &DeliveryStatus{AuthFailing: true, LastHTTPStatus: 401, ConsecutiveFailures: 3}})
	if full["verified"] != "ops@example.org" || full["suspended"] != true {
		t.Errorf("verified/suspended: %v", full)
	}
	d, _ := full["delivery"].(map[string]any)
	if d["auth_failing"] != true || d["last_http_status"] != float64(401) || d["consecutive_failures"] != float64(3) {
		t.Errorf("delivery: %v", d)
	}
}

func TestDeliveryStatusString(t *testing.T) {
	at := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		d    DeliveryStatus
		want []string
	}{
		{name: "never tried", d: DeliveryStatus{}, want: []string{"no attempt yet"}},
		{name: "ok", d: DeliveryStatus{LastAttempt: at, LastSuccess: at}, want: []string{"ok", "last success 2026-11-29T10:00:00Z"}},
		{name: "auth", d: DeliveryStatus{LastAttempt: at, AuthFailing: true, ConsecutiveFailures: 4, LastError: "master answered 401 Unauthorized"},
			want: []string{"credentials refused (4 failed attempts)", "401"}},
		{name: "down", d: DeliveryStatus{LastAttempt: at, ConsecutiveFailures: 2, LastError: "connection refused"}, want: []string{"failing (2 failed attempts): connection refused"}},
		{name: "stuck", d: DeliveryStatus{LastAttempt: at, LastError: "too large", StuckSeq: 9}, want: []string{"event seq 9 too large"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.d.String()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
		})
	}
}

// Whatever the input, a truncated text is within the limit, valid UTF-8,
// and starts with a prefix of the (valid) input.
func FuzzTruncate(f *testing.F) {
	f.Add("exited (1): panic: runtime error", 16)
	f.Add(strings.Repeat("é🐝\xff", 50), 37)
	f.Add("", 0)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 1<<16 {
			return
		}
		got := Truncate(s, max)
		if len(got) > max || !utf8.ValidString(got) {
			t.Fatalf("Truncate(%q, %d) = %q", s, max, got)
		}
		valid := strings.ToValidUTF8(s, "\uFFFD")
		kept, _, cut := strings.Cut(got, "…[truncated ")
		if !strings.HasPrefix(valid, kept) || (!cut && got != valid && !strings.HasPrefix(valid, got)) {
			t.Fatalf("Truncate(%q, %d) = %q is not a prefix of the input", s, max, got)
		}
	})
}
