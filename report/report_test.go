package report

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newBox(t *testing.T) (*Outbox, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "outbox")
	box, err := OpenOutbox(dir, "worker-a")
	if err != nil {
		t.Fatal(err)
	}
	return box, dir
}

func add(t *testing.T, box *Outbox, decky string) Event {
	t.Helper()
	e, err := box.Add(Event{DeckyName: decky, Operation: "deploy", Status: "succeeded", CompletedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestOutboxIsDurableOrderedAndMonotonic(t *testing.T) {
	box, dir := newBox(t)
	a, b := add(t, box, "a"), add(t, box, "b")
	if a.Seq != 1 || b.Seq != 2 || a.EventID == b.EventID || a.Host != "worker-a" {
		t.Fatalf("events: %+v %+v", a, b)
	}
	// A restarted agent sees the same queue and continues the sequence.
	box2, err := OpenOutbox(dir, "worker-a")
	if err != nil {
		t.Fatal(err)
	}
	if c := add(t, box2, "c"); c.Seq != 3 {
		t.Fatalf("seq after reopen = %d", c.Seq)
	}
	p, _ := box2.Pending(0)
	if len(p) != 3 || p[0].DeckyName != "a" || p[2].DeckyName != "c" {
		t.Fatalf("pending: %+v", p)
	}
	// Numbers are never reused, even after the queue drains.
	if err := box2.Ack(p); err != nil {
		t.Fatal(err)
	}
	box3, _ := OpenOutbox(dir, "worker-a")
	if d := add(t, box3, "d"); d.Seq != 4 {
		t.Fatalf("seq after draining = %d", d.Seq)
	}
	// An event written just before a crash that lost the counter update.
	os.WriteFile(filepath.Join(dir, "seq"), []byte("1"), 0o600)
	box5, _ := OpenOutbox(dir, "worker-a")
	if e := add(t, box5, "e"); e.Seq != 5 {
		t.Fatalf("seq must stay above every event on disk, got %d", e.Seq)
	}
}

// A process killed between an event's file and the counter update: the
// next process delivers that event and removes its file; the one after
// must still not hand its number out again (the master would take the
// reused number for a duplicate and drop the new event).
func TestOutboxNumberNotReusedAfterKillBeforeCounter(t *testing.T) {
	box, dir := newBox(t)
	add(t, box, "a") // seq 1, counter 1
	add(t, box, "b") // seq 2, counter 2
	p, _ := box.Pending(0)
	if err := box.Ack(p); err != nil {
		t.Fatal(err)
	}
	c := add(t, box, "c") // seq 3
	// The kill: the counter update of seq 3 never happened.
	if err := os.WriteFile(filepath.Join(dir, "seq"), []byte("2"), 0o600); err != nil {
		t.Fatal(err)
	}
	box2, _ := OpenOutbox(dir, "worker-a")
	p, _ = box2.Pending(0)
	if len(p) != 1 || p[0].Seq != c.Seq {
		t.Fatalf("pending after the kill: %+v", p)
	}
	if err := box2.Ack(p); err != nil { // delivered by the restarted agent
		t.Fatal(err)
	}
	box3, _ := OpenOutbox(dir, "worker-a")
	if d := add(t, box3, "d"); d.Seq != c.Seq+1 {
		t.Fatalf("seq %d handed out again (got %d after a delivered %d)", c.Seq, d.Seq, c.Seq)
	}
}

func TestOutboxBound(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	box, err := OpenOutboxWith(dir, "worker-a", OutboxOptions{MaxEvents: 2})
	if err != nil {
		t.Fatal(err)
	}
	add(t, box, "a")
	add(t, box, "b")
	if _, err := box.Add(Event{DeckyName: "c", Operation: "deploy", Status: "succeeded"}); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("want ErrOutboxFull, got %v", err)
	}
	if p, _ := box.Pending(0); len(p) != 2 || p[0].DeckyName != "a" {
		t.Fatalf("a full outbox must keep its oldest events: %+v", p)
	}
}

// master is a test master: answer decides each reply from the request
// number and body; every 2xx body's events are recorded in arrival order.
type master struct {
	t      *testing.T
	answer func(n int, b Body, r *http.Request) func(http.ResponseWriter)

	mu       stdsync.Mutex
	requests int
	bodies   []Body
	sizes    []int
	headers  []http.Header
	stored   []Event         // events of 2xx bodies, in order, deduplicated
	ids      map[string]bool // event_id already stored
	resent   int             // events received again after a 2xx (deduplicated)
}

func newMaster(t *testing.T, answer func(n int, b Body, r *http.Request) func(http.ResponseWriter)) (*master, *httptest.Server) {
	m := &master{t: t, answer: answer, ids: map[string]bool{}}
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	return m, srv
}

func (m *master) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	data, _ := io.ReadAll(req.Body)
	var b Body
	if err := json.Unmarshal(data, &b); err != nil {
		http.Error(w, "malformed", http.StatusBadRequest)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.requests
	m.requests++
	m.bodies = append(m.bodies, b)
	m.sizes = append(m.sizes, len(data))
	m.headers = append(m.headers, req.Header.Clone())
	if m.answer != nil {
		if a := m.answer(n, b, req); a != nil {
			rec := httptest.NewRecorder()
			a(rec)
			if rec.Code/100 != 2 {
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
				return
			}
		}
	}
	for _, e := range b.Lifecycle {
		if m.ids[e.EventID] {
			m.resent++
			continue
		}
		m.ids[e.EventID] = true
		m.stored = append(m.stored, e)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (m *master) snapshot() (stored []Event, requests int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Event(nil), m.stored...), m.requests
}

func status(code int, hdr ...string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		w.WriteHeader(code)
		io.WriteString(w, http.StatusText(code))
	}
}

// waits records the backoff a sender chose; go-retryablehttp then sleeps
// none of it.
type waits struct {
	mu stdsync.Mutex
	d  []time.Duration
}

func (w *waits) take(d time.Duration) time.Duration {
	w.mu.Lock()
	w.d = append(w.d, d)
	w.mu.Unlock()
	return 0
}

func newSender(t *testing.T, box *Outbox, url string, opt SenderOptions) (*Sender, *waits) {
	t.Helper()
	opt.Master, opt.AllowInsecure = url, true
	s, err := NewSender(box, opt, quiet())
	if err != nil {
		t.Fatal(err)
	}
	w := &waits{}
	s.sleepFor = w.take
	return s, w
}

var hb = Heartbeat{Host: "worker-a", HostUUID: "worker-a", AgentVersion: "test"}

// checkDelivered fails unless the master stored exactly events, once each,
// in seq order.
func checkDelivered(t *testing.T, m *master, events []Event) {
	t.Helper()
	stored, _ := m.snapshot()
	if len(stored) != len(events) {
		t.Fatalf("master stored %d events, want %d", len(stored), len(events))
	}
	for i, e := range stored {
		if e.EventID != events[i].EventID || e.Seq != events[i].Seq {
			t.Fatalf("stored[%d] = seq %d %s, want seq %d %s: out of order or not the same event", i, e.Seq, e.EventID, events[i].Seq, events[i].EventID)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.resent != 0 {
		t.Fatalf("%d events were sent again after the master acknowledged them", m.resent)
	}
}

func TestRetriesHonourBackoffAndRetryAfter(t *testing.T) {
	m, srv := newMaster(t, func(n int, _ Body, _ *http.Request) func(http.ResponseWriter) {
		switch n {
		case 0:
			return status(500)
		case 1:
			return status(429, "Retry-After", "2")
		}
		return nil
	})
	box, _ := newBox(t)
	e := add(t, box, "a")
	s, w := newSender(t, box, srv.URL, SenderOptions{RetryWaitMin: 200 * time.Millisecond, RetryWaitMax: time.Second})
	if n, err := s.Flush(context.Background(), hb); err != nil || n != 1 {
		t.Fatalf("flush: %d %v", n, err)
	}
	if len(w.d) != 2 {
		t.Fatalf("want 2 waits, got %v", w.d)
	}
	// After a 500: exponential backoff with jitter, between min and the
	// first ceiling (2 x min).
	if w.d[0] < 200*time.Millisecond || w.d[0] > 400*time.Millisecond {
		t.Errorf("backoff after 500 = %s, want 200ms..400ms", w.d[0])
	}
	// After a 429 with Retry-After: 2, the master's wish, not the backoff.
	if w.d[1] != 2*time.Second {
		t.Errorf("wait after 429 Retry-After: 2 = %s, want 2s", w.d[1])
	}
	if box.Depth() != 0 {
		t.Errorf("an acknowledged event stayed queued")
	}
	// The same event was resent each time, by ID.
	for _, b := range m.bodies {
		if len(b.Lifecycle) != 1 || b.Lifecycle[0].EventID != e.EventID {
			t.Fatalf("bodies differ between retries: %+v", m.bodies)
		}
	}
	checkDelivered(t, m, []Event{e})
}

func TestUnreachableMasterKeepsEvents(t *testing.T) {
	box, _ := newBox(t)
	add(t, box, "a")
	s, w := newSender(t, box, "http://127.0.0.1:1", SenderOptions{RetryMax: 2})
	if _, err := s.Flush(context.Background(), hb); err == nil {
		t.Fatal("flush to a dead master succeeded")
	}
	if box.Depth() != 1 || box.Rejected() != 0 {
		t.Fatal("an undelivered event left the outbox")
	}
	if len(w.d) != 2 {
		t.Errorf("want 2 retries, got waits %v", w.d)
	}
	st := s.Status()
	if st.ConsecutiveFailures != 3 || st.LastHTTPStatus != 0 || st.LastError == "" || st.AuthFailing {
		t.Errorf("status after an outage: %+v", st)
	}
}

// Issue 9 §3: no answer without a per-event verdict sets anything aside.
func TestAnswersWithoutVerdictKeepEveryEventQueued(t *testing.T) {
	cases := []struct {
		name string
		// answer is the master's (or a proxy's) reply to every request.
		answer   func(b Body) func(http.ResponseWriter)
		wantAuth bool
		wantCode int
	}{
		{name: "401 expired token", answer: func(Body) func(http.ResponseWriter) { return status(401) }, wantAuth: true, wantCode: 401},
		{name: "403 wrong host", answer: func(Body) func(http.ResponseWriter) { return status(403) }, wantAuth: true, wantCode: 403},
		{name: "407 proxy", answer: func(Body) func(http.ResponseWriter) { return status(407) }, wantAuth: true, wantCode: 407},
		{name: "404 wrong path", answer: func(Body) func(http.ResponseWriter) { return status(404) }, wantCode: 404},
		{name: "400 without a body naming events", answer: func(Body) func(http.ResponseWriter) { return status(400) }, wantCode: 400},
		{name: "422 with an HTML page", answer: func(Body) func(http.ResponseWriter) { return status(422) }, wantCode: 422},
		{name: "410 gone", answer: func(Body) func(http.ResponseWriter) { return status(410) }, wantCode: 410},
		{name: "302 to a login page", answer: func(Body) func(http.ResponseWriter) { return status(302, "Location", "/login") }, wantCode: 302},
		{name: "422 naming an event that was not sent", answer: func(b Body) func(http.ResponseWriter) {
			return func(w http.ResponseWriter) {
				WriteRefusal(w, Refusal{Error: "invalid", Rejected: []RejectedEvent{{EventID: "0000-not-sent", Seq: 99, Reason: "?"}}})
			}
		}, wantCode: 422},
		{name: "422 naming a sent event_id under another seq", answer: func(b Body) func(http.ResponseWriter) {
			return func(w http.ResponseWriter) {
				WriteRefusal(w, Refusal{Error: "invalid", Rejected: []RejectedEvent{{EventID: b.Lifecycle[0].EventID, Seq: b.Lifecycle[0].Seq + 1, Reason: "?"}}})
			}
		}, wantCode: 422},
		{name: "422 with an empty verdict", answer: func(b Body) func(http.ResponseWriter) {
			return func(w http.ResponseWriter) { WriteRefusal(w, Refusal{Error: "invalid"}) }
		}, wantCode: 422},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, srv := newMaster(t, func(_ int, b Body, _ *http.Request) func(http.ResponseWriter) { return tc.answer(b) })
			box, _ := newBox(t)
			for _, d := range []string{"a", "b", "c"} {
				add(t, box, d)
			}
			s, w := newSender(t, box, srv.URL, SenderOptions{RetryMax: 3})
			n, err := s.Flush(context.Background(), hb)
			if err == nil || n != 0 {
				t.Fatalf("flush: %d %v", n, err)
			}
			if box.Depth() != 3 || box.Rejected() != 0 {
				t.Fatalf("depth %d rejected %d: events were set aside without a per-event verdict", box.Depth(), box.Rejected())
			}
			if len(w.d) != 3 {
				t.Errorf("want 3 retries with backoff, got %v", w.d)
			}
			for i := 1; i < len(w.d); i++ {
				if w.d[i] < s.opt.RetryWaitMin || w.d[i] > s.opt.RetryWaitMin<<i {
					t.Errorf("wait %d = %s outside the exponential ceiling", i, w.d[i])
				}
			}
			if errors.Is(err, ErrAuth) != tc.wantAuth {
				t.Errorf("errors.Is(ErrAuth) = %v for %v", !tc.wantAuth, err)
			}
			var he *HTTPError
			if !errors.As(err, &he) || he.StatusCode != tc.wantCode {
				t.Errorf("want an *HTTPError %d, got %v", tc.wantCode, err)
			}
			st := s.Status()
			if st.AuthFailing != tc.wantAuth || st.LastHTTPStatus != tc.wantCode || st.ConsecutiveFailures != 4 || st.LastError == "" || !st.LastSuccess.IsZero() {
				t.Errorf("status: %+v", st)
			}
			// Surfaced to another process (the status command) too.
			if d, ok := box.Delivery(); !ok || d.AuthFailing != tc.wantAuth || d.ConsecutiveFailures != 4 {
				t.Errorf("stored delivery status: %+v %v", d, ok)
			}
		})
	}
}

// The master's per-event verdict sets aside exactly the events it names,
// and the rest of the batch is delivered in order in the same flush. The
// contract is 422; a 400 with the same body is honoured too.
func TestVerdictSetsAsideOnlyTheNamedEvents(t *testing.T) {
	for _, code := range []int{RefusalStatus, http.StatusBadRequest} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			bad := map[string]bool{"Bad_1": true, "Bad_2": true}
			m, srv := newMaster(t, func(_ int, b Body, _ *http.Request) func(http.ResponseWriter) {
				ref := Refusal{Error: "invalid report"}
				for _, e := range b.Lifecycle {
					if bad[e.DeckyName] {
						ref.Rejected = append(ref.Rejected, RejectedEvent{EventID: e.EventID, Seq: e.Seq, Field: "decky_name", Reason: "not a valid name"})
					}
				}
				switch {
				case len(ref.Rejected) == 0:
					return nil
				case code == RefusalStatus:
					return func(w http.ResponseWriter) { WriteRefusal(w, ref) }
				}
				return func(w http.ResponseWriter) {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(code)
					json.NewEncoder(w).Encode(ref)
				}
			})
			box, dir := newBox(t)
			var want []Event
			for _, d := range []string{"a", "Bad_1", "b", "c", "Bad_2", "d"} {
				e := add(t, box, d)
				if !bad[d] {
					want = append(want, e)
				}
			}
			s, w := newSender(t, box, srv.URL, SenderOptions{BatchSize: 4})
			n, err := s.Flush(context.Background(), hb)
			if err != nil || n != 4 {
				t.Fatalf("flush: %d %v", n, err)
			}
			checkDelivered(t, m, want)
			if box.Depth() != 0 || box.Rejected() != 2 {
				t.Fatalf("depth %d rejected %d", box.Depth(), box.Rejected())
			}
			if len(w.d) != 0 {
				t.Errorf("a verdict needs no backoff: %v", w.d)
			}
			reason, err := os.ReadFile(filepath.Join(dir, "rejected", strings.TrimSuffix(eventName(2), ".json")+".reason"))
			if err != nil || !strings.Contains(string(reason), "decky_name: not a valid name") {
				t.Errorf("reason beside the set-aside event: %q %v", reason, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "rejected", eventName(5))); err != nil {
				t.Errorf("the second refused event is not kept: %v", err)
			}
			st := s.Status()
			if st.SetAside != 2 || st.Delivered != 4 || st.AuthFailing || st.ConsecutiveFailures != 0 {
				t.Errorf("status: %+v", st)
			}
			// The last heartbeat counts what was set aside.
			if last := m.bodies[len(m.bodies)-1]; last.OutboxRejects != 2 {
				t.Errorf("heartbeat outbox_rejected = %d", last.OutboxRejects)
			}
		})
	}
}

