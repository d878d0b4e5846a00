package main

// Fault scenarios on real components: the agent and the master run as
// separate processes (the test binary as pull-agent, or the binary in
// PULL_AGENT_BIN that scripts/faults.sh builds with go build), against a
// real Engine, a veth LAN and a git remote. CI runs each scenario once,
// short; scripts/faults.sh runs the same code longer (FAULTS_* below).
// Nothing here asserts on time: every wait is on a condition, with a
// generous deadline.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	stdsync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/gittest"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/internal/testlan"
	"github.com/decnet/pull-agent/master"
	"github.com/decnet/pull-agent/report"
)

// faultInt reads a scenario size from the environment (scripts/faults.sh
// raises them), else the short CI default.
func faultInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// agentCmd is pull-agent as a process: PULL_AGENT_BIN when set (a binary
// built with go build), else this test binary acting as main.
func agentCmd(args ...string) *exec.Cmd {
	if bin := os.Getenv("PULL_AGENT_BIN"); bin != "" {
		return exec.Command(bin, args...)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "PULL_AGENT_TEST_AS_MAIN=1")
	return cmd
}

// runAgent runs one pull-agent command to its end.
func runAgent(t testing.TB, args ...string) (int, string) {
	t.Helper()
	cmd := agentCmd(args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	} else if err != nil {
		t.Fatalf("pull-agent %s: %v", args[0], err)
	}
	return 0, out.String()
}

// masterProc is `pull-agent master` as a process on a fixed loopback
// port and database, which a test can stop (SIGKILL: it is down, not
// shutting down politely) and start again.
type masterProc struct {
	t    *testing.T
	addr string
	db   string
	cmd  *exec.Cmd
	out  *syncBuffer
}

func startMasterProc(t *testing.T) *masterProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &masterProc{t: t, addr: ln.Addr().String(), db: filepath.Join(t.TempDir(), "master.db")}
	ln.Close()
	m.start()
	t.Cleanup(m.kill)
	return m
}

func (m *masterProc) URL() string { return "http://" + m.addr }

func (m *masterProc) start() {
	m.t.Helper()
	m.out = &syncBuffer{}
	// Loopback and no auth: a test master (auth is otherwise mandatory).
	m.cmd = agentCmd("master", "--listen", m.addr, "--db", m.db, "--insecure-no-auth", "--log-level", "warn")
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	waitCond(m.t, 60*time.Second, "the master answers /healthz", func() bool {
		resp, err := http.Get(m.URL() + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusNoContent
	}, m.out.String)
}

func (m *masterProc) kill() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	_ = m.cmd.Wait()
	m.cmd = nil
}

// events lists the host's lifecycle history (by seq), page by page.
func (m *masterProc) events(host string) []master.EventRow {
	m.t.Helper()
	var all []master.EventRow
	q := url.Values{"host": {host}, "limit": {"200"}}
	for {
		resp, err := http.Get(m.URL() + "/api/v1/lifecycle?" + q.Encode())
		if err != nil {
			m.t.Fatal(err)
		}
		var rows []master.EventRow
		err = json.NewDecoder(resp.Body).Decode(&rows)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			m.t.Fatalf("lifecycle: %d %v", resp.StatusCode, err)
		}
		all = append(all, rows...)
		next := resp.Header.Get("X-Next-Cursor")
		if next == "" {
			return all
		}
		q.Set("after", next)
	}
}

func (m *masterProc) hosts() []master.HostRow {
	m.t.Helper()
	resp, err := http.Get(m.URL() + "/api/v1/hosts")
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	var rows []master.HostRow
	if err := json.NewDecoder(resp.Body).Decode(&rows); err != nil {
		m.t.Fatal(err)
	}
	return rows
}

func waitCond(t *testing.T, limit time.Duration, what string, ok func() bool, logs func() string) {
	t.Helper()
	for deadline := time.Now().Add(limit); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s\n%s", what, limit, logs())
		}
	}
}

