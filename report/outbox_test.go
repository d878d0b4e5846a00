package report

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"
)

// Leftovers of a crash (.tmp-* files of interrupted atomic writes) are
// removed when the owner opens the outbox, and only then: a reader such as
// `status` must not delete a running daemon's write in progress.
func TestLeftoversRemovedByTheOwnerOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	box, err := OpenOutbox(dir, "worker-a")
	if err != nil {
		t.Fatal(err)
	}
	add(t, box, "a")
	leftovers := []string{filepath.Join(dir, ".tmp-123456"), filepath.Join(dir, "rejected", ".tmp-98765")}
	for _, f := range leftovers {
		if err := os.WriteFile(f, []byte(`{"half":`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := OpenOutbox(dir, "worker-a"); err != nil {
		t.Fatal(err)
	}
	for _, f := range leftovers {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("a reader's open removed %s", f)
		}
	}
	var logs bytes.Buffer
	owner, err := OpenOutboxWith(dir, "worker-a", OutboxOptions{Owner: true, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range leftovers {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("leftover %s is still there: %v", f, err)
		}
		if !strings.Contains(logs.String(), f) {
			t.Errorf("removal of %s not logged:\n%s", f, logs.String())
		}
	}
	if owner.Depth() != 1 {
		t.Errorf("the queued event went with the leftovers: depth %d", owner.Depth())
	}
}

// A corrupt event file is set aside with a reason, and logged with its
// name; the events around it still go.
func TestCorruptEventIsLoggedAndSetAside(t *testing.T) {
	var logs bytes.Buffer
	dir := filepath.Join(t.TempDir(), "outbox")
	box, err := OpenOutboxWith(dir, "worker-a", OutboxOptions{Owner: true, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := add(t, box, "a"), add(t, box, "b"), add(t, box, "c")
	bad := filepath.Join(dir, eventName(b.Seq))
	os.WriteFile(bad, []byte("{truncated"), 0o600)
	// A file whose content belongs to another seq would never be acked.
	data, _ := os.ReadFile(filepath.Join(dir, eventName(a.Seq)))
	os.WriteFile(filepath.Join(dir, eventName(c.Seq)), data, 0o600)

	p, err := box.Pending(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 1 || p[0].EventID != a.EventID {
		t.Fatalf("pending: %+v", p)
	}
	if box.Rejected() != 2 || box.Depth() != 1 {
		t.Fatalf("rejected %d depth %d", box.Rejected(), box.Depth())
	}
	if !strings.Contains(logs.String(), bad) || !strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the corrupt file is not logged by name:\n%s", logs.String())
	}
	reason, err := os.ReadFile(filepath.Join(dir, "rejected", strings.TrimSuffix(eventName(b.Seq), ".json")+".reason"))
	if err != nil || !strings.Contains(string(reason), "corrupt") {
		t.Errorf("reason: %q %v", reason, err)
	}
}

// Depth, Rejected, Delivery and Status are read by /healthz and metrics
// while a pass adds and sends events (run with -race).
func TestConcurrentReadersDuringAPass(t *testing.T) {
	m, srv := newMaster(t, nil)
	box, _ := newBox(t)
	s, _ := newSender(t, box, srv.URL, SenderOptions{BatchSize: 3})
	ctx, cancel := context.WithCancel(context.Background())
	var wg stdsync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_ = box.Depth() + box.Rejected()
				_ = s.Status()
				box.Delivery()
				box.Heartbeat()
			}
		}()
	}
	var want []Event
	var mu stdsync.Mutex
	var adders stdsync.WaitGroup
	for g := 0; g < 2; g++ {
		adders.Add(1)
		go func() {
			defer adders.Done()
			for i := 0; i < 10; i++ {
				e := add(t, box, "d")
				mu.Lock()
				want = append(want, e)
				mu.Unlock()
				if _, err := s.Flush(ctx, hb); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	adders.Wait()
	cancel()
	wg.Wait()
	if _, err := s.Flush(context.Background(), hb); err != nil {
		t.Fatal(err)
	}
	// Every event once, and the master saw them in seq order.
	stored, _ := m.snapshot()
	if len(stored) != len(want) {
		t.Fatalf("stored %d of %d", len(stored), len(want))
	}
	for i := 1; i < len(stored); i++ {
		if stored[i].Seq <= stored[i-1].Seq {
			t.Fatalf("out of order at %d: %d after %d", i, stored[i].Seq, stored[i-1].Seq)
		}
	}
	if st := s.Status(); st.Delivered != uint64(len(want)) {
		t.Errorf("delivered counter %d, want %d", st.Delivered, len(want))
	}
}
