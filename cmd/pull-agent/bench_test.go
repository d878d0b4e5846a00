package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/internal/gittest"
)

// BenchmarkNoOpPassVsLsRemote measures a pass over an unmoved commit (the
// daemon's steady state) against `git ls-remote` of the same remote, in
// the same run and interleaved, so machine noise hits both alike. The
// metric pass/ls-remote is the claim: at most 1.5.
func BenchmarkNoOpPassVsLsRemote(b *testing.B) {
	w := newWorld(b)
	w.master = "" // the pass itself, not the heartbeat delivery
	w.commit("one decky", [][2]string{{"ssh", "ssh"}}, nil)
	remotes := map[string]string{
		"file": w.repo.FileURL(),
		"http": gittest.HTTP(b, w.repo.Work+"/..", nil) + "/fleet.git",
	}
	for _, kind := range []string{"file", "http"} {
		remote := remotes[kind]
		b.Run(kind, func(b *testing.B) {
			a := w.newRunAgent(b, remote)
			ctx := context.Background()
			if _, err := a.Pass(ctx, agent.PassOptions{}); err != nil {
				b.Fatal(err)
			}
			var pass, ls time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				res, err := a.Pass(ctx, agent.PassOptions{})
				pass += time.Since(t0)
				if err != nil || !res.Skipped {
					b.Fatalf("not a no-op pass: %+v %v", res, err)
				}
				t0 = time.Now()
				cmd := exec.Command("git", "ls-remote", remote, "refs/heads/main")
				cmd.Env = gittest.Env()
				out, err := cmd.Output()
				ls += time.Since(t0)
				if err != nil || !strings.Contains(string(out), "refs/heads/main") {
					b.Fatalf("git ls-remote: %v %s", err, out)
				}
			}
			b.ReportMetric(float64(pass.Microseconds())/float64(b.N)/1000, "pass-ms")
			b.ReportMetric(float64(ls.Microseconds())/float64(b.N)/1000, "ls-remote-ms")
			b.ReportMetric(float64(pass)/float64(ls), "pass/ls-remote")
		})
	}
}

// BenchmarkNoOpOnceInProcess runs `once` over SCALE_N converged deckies
// inside the test process (engine client, fetch, parse, one listing, diff,
// state write: everything but process start), for profiling a no-op pass:
// go test -run '^$' -bench NoOpOnceInProcess -cpuprofile cpu.out -trace trace.out
func BenchmarkNoOpOnceInProcess(b *testing.B) {
	w, deckies := scaleFleet(b)
	n := len(deckies)
	w.commit(fmt.Sprintf("%d deckies", n), deckies, nil)
	args := []string{"--steady-samples", "1", "--parallel", "4", "--steady-timeout", "120s"}
	if code, out := w.once(args...); code != 0 {
		b.Fatalf("converging %d deckies: exit %d\n%s", n, code, lastLines(out, 20))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if code, out := w.once(args...); code != 0 {
			b.Fatalf("no-op once: exit %d\n%s", code, lastLines(out, 20))
		}
	}
}
