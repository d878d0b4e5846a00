package agent_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
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
func (w *world) loop(t *testing.T, tick chan time.Time) <-chan passed {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	passes := make(chan passed, 16)
	done := make(chan error, 1)
	go func() {
		done <- w.a.Run(ctx, agent.LoopOptions{
			Interval: time.Hour, Resync: time.Hour, Watch: true,
			After:  func(time.Duration) <-chan time.Time { return tick },
			OnPass: func(res *agent.Result, err error, _ time.Duration) { passes <- passed{res, err} },
		})
	}()
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