// checkSeqs asserts the master's record of one host is gapless and has
// no event twice: seqs 1..n, every event id once.
func checkSeqs(t *testing.T, rows []master.EventRow) {
	t.Helper()
	seen := map[string]bool{}
	for i, r := range rows {
		if r.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d: a gap or a repeat in the master's record\n%s", i+1, r.Seq, eventTable(rows))
		}
		if seen[r.EventID] {
			t.Fatalf("event id %s recorded twice", r.EventID)
		}
		seen[r.EventID] = true
	}
}

func eventTable(rows []master.EventRow) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "  %3d %-24s %-8s %-9s %.12s %s\n", r.Seq, r.DeckyName, r.Operation, r.Status, r.ConfigHash, r.Error)
	}
	return b.String()
}

func (w *world) faultArgs(cmd string, m *masterProc, extra ...string) []string {
	args := append([]string{cmd}, w.onceArgs()[1:]...)
	args = append(args, "--master", m.URL(), "--master-insecure")
	return append(args, extra...)
}

// The master is down for FAULTS_MASTER_PASSES passes (CI: 3), each after
// a new commit; when it is back, every event of those passes is recorded
// exactly once, in the order the passes made them.
func TestEndToEndFaultMasterDown(t *testing.T) {
	w := newWorld(t)
	m := startMasterProc(t)
	passes := faultInt(t, "FAULTS_MASTER_PASSES", 3)
	if passes > 40 {
		t.Fatalf("FAULTS_MASTER_PASSES=%d: the LAN holds at most about 40 deckies", passes)
	}
	var deckies [][2]string
	deckies = append(deckies, [2]string{"d00", "ssh"})
	w.commit("first decky", deckies, nil)
	if code, out := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("first pass: exit %d\n%s", code, out)
	}
	want := []string{"d00 deploy succeeded"}

	m.kill()
	for i := 1; i <= passes; i++ {
		// Odd passes add a decky, even ones give the last one a second
		// service: one event per pass, so the order is the passes' order.
		if i%2 == 1 {
			deckies = append(deckies, [2]string{fmt.Sprintf("d%02d", i), "ssh"})
			want = append(want, fmt.Sprintf("d%02d deploy succeeded", i))
		} else {
			deckies[len(deckies)-1][1] = "ssh,http"
			want = append(want, deckies[len(deckies)-1][0]+" mutate succeeded")
		}
		w.commit(fmt.Sprintf("pass %d", i), deckies, nil)
		if code, out := runAgent(t, w.faultArgs("once", m, "--report-timeout", "1s")...); code != 0 {
			t.Fatalf("pass %d with the master down: exit %d (the pass must converge without it)\n%s", i, code, out)
		}
	}
	box, err := report.OpenOutbox(filepath.Join(w.state, "outbox"), w.host)
	if err != nil {
		t.Fatal(err)
	}
	if d := box.Depth(); d != passes {
		t.Fatalf("outbox holds %d events after %d passes with the master down, want %d", d, passes, passes)
	}

	m.start()
	if code, out := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("pass with the master back: exit %d\n%s", code, out)
	}
	rows := m.events(w.host)
	checkSeqs(t, rows)
	var got []string
	for _, r := range rows {
		got = append(got, strings.TrimPrefix(r.DeckyName, w.host+"-")+" "+r.Operation+" "+r.Status)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("master's record, in seq order:\n%s\nwant %v", eventTable(rows), want)
	}
	if d := box.Depth(); d != 0 {
		t.Fatalf("outbox still holds %d delivered events", d)
	}
	if h := m.hosts(); len(h) != 1 || h[0].MissingSeqs != 0 || h[0].OutboxDepth != 0 {
		t.Fatalf("master's host record: %+v", h)
	}
	t.Logf("PASS master down for %d passes: %d events, seq 1..%d, each once, in order", passes, len(rows), len(rows))
}

// killPoint is where in a pass the agent is killed.
type killPoint int

const (
	killInCompose killPoint = iota // a container of the new decky exists
	killAtOutbox                   // an event file (or its temp file) appeared
	killRandom                     // at a random delay from the start
)

func (k killPoint) String() string {
	return [...]string{"inside Compose", "at the outbox write", "at a random delay"}[k]
}