// Issue 9 (d) at the report level: a master answering 401 for a while,
// then recovering. Every event is delivered exactly once, in order, and
// none is set aside.
func TestAuthOutageThenRecoveryDeliversExactlyOnceInOrder(t *testing.T) {
	const failing = 7
	m, srv := newMaster(t, func(n int, _ Body, r *http.Request) func(http.ResponseWriter) {
		if n < failing {
			return func(w http.ResponseWriter) {
				http.Error(w, "invalid or expired token for host worker-a", http.StatusUnauthorized)
			}
		}
		return nil
	})
	box, _ := newBox(t)
	var want []Event
	for i := 0; i < 5; i++ {
		want = append(want, add(t, box, "early"))
	}
	s, _ := newSender(t, box, srv.URL, SenderOptions{RetryMax: 2, BatchSize: 3})

	// Two passes of 3 attempts each, all 401; the third pass meets one
	// more 401, then the master recovers.
	for pass := 0; pass < 2; pass++ {
		n, err := s.Flush(context.Background(), hb)
		if !errors.Is(err, ErrAuth) || n != 0 {
			t.Fatalf("pass %d: %d %v", pass, n, err)
		}
		if !strings.Contains(err.Error(), "expired token") {
			t.Errorf("the master's explanation is lost: %v", err)
		}
		st := s.Status()
		if !st.AuthFailing || st.LastHTTPStatus != 401 || st.ConsecutiveFailures != 3*(pass+1) {
			t.Fatalf("status after pass %d: %+v", pass, st)
		}
		// New events keep arriving during the outage.
		want = append(want, add(t, box, "during"))
	}
	if box.Depth() != 7 || box.Rejected() != 0 {
		t.Fatalf("depth %d rejected %d during the outage", box.Depth(), box.Rejected())
	}
	n, err := s.Flush(context.Background(), hb)
	if err != nil || n != 7 {
		t.Fatalf("after recovery: %d %v", n, err)
	}
	checkDelivered(t, m, want)
	if box.Depth() != 0 || box.Rejected() != 0 {
		t.Fatalf("depth %d rejected %d after recovery", box.Depth(), box.Rejected())
	}
	st := s.Status()
	if st.AuthFailing || st.ConsecutiveFailures != 0 || st.LastError != "" || st.LastSuccess.IsZero() || st.Delivered != 7 {
		t.Errorf("status after recovery: %+v", st)
	}
	// The heartbeat told the master about the trouble it had (as known
	// when the body was built, before the third pass's attempts).
	if d := m.bodies[failing].Delivery; d == nil || !d.AuthFailing || d.ConsecutiveFailures != 6 {
		t.Errorf("first accepted heartbeat's delivery: %+v", d)
	}
}

