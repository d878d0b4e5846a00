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
	box4, _ := OpenOutbox(dir, "worker-a")
	os.WriteFile(filepath.Join(dir, "seq"), []byte("1"), 0o600)
	box5, _ := OpenOutbox(dir, "worker-a")
	if e := add(t, box5, "e"); e.Seq != 5 {
		t.Fatalf("seq must stay above every event on disk, got %d", e.Seq)
	}
	_ = box4
}

func TestOutboxBound(t *testing.T) {
	box, _ := newBox(t)
	box.MaxEvents = 2
	add(t, box, "a")
	add(t, box, "b")
	if _, err := box.Add(Event{DeckyName: "c", Operation: "deploy", Status: "succeeded"}); !errors.Is(err, ErrOutboxFull) {
		t.Fatalf("want ErrOutboxFull, got %v", err)
	}
	if p, _ := box.Pending(0); len(p) != 2 || p[0].DeckyName != "a" {
		t.Fatalf("a full outbox must keep its oldest events: %+v", p)
	}
}

// recorder is a master that answers from a script and records arrivals.
type recorder struct {
	mu      stdsync.Mutex
	times   []time.Time
	bodies  []Body
	answers []func(http.ResponseWriter)
	headers []http.Header
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.times = append(r.times, time.Now())
	r.headers = append(r.headers, req.Header.Clone())
	var b Body
	_ = json.NewDecoder(req.Body).Decode(&b)
	r.bodies = append(r.bodies, b)
	if len(r.answers) > 0 {
		a := r.answers[0]
		r.answers = r.answers[1:]
		a(w)
		return
	}
	w.WriteHeader(http.StatusNoContent)
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

func TestRetryPolicyTiming(t *testing.T) {
	rec := &recorder{answers: []func(http.ResponseWriter){status(500), status(429, "Retry-After", "2"), status(204)}}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	box, _ := newBox(t)
	add(t, box, "a")
	s, err := NewSender(box, SenderOptions{Master: srv.URL, AllowInsecure: true, RetryWaitMin: 200 * time.Millisecond, RetryWaitMax: time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Flush(context.Background(), Heartbeat{Host: "worker-a"})
	if err != nil || n != 1 {
		t.Fatalf("flush: %d %v", n, err)
	}
	if len(rec.times) != 3 {
		t.Fatalf("want 3 attempts, got %d", len(rec.times))
	}
	gap1, gap2 := rec.times[1].Sub(rec.times[0]), rec.times[2].Sub(rec.times[1])
	// After a 500: exponential backoff with jitter, between min and the
	// first ceiling (2 x min).
	if gap1 < 200*time.Millisecond || gap1 > 600*time.Millisecond {
		t.Errorf("backoff after 500 = %s, want 200ms..400ms (+slack)", gap1)
	}
	// After a 429 with Retry-After: 2, the master's wish, not the backoff.
	if gap2 < 2*time.Second || gap2 > 2500*time.Millisecond {
		t.Errorf("wait after 429 Retry-After: 2 = %s, want 2s", gap2)
	}
	if box.Depth() != 0 {
		t.Errorf("an acknowledged event stayed queued")
	}
	// The same event was resent each time, by ID.
	for _, b := range rec.bodies {
		if len(b.Lifecycle) != 1 || b.Lifecycle[0].EventID != rec.bodies[0].Lifecycle[0].EventID {
			t.Fatalf("bodies differ between retries: %+v", rec.bodies)
		}
	}
}

func TestUnreachableMasterKeepsEvents(t *testing.T) {
	box, _ := newBox(t)
	add(t, box, "a")
	s, _ := NewSender(box, SenderOptions{Master: "http://127.0.0.1:1", AllowInsecure: true, RetryMax: 1, RetryWaitMin: 10 * time.Millisecond, RetryWaitMax: 20 * time.Millisecond}, slog.New(slog.DiscardHandler))
	if _, err := s.Flush(context.Background(), Heartbeat{Host: "worker-a"}); err == nil {
		t.Fatal("flush to a dead master succeeded")
	}
	if box.Depth() != 1 {
		t.Fatal("an undelivered event left the outbox")
	}
}

func TestRejectedBatchesAreSetAsideNotRetried(t *testing.T) {
	rec := &recorder{answers: []func(http.ResponseWriter){status(400)}}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	box, _ := newBox(t)
	add(t, box, "bad")
	s, _ := NewSender(box, SenderOptions{Master: srv.URL, AllowInsecure: true, RetryWaitMin: time.Millisecond}, slog.New(slog.DiscardHandler))
	if _, err := s.Flush(context.Background(), Heartbeat{Host: "worker-a"}); err != nil {
		t.Fatal(err)
	}
	if box.Depth() != 0 || box.Rejected() != 1 {
		t.Fatalf("depth %d rejected %d", box.Depth(), box.Rejected())
	}
	if len(rec.times) != 2 { // the 400, then the heartbeat on its own
		t.Fatalf("requests: %d", len(rec.times))
	}
	if last := rec.bodies[len(rec.bodies)-1]; last.OutboxRejects != 1 {
		t.Errorf("the rejection is not surfaced in the heartbeat: %+v", last.Heartbeat)
	}
	add(t, box, "good")
	if n, err := s.Flush(context.Background(), Heartbeat{Host: "worker-a"}); err != nil || n != 1 {
		t.Fatalf("the queue is blocked after a rejection: %d %v", n, err)
	}
}

func TestPlainHTTPNeedsExplicitOptIn(t *testing.T) {
	box, _ := newBox(t)
	if _, err := NewSender(box, SenderOptions{Master: "http://master:8770"}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a plain-http master was accepted without opt-in")
	}
}

func TestTLSPinAndToken(t *testing.T) {
	rec := &recorder{}
	srv := httptest.NewTLSServer(rec)
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

	s, _ := NewSender(box, SenderOptions{Master: srv.URL, CAFile: ca, PinSHA256: strings.Repeat("00", 32), RetryMax: -1}, slog.New(slog.DiscardHandler))
	if _, err := s.Flush(ctx, Heartbeat{Host: "worker-a"}); err == nil || !strings.Contains(err.Error(), "does not match the pinned") {
		t.Fatalf("a wrong pin must fail the handshake, got %v", err)
	}
	if len(rec.times) != 0 {
		t.Fatal("a request went to a master whose certificate does not match the pin")
	}
	s, _ = NewSender(box, SenderOptions{Master: srv.URL, CAFile: ca, PinSHA256: good, TokenFile: tok}, slog.New(slog.DiscardHandler))
	if n, err := s.Flush(ctx, Heartbeat{Host: "worker-a"}); err != nil || n != 1 {
		t.Fatalf("pinned flush: %d %v", n, err)
	}
	if got := rec.headers[0].Get("Authorization"); got != "Bearer s3cret-token" {
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