// The agent (`run`) is SIGKILLed mid-pass FAULTS_KILL_TRIALS times (CI:
// once, inside Compose); after each kill `once` converges: exactly the
// desired containers, none left over, and the master's record is gapless,
// each decky's current configuration reported, nothing reported twice.
func TestEndToEndFaultKilledMidPass(t *testing.T) {
	w := newWorld(t)
	m := startMasterProc(t)
	trials := faultInt(t, "FAULTS_KILL_TRIALS", 1)
	seed := uint64(faultInt(t, "FAULTS_SEED", int(time.Now().UnixNano()%1e9)))
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("FAULTS_SEED=%d", seed)

	live := [][2]string{{"base0", "ssh"}, {"base1", "http"}}
	w.commit("two deckies", live, nil)
	t0 := time.Now()
	if code, out := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("first pass: exit %d\n%s", code, out)
	}
	firstPass := time.Since(t0)
	removed := map[string]bool{}
	outboxDir := filepath.Join(w.state, "outbox")
	for k := 0; k < trials; k++ {
		// Each trial adds a decky of two services and, from the third on,
		// removes the oldest trial decky: deploys and teardowns in flight.
		live = append(live, [2]string{fmt.Sprintf("k%02d", k), "ssh,ftp"})
		if k >= 2 {
			gone := live[2]
			live = append(live[:2], live[3:]...)
			removed[w.name(gone[0])] = true
		}
		w.commit(fmt.Sprintf("trial %d", k), live, nil)
		point := killPoint(k % 3)
		switch os.Getenv("FAULTS_KILL_POINT") { // one point only, to reproduce
		case "compose":
			point = killInCompose
		case "outbox":
			point = killAtOutbox
		case "random":
			point = killRandom
		}
		newDecky := w.name(fmt.Sprintf("k%02d", k))
		var before []string
		if ents, err := os.ReadDir(outboxDir); err == nil {
			for _, e := range ents {
				before = append(before, e.Name())
			}
		}
		cmd := agentCmd(w.faultArgs("run", m, "--interval", "1h")...)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		var ready func() bool
		switch point {
		case killInCompose:
			ready = func() bool { _, ok := w.owned()[newDecky]; return ok }
		case killAtOutbox:
			ready = func() bool {
				ents, _ := os.ReadDir(outboxDir)
				for _, e := range ents {
					n := e.Name()
					if !slices.Contains(before, n) && (strings.HasPrefix(n, ".tmp-") || (strings.HasSuffix(n, ".json") && n != "heartbeat.json" && n != "delivery.json")) {
						return true
					}
				}
				return false
			}
		case killRandom:
			at := time.Now().Add(time.Duration(rng.Int64N(int64(firstPass) + 1)))
			ready = func() bool { return time.Now().After(at) }
		}
		waitCond(t, 120*time.Second, fmt.Sprintf("trial %d: the kill point (%s)", k, point), func() bool {
			select {
			case <-exited:
				return true // a daemon never exits by itself: the wait below reports it
			default:
			}
			return ready()
		}, out.String)
		select {
		case <-exited:
			t.Fatalf("trial %d: the daemon exited before the kill:\n%s", k, out.String())
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		t.Logf("trial %d: SIGKILL %s", k, point)

		if os.Getenv("FAULTS_VERBOSE") != "" {
			ents, _ := os.ReadDir(outboxDir)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			st, _ := state.Load(w.state, w.host)
			t.Logf("trial %d: after the kill: outbox %v, applied %v", k, names, st.Applied)
		}
		code, pout := runAgent(t, w.faultArgs("once", m)...)
		if os.Getenv("FAULTS_VERBOSE") != "" {
			t.Logf("trial %d: the pass after the kill:\n%s", k, pout)
			t.Logf("trial %d: the killed daemon said:\n%s", k, out.String())
		}
		if code != 0 {
			t.Fatalf("trial %d (%s): the pass after the kill exited %d\n%s", k, point, code, pout)
		}
		checkConverged(t, w, live)
	}

	rows := m.events(w.host)
	checkSeqs(t, rows)
	st, err := state.Load(w.state, w.host)
	if err != nil {
		t.Fatal(err)
	}
	// Lost: a running decky whose configuration was never reported, or a
	// removed one whose teardown was not. Duplicated: the same decky,
	// operation, commit and configuration reported succeeded twice.
	type key struct{ decky, op, commit, hash string }
	count := map[key]int{}
	for _, r := range rows {
		if r.Status == "succeeded" {
			count[key{r.DeckyName, r.Operation, r.Commit, r.ConfigHash}]++
		}
	}
	for k, n := range count {
		if n > 1 {
			t.Errorf("duplicated: %s %s at %.12s (config %.12s) reported succeeded %d times", k.decky, k.op, k.commit, k.hash, n)
		}
	}
	for _, d := range live {
		name := w.name(d[0])
		if st.Applied[name] == "" {
			t.Errorf("state: decky %s runs, but the state file does not record it as applied", name)
		}
		found := false
		for _, r := range rows {
			found = found || (r.DeckyName == name && r.Status == "succeeded" && r.ConfigHash == st.Applied[name] && r.Operation != "teardown")
		}
		if !found {
			t.Errorf("lost: decky %s runs configuration %.12s, which the master never heard of", name, st.Applied[name])
		}
	}
	for name := range removed {
		found := false
		for _, r := range rows {
			found = found || (r.DeckyName == name && r.Status == "succeeded" && r.Operation != "teardown")
		}
		if !found {
			t.Errorf("lost: decky %s was deployed (and later removed), and the master never heard of the deploy", name)
		}
	}
	for name := range removed {
		found := false
		for _, r := range rows {
			found = found || (r.DeckyName == name && r.Operation == "teardown" && r.Status == "succeeded")
		}
		if !found {
			t.Errorf("lost: decky %s was removed, and the master never heard of it", name)
		}
	}
	if t.Failed() {
		t.Logf("master's record:\n%s", eventTable(rows))
		return
	}
	t.Logf("PASS %d SIGKILLs mid-pass: converged after each, no orphan containers, %d events gapless, none lost or duplicated", trials, len(rows))
}

