package master

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

// The agent's real sender against the master: a malformed event gets a
// verdict that sets aside that event only, the others are recorded; a
// token of another host is a 403 that sets nothing aside.
func TestAgentSenderAgainstTheMaster(t *testing.T) {
	st, h := newMaster(t, Options{})
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx := context.Background()
	dir := t.TempDir()
	tokA, _, _ := st.AddToken(ctx, AgentToken, "worker-a", time.Now())
	tokB, _, _ := st.AddToken(ctx, AgentToken, "worker-b", time.Now())
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	box, err := report.OpenOutbox(filepath.Join(dir, "outbox"), "worker-a")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d1", "Not_A_Decky", "d3"} {
		if _, err := box.Add(report.Event{DeckyName: name, Operation: "deploy", Status: "succeeded", CompletedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	sender, err := report.NewSender(box, report.SenderOptions{Master: srv.URL, TokenFile: tokenFile, AllowInsecure: true, RetryMax: -1},
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	hb := report.Heartbeat{Host: "worker-a", HostUUID: "worker-a", AgentVersion: "t"}
	_, _ = sender.Flush(ctx, hb)
	rows, _ := st.Events(ctx, EventFilter{Host: "worker-a"})
	if seqs(rows) != "1,3" || box.Rejected() != 1 || box.Depth() != 0 {
		t.Fatalf("recorded %s; outbox depth %d rejected %d; want 1,3 recorded and seq 2 alone set aside", seqs(rows), box.Depth(), box.Rejected())
	}

	// worker-b's token on worker-a's agent: refused, kept queued.
	if err := os.WriteFile(tokenFile, []byte(tokB), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := box.Add(report.Event{DeckyName: "d4", Operation: "deploy", Status: "succeeded", CompletedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	_, _ = sender.Flush(ctx, hb)
	if rows, _ := st.Events(ctx, EventFilter{Host: "worker-a"}); len(rows) != 2 || box.Depth() != 1 || box.Rejected() != 1 {
		t.Fatalf("after a 403: recorded %s; outbox depth %d rejected %d", seqs(rows), box.Depth(), box.Rejected())
	}
	// The right token again: delivered.
	if err := os.WriteFile(tokenFile, []byte(tokA), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _ = sender.Flush(ctx, hb)
	if rows, _ := st.Events(ctx, EventFilter{Host: "worker-a"}); seqs(rows) != "1,3,4" || box.Depth() != 0 {
		t.Fatalf("after the fix: recorded %s; outbox depth %d", seqs(rows), box.Depth())
	}
}
