package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	stdsync "sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu stdsync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// The daemon itself: it converges, picks up a new commit on its own at
// the next interval, serves metrics and health on a management address,
// and stops cleanly with exit 0.
func TestEndToEndRunDaemon(t *testing.T) {
	w := newWorld(t)
	w.commit("one decky", [][2]string{{"a", "ssh"}}, nil)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	metricsAddr := ln.Addr().String()
	ln.Close()
	args := append([]string{"run"}, w.onceArgs()[1:]...)
	args = append(args, "--interval", "1s", "--metrics", metricsAddr)
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int)
	go func() { done <- run(ctx, args, &out, &out) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("daemon: %s did not happen:\n%s", what, out.String())
			}
		}
	}
	waitFor("the first decky", func() bool { _, ok := w.owned()[w.name("a")+"-ssh"]; return ok })
	w.commit("second decky", [][2]string{{"a", "ssh"}, {"b", "http"}}, nil)
	waitFor("the new commit's decky", func() bool { c, ok := w.owned()[w.name("b")+"-http"]; return ok && c.State == "running" })

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor("metrics of a skipped pass", func() bool {
		_, m := get("/metrics")
		return strings.Contains(m, `pull_agent_passes_total{result="skipped"}`)
	})
	_, m := get("/metrics")
	for _, want := range []string{`pull_agent_passes_total{result="applied"}`, `pull_agent_deckies{state="running"} 2`,
		`pull_agent_lifecycle_events_total{operation="deploy",status="succeeded"}`, "pull_agent_outbox_events 0"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if code, body := get("/healthz"); code != 200 || !strings.HasPrefix(body, "ok") {
		t.Errorf("healthz: %d %s", code, body)
	}
	cancel()
	stopped = true
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("run exited %d on SIGTERM-like cancel:\n%s", code, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not stop")
	}
}