// checkConverged asserts the worker runs exactly the desired deckies:
// each a running base and one running container per service, nothing
// else owned by this agent (no orphans of a killed pass).
func checkConverged(t *testing.T, w *world, deckies [][2]string) {
	t.Helper()
	want := map[string]bool{}
	for _, d := range deckies {
		want[w.name(d[0])] = true
		for _, s := range strings.Split(d[1], ",") {
			want[w.name(d[0])+"-"+s] = true
		}
	}
	got := w.owned()
	for n, c := range got {
		if !want[n] {
			t.Fatalf("orphan container %s (%s) left by the killed pass; have %v", n, c.State, names(got))
		}
		if c.State != "running" {
			t.Fatalf("container %s is %s after converging", n, c.State)
		}
	}
	for n := range want {
		if _, ok := got[n]; !ok {
			t.Fatalf("container %s missing after converging; have %v", n, names(got))
		}
	}
}

// The state directory is a small tmpfs that fills up: the deckies keep
// running, the state file is never left corrupt, and once space returns
// the next pass applies what was waiting.
func TestEndToEndFaultStateDiskFull(t *testing.T) {
	testlan.RequireRoot(t)
	w := newWorld(t)
	m := startMasterProc(t)
	if err := os.MkdirAll(w.state, 0o700); err != nil {
		t.Fatal(err)
	}
	// Big enough for the clone (the decoy binary is in every build
	// context), small enough to fill quickly.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=96m,mode=0700", "tmpfs", w.state).CombinedOutput(); err != nil {
		testlan.Need(t, false, fmt.Sprintf("a tmpfs at the state directory (mount: %v %s)", err, out))
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", w.state).Run() })

	w.commit("two deckies", [][2]string{{"a", "ssh"}, {"b", "http"}}, nil)
	if code, out := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("first pass: exit %d\n%s", code, out)
	}
	before := ids(w.owned(), "")
	stFile := filepath.Join(w.state, state.File)

	filler := filepath.Join(w.state, "filler")
	fill(t, filler)
	// A change waits while the disk is full.
	w.commit("a third decky", [][2]string{{"a", "ssh"}, {"b", "http"}, {"c", "ftp"}}, nil)
	for i := 0; i < 2; i++ {
		code, out := runAgent(t, w.faultArgs("once", m, "--report-timeout", "5s")...)
		if code == 0 {
			// Acceptable only if the pass really converged on a full disk.
			if _, ok := w.owned()[w.name("c")]; !ok {
				t.Fatalf("disk full: exit 0 but the new decky is not there\n%s", out)
			}
		} else if !strings.Contains(out, "no space left on device") {
			t.Fatalf("disk full, pass %d: exit %d without naming the cause (no space left on device)\n%s", i, code, out)
		} else if h := m.hosts(); len(h) != 1 || !strings.Contains(h[0].PassError, "no space left on device") {
			// The agent reports what it can: the heartbeat goes from
			// memory, so the master hears the cause, not just silence.
			t.Fatalf("disk full, pass %d: the master was not told why (hosts %+v)\n%s", i, h, out)
		}
		t.Logf("disk full, pass %d: exit %d: %s", i, code, lastLines(out, 3))
		// The running deckies are untouched, the state file is whole.
		now := w.owned()
		for n, id := range before {
			if c, ok := now[n]; !ok || c.ID != id || c.State != "running" {
				t.Fatalf("disk full: container %s was disturbed (%v)", n, c.State)
			}
		}
		data, err := os.ReadFile(stFile)
		if err != nil {
			t.Fatalf("disk full: the state file is gone: %v", err)
		}
		var s state.State
		if err := json.Unmarshal(data, &s); err != nil || s.Host != w.host {
			t.Fatalf("disk full: the state file is corrupt (%v):\n%s", err, data)
		}
		if _, err := state.Load(w.state, w.host); err != nil {
			t.Fatalf("disk full: %v", err)
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if code, out := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("space is back: exit %d\n%s", code, out)
	}
	checkConverged(t, w, [][2]string{{"a", "ssh"}, {"b", "http"}, {"c", "ftp"}})
	rows := m.events(w.host)
	checkSeqs(t, rows)
	if last := rows[len(rows)-1]; last.DeckyName != w.name("c") || last.Status != "succeeded" {
		t.Fatalf("the waiting change was not reported after recovery:\n%s", eventTable(rows))
	}
	t.Logf("PASS state disk full: deckies undisturbed, state file whole, recovered: %d events gapless", len(rows))
}

