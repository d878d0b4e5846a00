package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/fleettest"
	"github.com/decnet/pull-agent/internal/gittest"
)

// scaleFleet is the world of every scale benchmark: a LAN sized for
// SCALE_N deckies (fleettest.ScaleN, fleettest.ScaleLAN) and no master
// (they measure the pass, not the heartbeat's delivery). It returns the
// SCALE_N deckies of ssh and http, d000 onwards, uncommitted: a caller
// may commit a warm-up first.
func scaleFleet(b *testing.B) (*world, [][2]string) {
	b.Helper()
	n := fleettest.ScaleN(b)
	w := newWorldLAN(b, fleettest.ScaleLAN(n))
	w.master = ""
	return w, fleettest.Deckies(n, "ssh,http")
}

// BenchmarkNoOpOnceAtScale measures, at SCALE_N deckies of two services
// (scripts/scale.sh: 10, 50, 250), a no-op `pull-agent once` as a whole
// process (start, fetch, one container listing, diff) against its floor
// measured interleaved in the same run: `git ls-remote` of the same remote
// plus `docker ps -a` (one container listing), also as processes. The
// claim is once/floor <= 1.5 (issue 15). It then reports the daemon's RSS
// once it has converged and gone idle, against the RSS of `pull-agent
// version` (the process-start floor): the goal is within 10 MB, flat
// across sizes.
func BenchmarkNoOpOnceAtScale(b *testing.B) {
	w, deckies := scaleFleet(b)
	n := len(deckies)
	w.commit(fmt.Sprintf("%d deckies", n), deckies, nil)
	// Probing stays on: without it a decky can be given an address a LAN
	// machine holds (the test LAN's peer), and every once then reports an
	// identity drift instead of passing as a no-op.
	args := append(w.onceArgs(), "--steady-samples", "1", "--parallel", "4", "--steady-timeout", "120s")
	if code, out := runAgent(b, args...); code != 0 {
		b.Fatalf("converging %d deckies: exit %d\n%s", n, code, lastLines(out, 20))
	}
	if got := len(w.owned()); got != 3*n {
		b.Fatalf("%d containers after converging, want %d", got, 3*n)
	}
	proc := func(cmd *exec.Cmd) (time.Duration, int64) {
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		t0 := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out.String())
		}
		return time.Since(t0), cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	}
	// PULL_AGENT_BASE_BIN, when set, is another build (an older commit)
	// run interleaved on the same converged world: before/after in one run.
	base := os.Getenv("PULL_AGENT_BASE_BIN")
	// The same once without the LAN identity check (--helper ''): fetch,
	// one listing, diff and the rest, what the floor stands for; the check
	// (an ARP round and a dial of every declared port) grows with the
	// deckies, the floor does not.
	noLANArgs := append(slices.Clone(args), "--helper", "")
	var once, floor, baseOnce, noLAN time.Duration
	var onceRSS, baseRSS int64
	// b.Loop, not b.N: with b.N the testing package calls this function
	// once with N=1 before the measured run, converging the whole world
	// (ten minutes at 250 deckies) twice; b.Loop runs it once.
	iters := 0
	for b.Loop() {
		iters++
		d, rss := proc(agentCmd(args...))
		once += d
		onceRSS = max(onceRSS, rss)
		d, _ = proc(agentCmd(noLANArgs...))
		noLAN += d
		if base != "" {
			d, rss := proc(exec.Command(base, args...))
			baseOnce += d
			baseRSS = max(baseRSS, rss)
		}
		ls := exec.Command("git", "ls-remote", w.repo.FileURL(), "refs/heads/main")
		ls.Env = gittest.Env()
		d1, _ := proc(ls)
		d2, _ := proc(exec.Command("docker", "ps", "-a"))
		floor += d1 + d2
	}
	b.StopTimer()
	// One more no-op once with debug logs: its "pass steps" line says
	// where a no-op pass spends its time at this size.
	var dbg strings.Builder
	cmd := agentCmd(append(slices.Clone(args), "--log-level", "debug")...)
	cmd.Stdout, cmd.Stderr = &dbg, &dbg
	if err := cmd.Run(); err != nil {
		b.Fatalf("once --log-level debug: %v\n%s", err, lastLines(dbg.String(), 20))
	}
	for _, line := range strings.Split(dbg.String(), "\n") {
		if strings.Contains(line, "pass steps") {
			b.Log(line)
		}
	}
	// SCALE_HOLD=FILE keeps the converged world for work by hand (perf,
	// strace): the once command line is written to FILE, each word quoted
	// for sh (some are empty), and the world is torn down once FILE is
	// removed.
	if hold := os.Getenv("SCALE_HOLD"); hold != "" {
		words := append([]string{os.Getenv("PULL_AGENT_BIN")}, args...)
		for i, w := range words {
			words[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
		if err := os.WriteFile(hold, []byte(strings.Join(words, " ")+"\n"), 0o600); err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := os.Stat(hold); err != nil {
				break
			}
			time.Sleep(time.Second)
		}
	}
	b.ReportMetric(float64(n), "deckies")
	b.ReportMetric(float64(once.Microseconds())/float64(iters)/1000, "once-ms")
	b.ReportMetric(float64(floor.Microseconds())/float64(iters)/1000, "floor-ms")
	b.ReportMetric(float64(once)/float64(floor), "once/floor")
	b.ReportMetric(float64(noLAN.Microseconds())/float64(iters)/1000, "once-nolan-ms")
	b.ReportMetric(float64(noLAN)/float64(floor), "once-nolan/floor")
	b.ReportMetric(float64(onceRSS)/1024, "once-peak-MB")
	if base != "" {
		b.ReportMetric(float64(baseOnce.Microseconds())/float64(iters)/1000, "base-once-ms")
		b.ReportMetric(float64(baseOnce)/float64(floor), "base-once/floor")
		b.ReportMetric(float64(baseRSS)/1024, "base-once-peak-MB")
	}

	// The daemon, idle after a pass over n converged deckies.
	_, verRSS := proc(agentCmd("version"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	maddr := ln.Addr().String()
	ln.Close()
	runArgs := append([]string{"run"}, args[1:]...)
	runArgs = append(runArgs, "--interval", "1h", "--metrics", maddr)
	daemon := agentCmd(runArgs...)
	var dout syncBuffer
	daemon.Stdout, daemon.Stderr = &dout, &dout
	if err := daemon.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = daemon.Process.Signal(syscall.SIGTERM); _ = daemon.Wait() }()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if resp, err := http.Get("http://" + maddr + "/metrics"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), "pull_agent_passes_total{") {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("the daemon did not finish a pass:\n%s", dout.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // idle: after the pass, before reading RSS (a measurement, not an assertion)
	rss, hwm := procStatusKB(b, daemon.Process.Pid, "VmRSS"), procStatusKB(b, daemon.Process.Pid, "VmHWM")
	b.ReportMetric(float64(rss)/1024, "idle-rss-MB")
	b.ReportMetric(float64(hwm)/1024, "idle-hwm-MB")
	b.ReportMetric(float64(verRSS)/1024, "version-rss-MB")
	b.ReportMetric(float64(rss-verRSS)/1024, "idle-over-floor-MB")
}

func procStatusKB(b *testing.B, pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}

// TestNoOpOnceEngineCalls pins what a no-op `once` asks of the Engine:
// one listing of the containers for the pass (plus at most one more for
// the heartbeat's view after it), one network lookup, one inspect per
// distinct image, and nothing per container: no container inspect, no
// mutation. A per-decky call would make a no-op pass grow with the fleet.
func TestNoOpOnceEngineCalls(t *testing.T) {
	spy := newDockerSpy(t)
	w := newWorld(t)
	w.master = ""
	w.commit("three deckies", [][2]string{{"a", "ssh,http"}, {"b", "ssh,http"}, {"c", "ssh"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("converging: exit %d\n%s", code, out)
	}
	calls := spy.count()
	if code, out := w.once(); code != 0 {
		t.Fatalf("no-op once: exit %d\n%s", code, out)
	}
	got := spy.since(calls)
	t.Logf("Engine calls of a no-op once: %v", got)
	lists, images := 0, map[string]bool{}
	for _, c := range got {
		method, path, _ := strings.Cut(c, " ")
		if strings.HasPrefix(path, "/v1.") { // the negotiated API version
			path = path[strings.Index(path[1:], "/")+1:]
		}
		switch {
		case method != "GET":
			t.Errorf("a no-op once mutated the Engine: %s", c)
		case path == "/containers/json":
			lists++
		case strings.HasPrefix(path, "/containers/"):
			t.Errorf("a no-op once asked about one container: %s", c)
		case strings.HasPrefix(path, "/images/") && strings.HasSuffix(path, "/json"):
			if images[path] {
				t.Errorf("a no-op once inspected the same image twice: %s", c)
			}
			images[path] = true
		case path == "/networks":
		default:
			t.Errorf("unexpected Engine call in a no-op once: %s", c)
		}
	}
	if lists != 1 {
		t.Errorf("%d container listings in a no-op once, want 1 (the helper step reuses the pass's listing)", lists)
	}
}