// A 413 halves the batch until it fits: every event is delivered, once,
// in order.
func TestTooLargeSplitsTheBatch(t *testing.T) {
	const most = 3 // the master takes at most this many events per body
	m, srv := newMaster(t, func(_ int, b Body, _ *http.Request) func(http.ResponseWriter) {
		if len(b.Lifecycle) > most {
			return status(http.StatusRequestEntityTooLarge)
		}
		return nil
	})
	box, _ := newBox(t)
	var want []Event
	for i := 0; i < 25; i++ {
		want = append(want, add(t, box, "d"))
	}
	s, w := newSender(t, box, srv.URL, SenderOptions{BatchSize: 20})
	n, err := s.Flush(context.Background(), hb)
	if err != nil || n != 25 {
		t.Fatalf("flush: %d %v", n, err)
	}
	checkDelivered(t, m, want)
	if box.Rejected() != 0 || len(w.d) != 0 {
		t.Errorf("rejected %d, waits %v", box.Rejected(), w.d)
	}
}

// A single event the master refuses as too large even alone stays queued,
// and the error says which.
func TestSingleEventTooLargeStaysQueued(t *testing.T) {
	m, srv := newMaster(t, func(_ int, b Body, _ *http.Request) func(http.ResponseWriter) {
		for _, e := range b.Lifecycle {
			if e.DeckyName == "huge" {
				return status(http.StatusRequestEntityTooLarge)
			}
		}
		return nil
	})
	box, _ := newBox(t)
	first := add(t, box, "a")
	huge := add(t, box, "huge")
	add(t, box, "b")
	s, _ := newSender(t, box, srv.URL, SenderOptions{})
	n, err := s.Flush(context.Background(), hb)
	if !errors.Is(err, ErrEventTooLarge) || n != 1 {
		t.Fatalf("flush: %d %v", n, err)
	}
	checkDelivered(t, m, []Event{first})
	if box.Depth() != 2 || box.Rejected() != 0 {
		t.Fatalf("depth %d rejected %d: the event must stay, not be dropped", box.Depth(), box.Rejected())
	}
	if st := s.Status(); st.StuckSeq != huge.Seq || !strings.Contains(st.LastError, "too large") {
		t.Errorf("status: %+v", st)
	}
}