// fill writes a file until the filesystem has no space left.
func fill(t *testing.T, p string) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatal(err)
			}
			break
		}
	}
	// The last partial megabytes: small writes until nothing fits.
	small := make([]byte, 512)
	for {
		if _, err := f.Write(small); err != nil {
			break
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// remoteFault switches what the fleet remote (git http-backend) does.
type remoteFault struct {
	mu   stdsync.Mutex
	mode string // "", "down" or "corrupt"
}

func (f *remoteFault) set(m string) { f.mu.Lock(); f.mode = m; f.mu.Unlock() }

func (f *remoteFault) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		mode := f.mode
		f.mu.Unlock()
		switch {
		case mode == "down":
			// The connection drops without an answer: unreachable.
			if hj, ok := rw.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			rw.WriteHeader(http.StatusBadGateway)
		case mode == "corrupt" && strings.HasSuffix(r.URL.Path, "/git-upload-pack"):
			// The ref advertisement is real; the pack is garbage.
			rec := &bodyRecorder{ResponseWriter: rw}
			h.ServeHTTP(rec, r)
			body := rec.buf.Bytes()
			if i := bytes.Index(body, []byte("PACK")); i >= 0 {
				for j := i + 12; j < len(body)-20; j += 7 {
					body[j] ^= 0x5a
				}
			}
			_, _ = rw.Write(body)
		default:
			h.ServeHTTP(rw, r)
		}
	})
}

type bodyRecorder struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (b *bodyRecorder) Write(p []byte) (int, error) { return b.buf.Write(p) }

