package main

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/internal/gittest"
)

// newRunAgent builds the agent the way `run` does, against the world.
func (w *world) newRunAgent(t testing.TB, remote string, extra ...string) *worker {
	t.Helper()
	args := []string{"--repo", remote, "--host", w.host, "--state-dir", w.state,
		"--interface", w.lan.Parent, "--gateway", w.lan.Gateway.String(), "--steady-interval", "300ms", "--steady-timeout", "20s", "--helper", w.helper,
		"--log-level", "error"}
	if w.master != "" {
		args = append(args, "--master", w.master, "--master-insecure")
	}
	args = append(args, extra...)
	a, err := startWorker(context.Background(), "run", args, false, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	return a
}

type passed struct {
	res *agent.Result
	err error
}

// A pass over an unmoved commit on a clean worker asks the remote for its
// refs and nothing else: no object transfer, no Docker call. Drift seen on
// the Docker event stream wakes the daemon loop, whose next pass repairs.
func TestNoOpPassAndDriftWatch(t *testing.T) {
	spy := newDockerSpy(t)
	w := newWorld(t)
	w.commit("one decky", [][2]string{{"ssh", "ssh"}}, nil)
	var uploads atomic.Int32
	url := gittest.HTTP(t, w.repo.Work+"/..", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				uploads.Add(1)
			}
			h.ServeHTTP(rw, r)
		})
	})
	a := w.newRunAgent(t, url+"/fleet.git")
	ctx, cancel := context.WithCancel(context.Background())
	passes := make(chan passed)
	tick := make(chan time.Time)
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, agent.LoopOptions{
			Interval: time.Hour, Resync: time.Hour, Watch: true,
			After: func(time.Duration) <-chan time.Time { return tick },
			OnPass: func(res *agent.Result, err error, _ time.Duration) {
				// Never block the loop once the test has stopped reading
				// (a failed assertion): cancel must end Run.
				select {
				case passes <- passed{res, err}:
				case <-ctx.Done():
				}
			},
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	}()
	next := func() passed {
		t.Helper()
		select {
		case p := <-passes:
			return p
		case <-time.After(2 * time.Minute):
			t.Fatal("no pass")
		}
		return passed{}
	}
	if p := next(); p.err != nil || p.res.Skipped || p.res.Failed != 0 {
		t.Fatalf("first pass: %+v %v", p.res, p.err)
	}
	time.Sleep(300 * time.Millisecond) // let the event stream connect
	calls, ups := spy.count(), uploads.Load()
	for i := 0; i < 3; i++ {
		tick <- time.Now()
		if p := next(); p.err != nil || !p.res.Skipped {
			t.Fatalf("unchanged pass %d was not skipped: %+v %v", i, p.res, p.err)
		}
	}
	if got := spy.since(calls); len(got) != 0 {
		t.Fatalf("no-op passes made Docker calls: %v", got)
	}
	if uploads.Load() != ups {
		t.Fatalf("no-op passes fetched objects (%d upload-pack requests)", uploads.Load()-ups)
	}

	// Kill the decky's service by hand: the watcher sees it and wakes the
	// loop (no tick is sent), whose pass repairs it.
	svc := w.owned()[w.name("ssh")+"-ssh"]
	docker := testDocker(t)
	if err := docker.ContainerKill(ctx, svc.ID, "KILL"); err != nil {
		t.Fatal(err)
	}
	if err := docker.ContainerStop(ctx, svc.ID, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	// The kill and the stop are two events: the watcher may wake the loop
	// for each, and the Engine decides when each is seen. What must hold:
	// every pass the watcher starts is a full one, and within a few of them
	// the decky is repaired in place.
	repaired := false
	for i := 0; i < 5 && !repaired; i++ {
		p := next()
		if p.err != nil || p.res.Skipped {
			t.Fatalf("a pass woken by drift was skipped: %+v %v", p.res, p.err)
		}
		for _, r := range p.res.Results {
			if r.Decky != w.name("ssh") || r.Operation != "repair" {
				t.Fatalf("unexpected result after drift: %+v", r)
			}
			repaired = repaired || r.Status == "succeeded"
		}
	}
	if !repaired {
		t.Fatal("the drifted decky was not repaired")
	}
	if st := w.owned()[w.name("ssh")+"-ssh"]; st.State != "running" {
		t.Fatalf("service not running after repair: %s", st.State)
	}
}
