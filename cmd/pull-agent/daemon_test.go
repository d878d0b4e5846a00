package main

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/decnet/pull-agent/internal/gittest"
)

// newRunAgent builds the agent the way `run` does, against the world.
func (w *world) newRunAgent(t testing.TB, remote string, extra ...string) *agent {
	t.Helper()
	args := []string{"--repo", remote, "--host", w.host, "--state-dir", w.state,
		"--interface", w.lan.Parent, "--gateway", w.lan.Gateway.String(), "--steady-interval", "300ms", "--steady-timeout", "20s", "--helper", w.helper}
	if w.master != "" {
		args = append(args, "--master", w.master, "--master-insecure")
	}
	args = append(args, extra...)
	cfg, err := parseAgentFlags("run", args, true, nil, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := newAgent(context.Background(), cfg, slog.New(slog.DiscardHandler), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	return a
}

// A pass over an unmoved commit on a clean worker asks the remote for its
// refs and nothing else: no object transfer, no Docker call. Drift seen on
// the Docker event stream makes the next pass reconcile and repair.
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
	ctx := context.Background()
	res, err := a.onePass(ctx, false)
	if err != nil || res.skipped || res.failed != 0 {
		t.Fatalf("first pass: %+v %v", res, err)
	}

	calls, ups := spy.count(), uploads.Load()
	for i := 0; i < 3; i++ {
		res, err = a.onePass(ctx, false)
		if err != nil || !res.skipped {
			t.Fatalf("unchanged pass %d was not skipped: %+v %v", i, res, err)
		}
	}
	if got := spy.since(calls); len(got) != 0 {
		t.Fatalf("no-op passes made Docker calls: %v", got)
	}
	if uploads.Load() != ups {
		t.Fatalf("no-op passes fetched objects (%d upload-pack requests)", uploads.Load()-ups)
	}

	// Kill the decky's service by hand: the watcher sees it and triggers.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	trigger := make(chan struct{}, 1)
	var passing passWindow
	go a.watch(wctx, &passing, trigger)
	time.Sleep(300 * time.Millisecond) // let the event stream connect
	svc := w.owned()[w.name("ssh")+"-ssh"]
	docker := testDocker(t)
	if err := docker.ContainerKill(ctx, svc.ID, "KILL"); err != nil {
		t.Fatal(err)
	}
	if err := docker.ContainerStop(ctx, svc.ID, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-trigger:
	case <-time.After(15 * time.Second):
		t.Fatal("the watcher did not notice a container killed by hand")
	}
	res, err = a.onePass(ctx, false)
	if err != nil || res.skipped {
		t.Fatalf("the pass after drift was skipped: %+v %v", res, err)
	}
	if len(res.results) != 1 || res.results[0].Operation != "repair" || res.results[0].Status != "succeeded" {
		t.Fatalf("want one succeeded repair, got %+v", res.results)
	}
	if st := w.owned()[w.name("ssh")+"-ssh"]; st.State != "running" {
		t.Fatalf("service not running after repair: %s", st.State)
	}
}
