package agent_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/engine"
)

type passed struct {
	res *agent.Result
	err error
}

// loop runs the daemon loop of w with a clock the test drives: After
// fires only when the test ticks. It returns the passes as they end.
func (w *world) loop(t *testing.T, tick chan time.Time, tune ...func(*agent.LoopOptions)) <-chan passed {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	passes := make(chan passed, 16)
	done := make(chan error, 1)
	opt := agent.LoopOptions{
		Interval: time.Hour, Resync: time.Hour, Watch: true,
		After:  func(time.Duration) <-chan time.Time { return tick },
		OnPass: func(res *agent.Result, err error, _ time.Duration) { passes <- passed{res, err} },
	}
	for _, f := range tune {
		f(&opt)
	}
	go func() { done <- w.a.Run(ctx, opt) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel = %v, want nil: shutting down is not a failure", err)
		}
	})
	return passes
}

func next(t *testing.T, passes <-chan passed) passed {
	t.Helper()
	select {
	case p := <-passes:
		return p
	case <-time.After(time.Minute):
		t.Fatal("no pass within a minute")
	}
	return passed{}
}

// A container stopped by hand while a pass runs (on a decky the pass does
// not touch) is not dropped as the pass's own event: the loop wakes and
// the next pass repairs it, without waiting for the interval.
func TestDriftDuringAPassIsKept(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh")
	w.mustPass(true)
	w.push("a:ssh", "b:ssh")
	var once atomic.Bool
	w.eng.UpFn = func(ctx context.Context, p *types.Project, services, recreate []string) error {
		if once.CompareAndSwap(false, true) {
			w.eng.SetState("a-ssh", "exited")
			w.eng.Emit(engine.Event{Time: time.Now(), Action: "die", Name: "a-ssh", Decky: "a"})
		}
		return w.eng.UpDefault(ctx, p, services, recreate)
	}
	passes := w.loop(t, make(chan time.Time))
	p := next(t, passes)
	if p.err != nil || !slices.Equal(events(p.res.Events), []string{"b deploy succeeded"}) {
		t.Fatalf("first pass: %+v %v", p.res, p.err)
	}
	p = next(t, passes) // woken by the drift; no tick was sent
	if p.err != nil || p.res.Skipped || !slices.Equal(events(p.res.Events), []string{"a repair succeeded"}) {
		t.Fatalf("the pass after drift during a pass: skipped=%v events=%v err=%v", p.res.Skipped, events(p.res.Events), p.err)
	}
}

// The agent's own container events during a pass (it recreates what it
// applies) are not drift: the interval pass after it is skipped.
func TestOwnEventsAreNotDrift(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh")
	w.eng.UpFn = func(ctx context.Context, p *types.Project, services, recreate []string) error {
		w.eng.Emit(engine.Event{Time: time.Now(), Action: "destroy", Name: "a", Decky: "a"})
		return w.eng.UpDefault(ctx, p, services, recreate)
	}
	tick := make(chan time.Time)
	passes := w.loop(t, tick)
	if p := next(t, passes); p.err != nil || p.res.Skipped {
		t.Fatalf("first pass: %+v %v", p.res, p.err)
	}
	tick <- time.Now()
	if p := next(t, passes); p.err != nil || !p.res.Skipped {
		t.Fatalf("the agent's own events made the next pass run fully: %+v %v", p.res, p.err)
	}
}

// Memory is returned after each pass that did work, and not after one
// skipped over an unchanged commit: it held nothing to return, and a full
// collection every interval would cost CPU for nothing.
func TestMemoryReturnedAfterPassesThatWorked(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh")
	var returned atomic.Int32
	tick := make(chan time.Time)
	passes := w.loop(t, tick, func(o *agent.LoopOptions) { o.AfterPass = func() { returned.Add(1) } })
	// A pass's AfterPass runs after its OnPass and before the next pass:
	// the count is read after skipped passes, when every earlier pass's
	// call has surely been made and the skipped one makes none.
	worked := int32(0)
	for i, push := range [][]string{nil, nil, {"a:ssh", "b:ssh"}, nil, nil} {
		if i > 0 {
			if push != nil {
				w.push(push...)
			}
			tick <- time.Now()
		}
		p := next(t, passes)
		if p.err != nil || p.res.Skipped != (i > 0 && push == nil) {
			t.Fatalf("pass %d: skipped=%v err=%v", i+1, p.res.Skipped, p.err)
		}
		if !p.res.Skipped {
			worked++
			continue
		}
		if got := returned.Load(); got != worked {
			t.Errorf("after pass %d (skipped): memory returned %d times, want %d (once per pass that did work)", i+1, got, worked)
		}
	}
}