// The sender splits a batch whose body would exceed MaxBodyBytes before
// the master has to refuse it.
func TestBatchesAreSplitBelowTheBodyLimit(t *testing.T) {
	m, srv := newMaster(t, nil)
	box, _ := newBox(t)
	var want []Event
	for i := 0; i < 12; i++ {
		e, err := box.Add(Event{DeckyName: "d", Operation: "deploy", Status: "failed", Error: strings.Repeat("x", MaxErrorBytes)})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, e)
	}
	const limit = 40 << 10
	s, _ := newSender(t, box, srv.URL, SenderOptions{MaxBodyBytes: limit})
	if n, err := s.Flush(context.Background(), hb); err != nil || n != 12 {
		t.Fatalf("flush: %d %v", n, err)
	}
	checkDelivered(t, m, want)
	for i, size := range m.sizes {
		if size > limit {
			t.Errorf("request %d is %d bytes, above the %d limit", i, size, limit)
		}
	}
}

func TestTokenIsReadAtEveryAttempt(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("old\n"), 0o600)
	m, srv := newMaster(t, func(n int, _ Body, r *http.Request) func(http.ResponseWriter) {
		if r.Header.Get("Authorization") != "Bearer new" {
			// The operator replaces the token while the agent retries.
			os.WriteFile(tok, []byte("new\n"), 0o600)
			return status(401)
		}
		return nil
	})
	box, _ := newBox(t)
	e := add(t, box, "a")
	s, _ := newSender(t, box, srv.URL, SenderOptions{TokenFile: tok})
	if n, err := s.Flush(context.Background(), hb); err != nil || n != 1 {
		t.Fatalf("flush: %d %v", n, err)
	}
	checkDelivered(t, m, []Event{e})

	// A token file that cannot be read is a credential failure: surfaced,
	// nothing set aside.
	os.Remove(tok)
	add(t, box, "b")
	if _, err := s.Flush(context.Background(), hb); !errors.Is(err, ErrAuth) {
		t.Fatalf("want ErrAuth, got %v", err)
	}
	if box.Depth() != 1 || box.Rejected() != 0 || !s.Status().AuthFailing {
		t.Fatalf("depth %d rejected %d status %+v", box.Depth(), box.Rejected(), s.Status())
	}
	if strings.Contains(s.Status().LastError, "new") {
		t.Errorf("the token leaked into the status: %q", s.Status().LastError)
	}
}

