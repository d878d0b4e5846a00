package main

// Many agents, one remote (issue 15): N in-process agents poll one fleet
// remote, `git http-backend` served over HTTP on loopback by a process of
// its own (this test binary started again as TestFleetRemoteServer), so
// the remote's CPU can be read from /proc apart from the agents'.
//
// Each agent is the real pass and daemon loop (agent.New, agent.Run with
// the default ±10% interval jitter) with the real fleet sync over HTTP
// (fleetsync, go-git) and the real webhook handler (agent.TriggerHandler),
// but the fake Engine and LAN of internal/fake: the Engine is not what is
// measured here. The agents share nothing but the remote: each has its
// own state directory, clone, outbox and Engine.
//
// TestFleetManyAgentsOneRemote runs it small in CI and checks behaviour
// only; BenchmarkFleetManyAgentsOneRemote (scripts/scale.sh fleet) runs
// it at FLEET_AGENTS (default 200) with FLEET_INTERVAL (default 20s) and
// reports the figures. Nothing here asserts on time.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/internal/fake"
	"github.com/decnet/pull-agent/internal/gittest"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// fleetRemoteEnv names the directory TestFleetRemoteServer serves.
const fleetRemoteEnv = "PULL_AGENT_FLEET_REMOTE_ROOT"

// TestFleetRemoteServer is the fleet benchmark's remote as a process of
// its own, not a test: started by startFleetRemote with fleetRemoteEnv
// set, it serves every repository under that directory with git
// http-backend on a loopback port it prints, counts the requests (GET
// .../info/refs: ref advertisements; POST .../git-upload-pack: packs and
// protocol v2 commands) and answers the counts at /-/stats, until its
// standard input closes.
func TestFleetRemoteServer(t *testing.T) {
	root := os.Getenv(fleetRemoteEnv)
	if root == "" {
		t.Skip("the fleet benchmark's remote, started by the benchmark itself")
	}
	var refs, packs atomic.Int64
	git := gittest.HTTPHandler(root)
	mux := http.NewServeMux()
	mux.HandleFunc("/-/stats", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%d %d\n", refs.Load(), packs.Load())
	})
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/info/refs"):
			refs.Add(1)
		case strings.HasSuffix(r.URL.Path, "/git-upload-pack"):
			packs.Add(1)
		}
		git.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Printf("fleet remote listening on %s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the benchmark closes it (or dies)
	_ = srv.Close()
}

// fleetRemote is the remote process seen from the benchmark.
type fleetRemote struct {
	cmd   *exec.Cmd
	stdin io.Closer
	base  string // http://127.0.0.1:port
}