// The fleet remote is unreachable, then serves a corrupt pack, then is
// force-pushed: the last good state keeps running through all three, each
// is reported (exit 3 and the master's pass error), the first two recover
// by themselves, and the force-push waits for the operator's
// --allow-rollback.
func TestEndToEndFaultRemote(t *testing.T) {
	w := newWorld(t)
	m := startMasterProc(t)
	var f remoteFault
	remote := gittest.HTTP(t, filepath.Dir(w.repo.Bare), f.wrap) + "/" + filepath.Base(w.repo.Bare)
	args := func(extra ...string) []string {
		a := w.faultArgs("once", m, extra...)
		for i := range a {
			if a[i] == "--repo" {
				a[i+1] = remote
			}
		}
		return append(a, "--git-timeout", "20s")
	}
	c1 := w.commit("one decky", [][2]string{{"a", "ssh"}}, nil)
	if code, out := runAgent(t, args()...); code != 0 {
		t.Fatalf("first pass: exit %d\n%s", code, out)
	}
	good := ids(w.owned(), "")
	passError := func() string {
		h := m.hosts()
		if len(h) != 1 {
			t.Fatalf("hosts: %+v", h)
		}
		return h[0].PassError
	}
	keeps := func(what string) {
		t.Helper()
		if now := ids(w.owned(), ""); fmt.Sprint(now) != fmt.Sprint(good) {
			t.Fatalf("%s: the running deckies changed: %v -> %v", what, good, now)
		}
	}
	c2 := w.commit("a second decky", [][2]string{{"a", "ssh"}, {"b", "http"}}, nil)

	for _, tc := range []struct{ mode, says string }{
		{"down", "fetch"},
		{"corrupt", "fetch"},
	} {
		f.set(tc.mode)
		code, out := runAgent(t, args()...)
		if code != exitNoStart || !strings.Contains(out, tc.says) {
			t.Fatalf("remote %s: exit %d, want %d and a %s error\n%s", tc.mode, code, exitNoStart, tc.says, out)
		}
		keeps("remote " + tc.mode)
		if pe := passError(); pe == "" {
			t.Fatalf("remote %s: the master was not told", tc.mode)
		}
		t.Logf("remote %s: exit %d, reported: %s", tc.mode, code, passError())
	}
	f.set("")
	if code, out := runAgent(t, args()...); code != 0 {
		t.Fatalf("remote healthy again: exit %d\n%s", code, out)
	}
	if _, ok := w.owned()[w.name("b")]; !ok {
		t.Fatal("remote healthy again: the waiting commit was not applied")
	}
	if pe := passError(); pe != "" {
		t.Fatalf("remote healthy again: the master still shows %q", pe)
	}
	good = ids(w.owned(), "")

	// A force-push rewrites c2 away: refused, reported, nothing changes.
	w.repo.Reset(c1)
	w.commit("rewritten history", [][2]string{{"a", "ssh"}, {"z", "ftp"}}, nil)
	code, out := runAgent(t, args()...)
	if code != exitNoStart || !strings.Contains(out, "does not descend from the last applied commit "+c2[:12]) {
		t.Fatalf("force-push: exit %d, want %d and a rollback refusal\n%s", code, exitNoStart, out)
	}
	keeps("force-push")
	if pe := passError(); !strings.Contains(pe, "does not descend") {
		t.Fatalf("force-push: master's pass error = %q", pe)
	}
	if code, out := runAgent(t, args("--allow-rollback")...); code != 0 {
		t.Fatalf("force-push accepted by the operator: exit %d\n%s", code, out)
	}
	checkConverged(t, w, [][2]string{{"a", "ssh"}, {"z", "ftp"}})
	checkSeqs(t, m.events(w.host))
	t.Log("PASS remote unreachable, corrupt pack, force-push: last good state kept, each reported, recovered")
}

// privateEngine is a Docker daemon of this test's own (data, exec root,
// socket), which the test may restart without disturbing the machine's
// shared dockerd that other tests use.
type privateEngine struct {
	t    *testing.T
	dir  string
	sock string
	cmd  *exec.Cmd
}