// The deadline of a flush bounds it: no wait that would end past it.
func TestNoBackoffPastTheDeadline(t *testing.T) {
	_, srv := newMaster(t, func(int, Body, *http.Request) func(http.ResponseWriter) { return status(503) })
	box, _ := newBox(t)
	add(t, box, "a")
	s, w := newSender(t, box, srv.URL, SenderOptions{RetryWaitMin: time.Hour, RetryWaitMax: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.Flush(ctx, hb); err == nil {
		t.Fatal("flush succeeded against a 503")
	}
	if len(w.d) != 0 {
		t.Errorf("waited %v although the deadline is sooner", w.d)
	}
}

func TestDeliveryStatusSurvivesARestart(t *testing.T) {
	_, srv := newMaster(t, func(int, Body, *http.Request) func(http.ResponseWriter) { return status(403) })
	box, dir := newBox(t)
	add(t, box, "a")
	s, _ := newSender(t, box, srv.URL, SenderOptions{RetryMax: -1})
	s.Flush(context.Background(), hb)
	box2, _ := OpenOutbox(dir, "worker-a")
	s2, _ := newSender(t, box2, srv.URL, SenderOptions{})
	if st := s2.Status(); !st.AuthFailing || st.ConsecutiveFailures != 1 || st.LastHTTPStatus != 403 {
		t.Errorf("status after restart: %+v", st)
	}
}

func TestPlainHTTPNeedsExplicitOptIn(t *testing.T) {
	box, _ := newBox(t)
	if _, err := NewSender(box, SenderOptions{Master: "http://master:8770"}, quiet()); err == nil {
		t.Fatal("a plain-http master was accepted without opt-in")
	}
	if _, err := NewSender(box, SenderOptions{Master: "master:8770"}, quiet()); err == nil {
		t.Fatal("a master URL without a scheme was accepted")
	}
}

func TestTLSPinAndToken(t *testing.T) {
	m := &master{t: t, ids: map[string]bool{}}
	srv := httptest.NewTLSServer(m)
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("s3cret-token\n"), 0o600)
	sum := sha256.Sum256(srv.Certificate().Raw)
	good := hex.EncodeToString(sum[:])
	box, _ := newBox(t)
	add(t, box, "a")
	ctx := context.Background()

	s, _ := NewSender(box, SenderOptions{Master: srv.URL, CAFile: ca, PinSHA256: strings.Repeat("00", 32)}, quiet())
	if _, err := s.Flush(ctx, hb); err == nil || !strings.Contains(err.Error(), "does not match the pinned") {
		t.Fatalf("a wrong pin must fail the handshake, got %v", err)
	}
	if _, n := m.snapshot(); n != 0 {
		t.Fatal("a request went to a master whose certificate does not match the pin")
	}
	if box.Depth() != 1 || box.Rejected() != 0 {
		t.Fatal("an untrusted master made the agent drop or set aside an event")
	}
	s, _ = NewSender(box, SenderOptions{Master: srv.URL, CAFile: ca, PinSHA256: good, TokenFile: tok}, quiet())
	if n, err := s.Flush(ctx, hb); err != nil || n != 1 {
		t.Fatalf("pinned flush: %d %v", n, err)
	}
	if got := m.headers[0].Get("Authorization"); got != "Bearer s3cret-token" {
		t.Errorf("Authorization = %q", got)
	}
}

func TestBackoffIsCappedJittered(t *testing.T) {
	seen := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		d := Backoff(100*time.Millisecond, time.Second, 10, nil)
		if d < 100*time.Millisecond || d > time.Second {
			t.Fatalf("backoff %s outside [min, max]", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("backoff is not jittered: %v", seen)
	}
	resp := &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"7"}}}
	if d := Backoff(100*time.Millisecond, time.Second, 0, resp); d != 7*time.Second {
		t.Errorf("Retry-After on 503 ignored: %s", d)
	}
}