// Health and /healthz read what the pass writes, from other goroutines;
// `go test -race` proves they do so safely.
func TestHealthIsSafeDuringPasses(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh")
	tick := make(chan time.Time)
	passes := w.loop(t, tick)
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n, h := 0, w.a.HealthHandler(time.Hour)
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			_ = w.a.Health()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			n++
		}
	}()
	next(t, passes)
	for range 5 {
		w.push("a:ssh")
		tick <- time.Now()
		next(t, passes)
	}
	close(stop)
	<-done
	h := w.a.Health()
	if h.LastFetchOK.IsZero() || h.Commit == "" || h.Deckies["running"] != 1 || !h.Converged {
		t.Fatalf("health after passes: %+v", h)
	}
	rec := httptest.NewRecorder()
	w.a.HealthHandler(time.Hour).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/healthz = %d %s", rec.Code, rec.Body)
	}
}

func sign(secret, body string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// The webhook refuses a bad signature, and 100 good triggers during a pass
// give exactly one more pass.
func TestWebhookTriggersCoalesce(t *testing.T) {
	w := newWorld(t)
	w.push("a:ssh")
	triggers := make(chan struct{}, 1)
	m := agent.NewMetrics("t")
	srv := httptest.NewServer(agent.TriggerHandler([]byte("s3cret"), triggers, m, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	post := func(sig string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"ref":"refs/heads/main"}`))
		if sig != "" {
			req.Header.Set("X-Hub-Signature-256", sig)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, bad := range []string{"", "sha256=00", sign("wrong", `{"ref":"refs/heads/main"}`)} {
		if code := post(bad); code != http.StatusUnauthorized {
			t.Fatalf("signature %q: %d, want 401", bad, code)
		}
	}
	if len(triggers) != 0 {
		t.Fatal("a refused webhook queued a trigger")
	}
	release := make(chan struct{})
	var ups atomic.Int32
	w.eng.UpFn = func(ctx context.Context, p *types.Project, services, recreate []string) error {
		if ups.Add(1) == 1 {
			<-release // the first pass is busy applying while the burst comes
		}
		return w.eng.UpDefault(ctx, p, services, recreate)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var passes atomic.Int32
	second := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		done <- w.a.Run(ctx, agent.LoopOptions{Interval: time.Hour, Resync: time.Hour, Triggers: triggers,
			After: func(time.Duration) <-chan time.Time { return nil },
			OnPass: func(*agent.Result, error, time.Duration) {
				if passes.Add(1) == 2 {
					second <- len(triggers) // anything still pending would be a third pass
					cancel()
				}
			}})
	}()
	for range 100 {
		if code := post(sign("s3cret", `{"ref":"refs/heads/main"}`)); code != http.StatusAccepted {
			t.Fatalf("signed trigger: %d", code)
		}
	}
	close(release)
	select {
	case pending := <-second:
		if pending != 0 {
			t.Fatalf("%d triggers still pending after the second pass", pending)
		}
	case <-time.After(time.Minute):
		t.Fatal("100 triggers during a pass gave no second pass")
	}
	<-done
	if n := passes.Load(); n != 2 {
		t.Fatalf("%d passes, want 2", n)
	}
	// Every request is counted by outcome: 3 refused, 100 taken (one
	// queued the pass, the others found it already due).
	rec := httptest.NewRecorder()
	agent.MetricsHandler(m, http.NotFoundHandler()).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	counts := map[string]float64{}
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		var result string
		var n float64
		if _, err := fmt.Sscanf(strings.Replace(line, `"} `, `" `, 1), `pull_agent_webhook_requests_total{result=%q %g`, &result, &n); err == nil {
			counts[result] = n
		}
	}
	if counts["refused"] != 3 || counts["accepted"]+counts["coalesced"] != 100 || counts["accepted"] < 1 || counts["bad_request"] != 0 {
		t.Fatalf("webhook requests counted %v, want 3 refused and 100 accepted or coalesced", counts)
	}
}