func startFleetRemote(t testing.TB, root string) *fleetRemote {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFleetRemoteServer$", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), fleetRemoteEnv+"="+root, "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &fleetRemote{cmd: cmd, stdin: stdin}
	t.Cleanup(func() { r.stdin.Close(); _ = r.cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "fleet remote listening on ")
	if err != nil || !ok {
		t.Fatalf("the fleet remote did not start: %q %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	r.base = "http://" + addr
	return r
}

// cpu is the remote process's CPU so far, with its reaped children's
// (every git http-backend and git upload-pack it ran).
func (r *fleetRemote) cpu(t testing.TB) time.Duration {
	t.Helper()
	c, err := procCPU(r.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// requests are the remote's request counts so far.
type requests struct{ refs, packs int64 }

func (r *fleetRemote) stats(t testing.TB) requests {
	t.Helper()
	resp, err := http.Get(r.base + "/-/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var q requests
	if _, err := fmt.Fscan(resp.Body, &q.refs, &q.packs); err != nil {
		t.Fatal(err)
	}
	return q
}

const fleetBenchYAML = `version: 1
defaults:
  distro: base
distros:
  base: {image: "decoys/base:1"}
services:
  ssh: {image: "decoys/ssh:1", ports: [22]}
  http: {image: "decoys/http:1", ports: [80]}
`

// fleetAgent is one worker's agent with its own state, clone and
// webhook endpoint.
type fleetAgent struct {
	host     string
	dir      string // state directory; the kept clone is dir/git/clone
	a        *agent.Agent
	triggers chan struct{}
	hook     *httptest.Server

	mu      stdsync.Mutex
	passes  int                  // every pass
	ok      int                  // passes without error (not those cut short by stop)
	applied map[string]time.Time // commit -> end of the first pass that applied it
	lastErr error

	stop func() // ends Run and waits for it
}

func (f *fleetAgent) onPass(res *agent.Result, err error, _ time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.passes++
	f.lastErr = err
	if err == nil {
		f.ok++
	}
	if err == nil && res != nil && res.Failed == 0 {
		if _, ok := f.applied[res.Commit]; !ok {
			f.applied[res.Commit] = time.Now()
		}
	}
}

func (f *fleetAgent) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.passes
}

func (f *fleetAgent) okCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ok
}

func (f *fleetAgent) appliedAt(commit string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.applied[commit]
	return at, ok
}

// fleet is N agents and their remote.
type fleet struct {
	t      testing.TB
	repo   *gittest.Repo
	remote *fleetRemote
	url    string
	secret []byte
	agents []*fleetAgent
	hosts  int // host files in the repository, one per agent
	rev    int
}

func newFleet(t testing.TB, n int) *fleet {
	t.Helper()
	root := t.TempDir()
	f := &fleet{t: t, repo: gittest.New(t, root, "fleet"), secret: []byte("fleet-bench-webhook-secret"), hosts: n}
	f.push()
	f.remote = startFleetRemote(t, root)
	f.url = f.remote.base + "/fleet.git"
	log := slog.New(slog.DiscardHandler)
	for i := 0; i < n; i++ {
		host := fmt.Sprintf("w%03d", i)
		dir := filepath.Join(t.TempDir(), host)
		syncer, err := fleetsync.New(fleetsync.Options{Remotes: []string{f.url}, Dir: filepath.Join(dir, "git"), Timeout: 2 * time.Minute}, log)
		if err != nil {
			t.Fatal(err)
		}
		box, err := report.OpenOutbox(filepath.Join(dir, "outbox"), host)
		if err != nil {
			t.Fatal(err)
		}
		cfg := agent.Config{Host: host, StateDir: dir, Steady: apply.SteadyOptions{Samples: 1, Interval: time.Millisecond, Timeout: 5 * time.Second}}
		a, err := agent.New(cfg, agent.Deps{Engine: fake.NewEngine(), LAN: fake.NewLAN(), Source: agent.SyncSource{Syncer: syncer}, Outbox: box, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		fa := &fleetAgent{host: host, dir: dir, a: a, triggers: make(chan struct{}, 1), applied: map[string]time.Time{}, stop: func() {}}
		fa.hook = httptest.NewServer(agent.TriggerHandler(f.secret, fa.triggers, nil, log))
		t.Cleanup(fa.hook.Close)
		f.agents = append(f.agents, fa)
	}
	t.Cleanup(f.stop)
	return f
}

// push commits a new revision: every host gets one more decky, so every
// agent has something to apply. It returns the commit.
func (f *fleet) push() string {
	f.rev++
	files := map[string]string{"fleet.yaml": fleetBenchYAML}
	for i := 0; i < f.hosts; i++ {
		host := fmt.Sprintf("w%03d", i)
		var b strings.Builder
		b.WriteString("deckies:\n")
		for d := 0; d < f.rev; d++ {
			fmt.Fprintf(&b, "  - name: %s-d%d\n    services: [ssh]\n", host, d)
		}
		files["hosts/"+host+".yaml"] = b.String()
	}
	f.repo.Write(files)
	return f.repo.Commit(fmt.Sprintf("revision %d", f.rev))
}

// start runs every agent's daemon loop, the i-th after i/N of spread
// (agents of a fleet start at unrelated times; 0: all at once).
func (f *fleet) start(interval, spread time.Duration) {
	for i, fa := range f.agents {
		if spread > 0 && i > 0 {
			time.Sleep(spread / time.Duration(len(f.agents)))
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			// No memory return after a pass: it is a full collection of
			// the process's heap, here every agent's at once, paid by each
			// of them (200 per push); a real agent is a process of its own.
			_ = fa.a.Run(ctx, agent.LoopOptions{Interval: interval, Triggers: fa.triggers, OnPass: fa.onPass, AfterPass: func() {}})
		}()
		fa.stop = func() { cancel(); <-done }
	}
}

func (f *fleet) stop() {
	var wg stdsync.WaitGroup
	for _, fa := range f.agents {
		wg.Go(fa.stop)
	}
	wg.Wait()
	for _, fa := range f.agents {
		fa.stop = func() {}
	}
}

// passes is every agent's pass count now.
func (f *fleet) passes() []int {
	out := make([]int, len(f.agents))
	for i, fa := range f.agents {
		out[i] = fa.count()
	}
	return out
}

// oks is every agent's count of passes without error now.
func (f *fleet) oks() []int {
	out := make([]int, len(f.agents))
	for i, fa := range f.agents {
		out[i] = fa.okCount()
	}
	return out
}

// waitAll waits until ok holds for every agent, with a generous deadline
// that only stops a hung run.
func (f *fleet) waitAll(what string, limit time.Duration, ok func(i int, fa *fleetAgent) bool) {
	f.t.Helper()
	for deadline := time.Now().Add(limit); ; time.Sleep(20 * time.Millisecond) {
		var missing []string
		for i, fa := range f.agents {
			if !ok(i, fa) {
				missing = append(missing, fa.host)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			fa := f.agents[slices.IndexFunc(f.agents, func(a *fleetAgent) bool { return a.host == missing[0] })]
			fa.mu.Lock()
			last := fa.lastErr
			fa.mu.Unlock()
			f.t.Fatalf("%s: %d of %d agents not there after %s (%v...; %s's last pass error: %v)", what, len(missing), len(f.agents), limit, missing[:min(5, len(missing))], missing[0], last)
		}
	}
}

// trigger POSTs a signed push event to every agent's webhook at once and
// checks each was accepted.
func (f *fleet) trigger(commit string) {
	f.t.Helper()
	body := []byte(fmt.Sprintf(`{"ref":"refs/heads/main","after":%q}`, commit))
	mac := hmac.New(sha256.New, f.secret)
	mac.Write(body)
	sig := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	errs := make(chan error, len(f.agents))
	var wg stdsync.WaitGroup
	for _, fa := range f.agents {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, fa.hook.URL, bytes.NewReader(body))
			req.Header.Set("X-Hub-Signature-256", sig)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				errs <- fmt.Errorf("%s: webhook answered %s", fa.host, resp.Status)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		f.t.Fatal(err)
	}
}

// lsRemote runs `git ls-remote` against the remote k times and returns
// the remote's CPU and requests for them.
func (f *fleet) lsRemote(k int) (time.Duration, requests) {
	f.t.Helper()
	c0, q0 := f.remote.cpu(f.t), f.remote.stats(f.t)
	for i := 0; i < k; i++ {
		cmd := exec.Command("git", "ls-remote", f.url, "refs/heads/main")
		cmd.Env = gittest.Env()
		if out, err := cmd.CombinedOutput(); err != nil {
			f.t.Fatalf("git ls-remote: %v\n%s", err, out)
		}
	}
	q1 := f.remote.stats(f.t)
	return f.remote.cpu(f.t) - c0, requests{q1.refs - q0.refs, q1.packs - q0.packs}
}

// gitFetchFloor is what the remote makes of a push without any agent:
// one plain git client per agent, each with a shallow clone of the head
// (made first, not counted), fetches the next pushed commit, all at once
// as the agents do on a webhook. It returns the time from the push until
// each client had the commit, and the remote's CPU meanwhile.
func (f *fleet) gitFetchFloor() ([]time.Duration, time.Duration) {
	f.t.Helper()
	root := f.t.TempDir()
	dirs := make([]string, len(f.agents))
	// each runs fn(i, dir) for every client, at most limit at once, and
	// fails the test with the first error once all have ended.
	each := func(limit int, fn func(i int, dir string) error) {
		errs := make(chan error, len(dirs))
		sem := make(chan struct{}, limit)
		var wg stdsync.WaitGroup
		for i, d := range dirs {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				if err := fn(i, d); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			f.t.Fatal(err)
		}
	}
	git := func(args ...string) error {
		cmd := exec.Command("git", args...)
		cmd.Env = gittest.Env()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	for i := range dirs {
		dirs[i] = filepath.Join(root, fmt.Sprintf("c%03d", i))
	}
	each(8, func(_ int, d string) error { return git("clone", "-q", "--depth", "1", "--no-checkout", f.url, d) })
	c := f.push()
	pushed, rc := time.Now(), f.remote.cpu(f.t)
	lat := make([]time.Duration, len(dirs))
	each(len(dirs), func(i int, d string) error {
		err := git("-C", d, "fetch", "-q", "--depth", "1", "origin", "main")
		lat[i] = time.Since(pushed)
		return err
	})
	cpu := f.remote.cpu(f.t) - rc
	for _, d := range dirs {
		if got := gittest.Git(f.t, d, "rev-parse", "FETCH_HEAD"); got != c {
			f.t.Fatalf("%s fetched %s, want the pushed %s", d, got, c)
		}
	}
	return lat, cpu
}

// keptPacks is the number of pack files in the agent's kept clone: one
// after a fresh clone, one more per commit fetched into it.
func (fa *fleetAgent) keptPacks(t testing.TB) int {
	t.Helper()
	p, err := filepath.Glob(filepath.Join(fa.dir, "git", "clone", "objects", "pack", "*.pack"))
	if err != nil {
		t.Fatal(err)
	}
	return len(p)
}

// fleetFigures is what one run measured.
type fleetFigures struct {
	agents         int
	interval       time.Duration
	noopPasses     int           // no-op passes in the measured window (all agents)
	noopOK         int           // of which ended without error
	noopReq        requests      // what the remote served in that window
	noopCPU        time.Duration // the remote's CPU in that window
	lsRemotes      int
	lsReq          requests
	lsCPU          time.Duration
	pollRemoteCPU  time.Duration   // the remote's CPU from the push until every agent applied, polling
	trigRemoteCPU  time.Duration   // the same, webhook
	trigReq        requests        // what the remote served meanwhile, webhook
	pollLatency    []time.Duration // push -> applied, per agent, polling
	triggerLatency []time.Duration // push -> applied, per agent, webhook
	// appliedByTrigger counts agents that applied the webhook's commit in
	// a pass after their start pass: with a day's interval, only the
	// trigger starts one.
	appliedByTrigger int
	// keptPacks is each agent's pack count at the end: 1 when every new
	// commit came as a fresh clone, 3 when the two pushed commits were
	// fetched into the kept clone.
	keptPacks []int
	// The remote's floor for the webhook figures: as many plain git
	// clients, each with a shallow clone of the head, fetching the next
	// pushed commit at once: push -> fetched per client, and the remote's
	// CPU meanwhile.
	gitFetchLatency []time.Duration
	gitFetchCPU     time.Duration
}

// runFleet is the whole scenario:
//
//  1. `git ls-remote` k times (the baseline; again at the end);
//  2. the agents start, spread over one interval, and clone;
//  3. no-op window: the agents restart (spread again) and poll until each
//     has made `polls` passes on an unmoved commit; the remote's CPU and
//     requests over the window, with every agent stopped at both ends so
//     the counts are exact;
//  4. polling: the agents run (spread), a commit is pushed, and the time
//     until each has applied it is taken;
//  5. webhook: the agents run with an interval of a day (so only the
//     trigger can bring the commit), a commit is pushed and every agent's
//     webhook POSTed at once; the time until each has applied it;
//  6. the floor of 5: with the agents stopped, as many `git` clients,
//     each with a shallow clone of the head, fetch the next pushed commit
//     at once (f.gitFetchFloor).
func runFleet(t testing.TB, n int, interval time.Duration, polls, k int) fleetFigures {
	f := newFleet(t, n)
	fig := fleetFigures{agents: n, interval: interval, lsRemotes: 2 * k}
	head := gittest.Git(t, f.repo.Work, "rev-parse", "HEAD")
	long := 10 * time.Minute
	t0 := time.Now()
	phase := func(what string) { t.Logf("%8.1fs %s", time.Since(t0).Seconds(), what) }
	lsA, qA := f.lsRemote(k)
	phase("git ls-remote baseline")

	f.start(interval, interval)
	f.waitAll("first clone", long+interval, func(_ int, fa *fleetAgent) bool { _, ok := fa.appliedAt(head); return ok })
	f.stop()
	phase("every agent cloned")

	p0, ok0, c0, q0 := f.passes(), f.oks(), f.remote.cpu(t), f.remote.stats(t)
	f.start(interval, interval)
	f.waitAll("no-op polls", long+time.Duration(polls+1)*interval, func(i int, fa *fleetAgent) bool { return fa.count() >= p0[i]+polls })
	f.stop()
	p1, ok1, c1cpu, q1 := f.passes(), f.oks(), f.remote.cpu(t), f.remote.stats(t)
	for i := range p1 {
		fig.noopPasses += p1[i] - p0[i]
		fig.noopOK += ok1[i] - ok0[i]
	}
	fig.noopCPU = c1cpu - c0
	fig.noopReq = requests{q1.refs - q0.refs, q1.packs - q0.packs}
	phase("no-op window")

	p2 := f.passes()
	f.start(interval, interval)
	f.waitAll("polling: one pass each before the push", long+interval, func(i int, fa *fleetAgent) bool { return fa.count() > p2[i] })
	c2 := f.push()
	pushed, rc := time.Now(), f.remote.cpu(t)
	f.waitAll("polling: the pushed commit applied", long+2*interval, func(_ int, fa *fleetAgent) bool { _, ok := fa.appliedAt(c2); return ok })
	fig.pollRemoteCPU = f.remote.cpu(t) - rc
	f.stop()
	for _, fa := range f.agents {
		at, _ := fa.appliedAt(c2)
		fig.pollLatency = append(fig.pollLatency, at.Sub(pushed))
	}
	phase("polling: pushed commit applied by every agent")

	p3 := f.passes()
	f.start(24*time.Hour, 0)
	f.waitAll("webhook: the start pass", long, func(i int, fa *fleetAgent) bool { return fa.count() > p3[i] })
	p4 := f.passes()
	c3 := f.push()
	pushed, rc = time.Now(), f.remote.cpu(t)
	rq := f.remote.stats(t)
	f.trigger(c3)
	f.waitAll("webhook: the pushed commit applied", long, func(_ int, fa *fleetAgent) bool { _, ok := fa.appliedAt(c3); return ok })
	fig.trigRemoteCPU = f.remote.cpu(t) - rc
	rq1 := f.remote.stats(t)
	fig.trigReq = requests{rq1.refs - rq.refs, rq1.packs - rq.packs}
	p5 := f.passes()
	f.stop()
	for i, fa := range f.agents {
		at, _ := fa.appliedAt(c3)
		fig.triggerLatency = append(fig.triggerLatency, at.Sub(pushed))
		if p5[i] > p4[i] {
			fig.appliedByTrigger++
		}
	}
	for _, fa := range f.agents {
		fig.keptPacks = append(fig.keptPacks, fa.keptPacks(t))
	}
	phase("webhook: pushed commit applied by every agent")

	fig.gitFetchLatency, fig.gitFetchCPU = f.gitFetchFloor()
	phase("git fetch floor: pushed commit fetched by every git client")

	lsB, qB := f.lsRemote(k)
	fig.lsCPU = lsA + lsB
	fig.lsReq = requests{qA.refs + qB.refs, qA.packs + qB.packs}
	return fig
}

// Ten agents poll one remote process, are pushed to, and are triggered by
// their webhooks. Behaviour only: every no-op poll costs the remote one
// ref advertisement and no pack; every agent applies the polled commit
// and, with a day's interval, the triggered one in the pass the trigger
// started.
func TestFleetManyAgentsOneRemote(t *testing.T) {
	const n, polls, k = 10, 3, 3
	fig := runFleet(t, n, 300*time.Millisecond, polls, k)
	if fig.noopOK < n*polls {
		t.Errorf("%d no-op passes in the window, want at least %d", fig.noopOK, n*polls)
	}
	// A pass cut short when the agents stop may or may not have reached
	// the remote: each pass costs at most one advertisement.
	if fig.noopReq.refs < int64(fig.noopOK) || fig.noopReq.refs > int64(fig.noopPasses) || fig.noopReq.packs != 0 {
		t.Errorf("%d no-op passes (%d whole) cost the remote %d ref advertisements and %d upload-pack requests; want one advertisement each and no pack",
			fig.noopPasses, fig.noopOK, fig.noopReq.refs, fig.noopReq.packs)
	}
	if fig.lsReq.refs != int64(fig.lsRemotes) {
		t.Errorf("%d git ls-remote made %d ref advertisements", fig.lsRemotes, fig.lsReq.refs)
	}
	if len(fig.pollLatency) != n || len(fig.triggerLatency) != n {
		t.Errorf("applied: %d by polling, %d by webhook, of %d agents", len(fig.pollLatency), len(fig.triggerLatency), n)
	}
	if len(fig.gitFetchLatency) != n {
		t.Errorf("%d git clients fetched the pushed commit, want %d", len(fig.gitFetchLatency), n)
	}
	if fig.appliedByTrigger != n {
		t.Errorf("%d of %d agents applied the commit in a pass their webhook started", fig.appliedByTrigger, n)
	}
	// Both pushed commits were fetched into each agent's kept clone (one
	// pack each beside the first clone's), not as fresh clones.
	for i, p := range fig.keptPacks {
		if p != 3 {
			t.Errorf("%s's kept clone holds %d packs; want 3 (the first clone, then the two pushed commits fetched into it)", fmt.Sprintf("w%03d", i), p)
		}
	}
}

// BenchmarkFleetManyAgentsOneRemote is issue 15's "many agents, one
// remote" at FLEET_AGENTS agents (default 200) polling every
// FLEET_INTERVAL (default 20s): the remote's CPU per no-op poll against
// one `git ls-remote` in the same run, and the time from a push until
// every agent has applied it, polling and with the webhook. Run it with
// -benchtime 1x (scripts/scale.sh fleet).
func BenchmarkFleetManyAgentsOneRemote(b *testing.B) {
	n, interval := 200, 20*time.Second
	if v := os.Getenv("FLEET_AGENTS"); v != "" {
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
			b.Fatalf("FLEET_AGENTS=%q: want a positive integer", v)
		}
	}
	if v := os.Getenv("FLEET_INTERVAL"); v != "" {
		var err error
		if interval, err = time.ParseDuration(v); err != nil || interval <= 0 {
			b.Fatalf("FLEET_INTERVAL=%q: want a duration", v)
		}
	}
	for i := 0; i < b.N; i++ {
		cpu0 := selfCPU(b)
		fig := runFleet(b, n, interval, 3, 20)
		perPoll := fig.noopCPU / time.Duration(max(fig.noopReq.refs, 1))
		perLs := fig.lsCPU / time.Duration(fig.lsRemotes)
		pollP50, pollMax := medianMax(fig.pollLatency)
		trigP50, trigMax := medianMax(fig.triggerLatency)
		perFetch := fig.trigRemoteCPU / time.Duration(n)
		gitP50, gitMax := medianMax(fig.gitFetchLatency)
		perGitFetch := fig.gitFetchCPU / time.Duration(n)
		incremental := 0
		for _, p := range fig.keptPacks {
			if p > 1 {
				incremental++
			}
		}
		b.Logf("%d agents, interval %s: %d no-op passes cost the remote %s CPU (%s per poll; %d advertisements, %d packs); "+
			"%d git ls-remote %s (%s each; %d advertisements, %d upload-pack requests); "+
			"push to applied: polling p50 %s max %s (remote CPU meanwhile %s), webhook p50 %s max %s (remote CPU meanwhile %s; %d of %d applied by the trigger's pass); "+
			"remote CPU per agent per new commit (webhook) %s (%d advertisements, %d upload-pack requests); %d of %d kept clones fetched into; "+
			"floor: %d git clients fetching a pushed commit at once: p50 %s max %s, remote CPU %s (%s each); "+
			"this process's CPU (the agents') %s",
			n, interval, fig.noopPasses, fig.noopCPU, perPoll, fig.noopReq.refs, fig.noopReq.packs,
			fig.lsRemotes, fig.lsCPU, perLs, fig.lsReq.refs, fig.lsReq.packs,
			pollP50, pollMax, fig.pollRemoteCPU, trigP50, trigMax, fig.trigRemoteCPU, fig.appliedByTrigger, n,
			perFetch, fig.trigReq.refs, fig.trigReq.packs, incremental, n,
			n, gitP50, gitMax, fig.gitFetchCPU, perGitFetch, selfCPU(b)-cpu0)
		b.ReportMetric(float64(n), "agents")
		b.ReportMetric(interval.Seconds(), "interval-s")
		b.ReportMetric(float64(perPoll.Microseconds()), "remote-cpu-us/poll")
		b.ReportMetric(float64(perLs.Microseconds()), "remote-cpu-us/ls-remote")
		b.ReportMetric(float64(perPoll)/float64(perLs), "poll/ls-remote")
		b.ReportMetric(pollP50.Seconds(), "poll-p50-s")
		b.ReportMetric(pollMax.Seconds(), "poll-max-s")
		b.ReportMetric(trigP50.Seconds(), "webhook-p50-s")
		b.ReportMetric(trigMax.Seconds(), "webhook-max-s")
		b.ReportMetric(fig.trigRemoteCPU.Seconds(), "webhook-remote-cpu-s")
		b.ReportMetric(fig.pollRemoteCPU.Seconds(), "poll-remote-cpu-s")
		b.ReportMetric(float64(perFetch.Microseconds()), "remote-cpu-us/new-commit")
		b.ReportMetric(float64(incremental), "incremental-agents")
		b.ReportMetric(gitMax.Seconds(), "git-fetch-max-s")
		b.ReportMetric(float64(trigMax)/float64(gitMax), "webhook/git-fetch")
		b.ReportMetric(float64(perGitFetch.Microseconds()), "remote-cpu-us/git-fetch")
		b.ReportMetric(float64(perFetch)/float64(perGitFetch), "new-commit/git-fetch")
	}
}

func medianMax(ds []time.Duration) (time.Duration, time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)-1]
}