// Shutting down in the middle of a flush is not a delivery failure: the
// events stay, and the status keeps what the master last said.
func TestCancelledFlushIsNoFailure(t *testing.T) {
	_, srv := newMaster(t, nil)
	box, _ := newBox(t)
	add(t, box, "a")
	s, _ := newSender(t, box, srv.URL, SenderOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Flush(ctx, hb); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	if st := s.Status(); st.ConsecutiveFailures != 0 || st.LastError != "" || !st.LastAttempt.IsZero() {
		t.Errorf("a cancelled flush was recorded as a failure: %+v", st)
	}
	if box.Depth() != 1 || box.Rejected() != 0 {
		t.Fatalf("depth %d rejected %d", box.Depth(), box.Rejected())
	}
}

// When the last batch is refused entirely, the heartbeat still goes, with
// the new count of set-aside events.
func TestHeartbeatAfterALastBatchRefused(t *testing.T) {
	m, srv := newMaster(t, func(_ int, b Body, _ *http.Request) func(http.ResponseWriter) {
		for _, e := range b.Lifecycle {
			if e.DeckyName == "Bad" {
				return func(w http.ResponseWriter) {
					WriteRefusal(w, Refusal{Error: "invalid", Rejected: []RejectedEvent{{EventID: e.EventID, Seq: e.Seq, Reason: "bad name"}}})
				}
			}
		}
		return nil
	})
	box, _ := newBox(t)
	a, b := add(t, box, "a"), add(t, box, "b")
	add(t, box, "Bad")
	s, _ := newSender(t, box, srv.URL, SenderOptions{BatchSize: 2})
	if n, err := s.Flush(context.Background(), hb); err != nil || n != 2 {
		t.Fatalf("flush: %d %v", n, err)
	}
	checkDelivered(t, m, []Event{a, b})
	last := m.bodies[len(m.bodies)-1]
	if len(last.Lifecycle) != 0 || last.OutboxRejects != 1 || last.OutboxDepth != 0 {
		t.Errorf("last body: %d events, rejected %d, depth %d", len(last.Lifecycle), last.OutboxRejects, last.OutboxDepth)
	}
}

// A redirect (to a login page, say) is no delivery: followed, it would turn
// the POST into a GET whose 200 would acknowledge events nobody stored.
func TestRedirectIsNotDelivery(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc(HeartbeatPath, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/login", http.StatusFound)
	})
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>sign in</html>") })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	box, _ := newBox(t)
	add(t, box, "a")
	s, _ := newSender(t, box, srv.URL, SenderOptions{RetryMax: -1})
	if n, err := s.Flush(context.Background(), hb); err == nil || n != 0 {
		t.Fatalf("a redirect counted as delivery: %d %v", n, err)
	}
	if box.Depth() != 1 || box.Rejected() != 0 || s.Status().LastHTTPStatus != http.StatusFound {
		t.Fatalf("depth %d rejected %d status %+v", box.Depth(), box.Rejected(), s.Status())
	}
}

