package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	stdsync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/decnet/pull-agent/master"
	"github.com/decnet/pull-agent/report"
)

// restartableMaster is the reference master on a fixed loopback port
// that a test can stop and start again on the same database.
type restartableMaster struct {
	t    *testing.T
	addr string
	db   string
	srv  *http.Server
	st   *master.Store
	wrap func(http.Handler) http.Handler
}

func newRestartableMaster(t *testing.T, wrap func(http.Handler) http.Handler) *restartableMaster {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &restartableMaster{t: t, addr: ln.Addr().String(), db: filepath.Join(t.TempDir(), "master.db"), wrap: wrap}
	m.start(ln)
	t.Cleanup(m.stop)
	return m
}

func (m *restartableMaster) URL() string { return "http://" + m.addr }

func (m *restartableMaster) start(ln net.Listener) {
	var err error
	if ln == nil {
		for i := 0; i < 50; i++ { // the old socket may linger briefly
			if ln, err = net.Listen("tcp", m.addr); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			m.t.Fatal(err)
		}
	}
	if m.st, err = master.OpenStore(context.Background(), m.db); err != nil {
		m.t.Fatal(err)
	}
	var h http.Handler = master.NewServer(m.st, master.Options{InsecureNoAuth: true}, slog.New(slog.DiscardHandler))
	if m.wrap != nil {
		h = m.wrap(h)
	}
	m.srv = &http.Server{Handler: h}
	go func() { _ = m.srv.Serve(ln) }()
}

func (m *restartableMaster) stop() {
	if m.srv == nil {
		return
	}
	_ = m.srv.Close()
	_ = m.st.Close()
	m.srv = nil
}

func (m *restartableMaster) events(host string) []master.EventRow {
	rows, err := m.st.Events(context.Background(), master.EventFilter{Host: host})
	if err != nil {
		m.t.Fatal(err)
	}
	return rows
}

func TestEndToEndMasterOutage(t *testing.T) {
	w := newWorld(t)
	m := newRestartableMaster(t, nil)
	w.master = m.URL()
	var deckies [][2]string
	for i := 0; i < 10; i++ {
		deckies = append(deckies, [2]string{fmt.Sprintf("d%02d", i), "ssh"})
	}
	commit := w.commit("ten deckies", deckies, nil)

	m.stop() // the master goes away just before the pass
	if code, out := w.once("--report-timeout", "3s"); code != 0 {
		t.Fatalf("the pass must converge without the master: exit %d\n%s", code, out)
	}
	box, err := report.OpenOutbox(filepath.Join(w.state, "outbox"), w.host)
	if err != nil {
		t.Fatal(err)
	}
	if d := box.Depth(); d != 10 {
		t.Fatalf("outbox holds %d events, want 10", d)
	}
	// Still down at the next pass: nothing is lost or duplicated.
	if code, out := w.once("--report-timeout", "2s"); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}

	m.start(nil) // back, on the same database
	if code, out := w.once(); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	rows := m.events(w.host)
	if len(rows) != 10 {
		t.Fatalf("master holds %d events, want exactly 10", len(rows))
	}
	ids := map[string]bool{}
	for i, r := range rows {
		if r.Seq != int64(i+1) || r.Commit != commit || r.Operation != "deploy" || r.Status != "succeeded" || ids[r.EventID] {
			t.Fatalf("event %d out of order, duplicated or wrong: %+v", i, r)
		}
		ids[r.EventID] = true
	}
	if box.Depth() != 0 {
		t.Fatalf("delivered events left in the outbox: %d", box.Depth())
	}
	hosts, _ := m.st.Hosts(context.Background(), time.Now(), time.Minute)
	if len(hosts) != 1 || hosts[0].MissingSeqs != 0 || hosts[0].OutboxDepth != 0 {
		t.Fatalf("host record: %+v", hosts)
	}
}

// The agent is SIGKILLed while the master holds its report (recorded, not
// yet acknowledged). After a restart the agent resends; the master keeps
// one copy of each event.
func TestEndToEndKilledAgentRedeliversOnce(t *testing.T) {
	w := newWorld(t)
	var (
		mu        stdsync.Mutex
		arrivals  = map[string]int{}
		held      = make(chan struct{})
		release   = make(chan struct{})
		holdFirst = true
	)
	m := newRestartableMaster(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			data, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(data))
			mu.Lock()
			hasEvents := strings.Contains(string(data), `"event_id"`)
			for _, part := range strings.Split(string(data), `"event_id":"`)[1:] {
				arrivals[part[:36]]++
			}
			hold := hasEvents && holdFirst
			if hold {
				holdFirst = false
			}
			mu.Unlock()
			h.ServeHTTP(rw, r) // recorded ...
			if hold {
				close(held)
				<-release // ... but the answer never reaches the killed agent
			}
		})
	})
	defer close(release)
	w.master = m.URL()
	w.commit("three deckies", [][2]string{{"a", "ssh"}, {"b", "ssh"}, {"c", "ssh"}}, nil)

	cmd := exec.Command(os.Args[0], w.onceArgs()...)
	cmd.Env = append(os.Environ(), "PULL_AGENT_TEST_AS_MAIN=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the agent never reported:\n%s", out.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if n := len(m.events(w.host)); n != 3 {
		t.Fatalf("the master recorded %d events before the kill, want 3", n)
	}

	// Restarted: the events were never acknowledged, so they are resent.
	if code, out := w.once(); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	rows := m.events(w.host)
	if len(rows) != 3 {
		t.Fatalf("master holds %d events after the resend, want exactly 3", len(rows))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range rows {
		if arrivals[r.EventID] != 2 {
			t.Errorf("event %s arrived %d times, want 2 (sent, killed, resent)", r.EventID, arrivals[r.EventID])
		}
	}
}