func startPrivateEngine(t *testing.T) *privateEngine {
	t.Helper()
	testlan.RequireDocker(t)
	dir, err := os.MkdirTemp("", "pa-faults-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	e := &privateEngine{t: t, dir: dir, sock: "unix://" + filepath.Join(dir, "docker.sock")}
	e.start()
	t.Cleanup(func() {
		if out, err := exec.Command("docker", "-H", e.sock, "ps", "-aq").Output(); err == nil && len(bytes.TrimSpace(out)) > 0 {
			_ = exec.Command("docker", append([]string{"-H", e.sock, "rm", "-f"}, strings.Fields(string(out))...)...).Run()
		}
		e.stop()
		_ = os.RemoveAll(dir)
	})
	return e
}

func (e *privateEngine) start() {
	e.t.Helper()
	e.cmd = exec.Command("dockerd", "--data-root", filepath.Join(e.dir, "root"), "--exec-root", filepath.Join(e.dir, "exec"),
		"--pidfile", filepath.Join(e.dir, "pid"), "-H", e.sock, "--bridge=none", "--iptables=false", "--ip-masq=false")
	logf, _ := os.OpenFile(filepath.Join(e.dir, "dockerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	if err := e.cmd.Start(); err != nil {
		e.t.Fatalf("starting a private dockerd: %v", err)
	}
	waitCond(e.t, 90*time.Second, "the private dockerd answers", func() bool {
		return exec.Command("docker", "-H", e.sock, "version").Run() == nil
	}, func() string {
		b, _ := os.ReadFile(filepath.Join(e.dir, "dockerd.log"))
		return lastLines(string(b), 20)
	})
}

func (e *privateEngine) stop() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = e.cmd.Process.Kill()
		<-done
	}
	e.cmd = nil
}

// dockerd is restarted while a pass creates containers: the pass reports
// its failures, and the next one converges with nothing left over. It
// restarts a private dockerd, never the shared one (its own data root,
// socket and containerd; no bridge, no iptables). It runs in CI (about a
// minute: a daemon of its own, images built afresh) and with
// FAULTS_DOCKERD=1 (scripts/faults.sh runs it last); elsewhere it is
// opt-in, so a developer's `go test ./...` starts no second daemon.
func TestEndToEndFaultDockerdRestart(t *testing.T) {
	if os.Getenv("FAULTS_DOCKERD") != "1" && !testlan.InCI() {
		t.Skip("opt-in outside CI: FAULTS_DOCKERD=1 (scripts/faults.sh)")
	}
	w := newWorld(t)
	m := startMasterProc(t)
	e := startPrivateEngine(t)
	t.Setenv("DOCKER_HOST", e.sock) // for the agent processes and w.eng
	w.docker = e.sock
	shared := w.eng
	eng, err := engine.New(context.Background(), w.host, engine.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	w.eng = eng
	t.Cleanup(func() { eng.Close(); w.eng = shared })
	w.commit("two deckies", [][2]string{{"a", "ssh"}, {"b", "http"}}, nil)
	if code, out := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("first pass: exit %d\n%s", code, out)
	}
	want := [][2]string{{"a", "ssh"}, {"b", "http"}, {"c", "ssh,ftp"}, {"d", "ssh,ftp"}, {"e", "ssh,ftp"}}
	w.commit("three more", want, nil)
	cmd := agentCmd(w.faultArgs("once", m, "--report-timeout", "10s")...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 180*time.Second, "a new decky's container", func() bool {
		cs, err := w.eng.ListContainers(context.Background())
		if err != nil {
			return false
		}
		for _, c := range cs {
			for _, d := range []string{"c", "d", "e"} {
				if c.Decky() == w.name(d) {
					return true
				}
			}
		}
		return false
	}, out.String)
	e.stop()
	e.start()
	err = cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	t.Logf("the pass through the restart: exit %d: %s", code, lastLines(out.String(), 4))
	if code != 0 {
		// It failed: the master must have been told, by failed events or
		// the pass error. (Exit 0 is possible too: the pass may have
		// retried through the restart; then there is nothing to report.)
		failed := false
		for _, r := range m.events(w.host) {
			failed = failed || r.Status == "failed"
		}
		if h := m.hosts(); !failed && (len(h) != 1 || h[0].PassError == "") {
			t.Fatalf("the interrupted pass exited %d but the master was told nothing: %+v", code, h)
		}
	}
	for i := 0; i < 2; i++ { // a pass, and a second to clear retried failures
		if code, pout := runAgent(t, w.faultArgs("once", m)...); code == 0 {
			break
		} else if i == 1 {
			t.Fatalf("after the restart: exit %d\n%s", code, pout)
		}
	}
	checkConverged(t, w, want)
	checkSeqs(t, m.events(w.host))
	t.Log("PASS dockerd restarted mid-pass: failures reported, next pass converged, no orphans")
}