// A flush cancelled while go-retryablehttp waits before a retry ends the
// wait at once; the attempt that ended counts, the cancel does not.
func TestCancelDuringTheWaitEndsTheFlush(t *testing.T) {
	m, srv := newMaster(t, func(int, Body, *http.Request) func(http.ResponseWriter) { return status(503) })
	box, _ := newBox(t)
	add(t, box, "a")
	s, w := newSender(t, box, srv.URL, SenderOptions{RetryWaitMin: time.Hour, RetryWaitMax: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The engine sleeps the whole hour it was given, unless the cancel
	// ends the wait: a broken wait hangs this test.
	s.sleepFor = func(d time.Duration) time.Duration {
		w.take(d)
		cancel()
		return d
	}
	n, err := s.Flush(ctx, hb)
	var he *HTTPError
	if n != 0 || !errors.As(err, &he) || he.StatusCode != 503 {
		t.Fatalf("flush: %d %v", n, err)
	}
	if _, requests := m.snapshot(); requests != 1 || len(w.d) != 1 || w.d[0] != time.Hour {
		t.Fatalf("requests %d, waits %v", requests, w.d)
	}
	if box.Depth() != 1 || box.Rejected() != 0 {
		t.Fatalf("depth %d rejected %d", box.Depth(), box.Rejected())
	}
	if st := s.Status(); st.ConsecutiveFailures != 1 || st.LastHTTPStatus != 503 {
		t.Errorf("status: %+v", st)
	}
}

// A token file gone before a retry (PrepareRetry) stops the flush with a
// credential error; nothing more is sent, nothing set aside.
func TestTokenLostBeforeARetryStopsTheFlush(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("old\n"), 0o600)
	m, srv := newMaster(t, func(int, Body, *http.Request) func(http.ResponseWriter) {
		os.Remove(tok)
		return status(401)
	})
	box, _ := newBox(t)
	add(t, box, "a")
	s, w := newSender(t, box, srv.URL, SenderOptions{TokenFile: tok})
	_, err := s.Flush(context.Background(), hb)
	if !errors.Is(err, ErrAuth) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("want ErrAuth for the missing token file, got %v", err)
	}
	if _, requests := m.snapshot(); requests != 1 || len(w.d) != 1 {
		t.Fatalf("requests %d, waits %v: a request went without its token", requests, w.d)
	}
	if box.Depth() != 1 || box.Rejected() != 0 {
		t.Fatalf("depth %d rejected %d", box.Depth(), box.Rejected())
	}
	// Both the 401 and the unreadable token are failed attempts.
	if st := s.Status(); !st.AuthFailing || st.ConsecutiveFailures != 2 || !strings.Contains(st.LastError, "token file") {
		t.Errorf("status: %+v", st)
	}
}
