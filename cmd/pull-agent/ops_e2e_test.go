package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freeAddr is a loopback address nothing listens on (for a daemon that
// does not report the port it bound).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// passesTotal sums pull_agent_passes_total over its results: the passes
// the daemon ran to their end (each is counted after it ends).
func passesTotal(t *testing.T, metricsAddr string) int {
	t.Helper()
	return metricSum(t, metricsAddr, "pull_agent_passes_total{")
}

// metricSum adds up the daemon's metric lines that start with prefix.
func metricSum(t *testing.T, metricsAddr, prefix string) int {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, prefix) {
			v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", l, err)
			}
			n += int(v)
		}
	}
	return n
}

// The trigger webhook on a real daemon (issue 14): a POST whose HMAC is
// wrong or missing gets 401 and starts nothing; 100 correctly signed POSTs
// fired while a pass is running coalesce into one more pass. The pass is
// made long (its new decky's steady check takes 20 samples 1s apart) and
// the triggers are fired once its base container exists, and before the
// pass has ended (the pass counter is still 0); passes are counted by the
// daemon's own pass counter (/metrics) and its "triggered" log lines.
func TestEndToEndWebhookTriggers(t *testing.T) {
	w := newWorld(t)
	m := startMasterProc(t)
	w.commit("one decky", [][2]string{{"hook", "ssh"}}, nil)
	secret := filepath.Join(t.TempDir(), "hook.secret")
	if err := os.WriteFile(secret, []byte("s3cret-hook-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	metricsAddr, hookAddr := freeAddr(t), freeAddr(t)
	cmd := agentCmd(w.faultArgs("run", m, "--interval", "1h", "--steady-samples", "20", "--steady-interval", "1s", "--steady-timeout", "120s",
		"--metrics", metricsAddr, "--trigger-listen", hookAddr, "--trigger-secret-file", secret, "--log-level", "info")...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	post := func(body string, header, sig string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+hookAddr+"/", strings.NewReader(body))
		if header != "" {
			req.Header.Set(header, sig)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("webhook POST: %v\n%s", err, out.String())
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	sign := func(body string) string {
		mac := hmac.New(sha256.New, []byte("s3cret-hook-key"))
		mac.Write([]byte(body))
		return "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	waitCond(t, 2*time.Minute, "the webhook listener", func() bool {
		resp, err := http.Get("http://" + hookAddr + "/") // GET is refused and triggers nothing
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, out.String)
	waitCond(t, 2*time.Minute, "the decky's base container (the first pass is applying)", func() bool {
		_, ok := w.owned()[w.name("hook")]
		return ok
	}, out.String)

	// 100 signed triggers during the pass; each is accepted (202).
	for i := range 100 {
		body := `{"ref":"refs/heads/main","n":` + strconv.Itoa(i) + `}`
		header := "X-Hub-Signature-256"
		sig := sign(body)
		if i%2 == 1 { // Gitea's header carries the bare hex
			header, sig = "X-Gitea-Signature", strings.TrimPrefix(sig, "sha256=")
		}
		if code := post(body, header, sig); code != http.StatusAccepted {
			t.Fatalf("signed trigger %d: %d, want 202", i, code)
		}
	}
	if n := passesTotal(t, metricsAddr); n != 0 {
		t.Fatalf("the first pass ended (%d passes) before the 100 triggers were sent: the test did not trigger during a pass\n%s", n, out.String())
	}
	triggered := func() int { return strings.Count(out.String(), "triggered: full pass now") }
	waitCond(t, 3*time.Minute, "the triggered pass", func() bool {
		return triggered() >= 1 && passesTotal(t, metricsAddr) >= 2
	}, out.String)
	waitCond(t, time.Minute, "the triggered pass ends", func() bool {
		// the passes counted: the first, those the Engine's events about
		// the first pass's own containers woke, and the triggered one
		return passesTotal(t, metricsAddr) >= 2+strings.Count(out.String(), "changed outside a pass; reconciling")
	}, out.String)

	// Bad signatures, while the daemon is idle: 401, and no pass.
	for _, tc := range []struct{ header, sig string }{
		{"X-Hub-Signature-256", sign("another body")},
		{"X-Hub-Signature-256", "sha256=" + strings.Repeat("0", 64)},
		{"X-Gitea-Signature", "not-hex"},
		{"", ""},
	} {
		if code := post(`{"ref":"refs/heads/main"}`, tc.header, tc.sig); code != http.StatusUnauthorized {
			t.Errorf("trigger signed %s %q: %d, want 401", tc.header, tc.sig, code)
		}
	}
	// The handler counts each request as it answers it, so this is exact
	// (no waiting on a log line): none of the bad ones queued a pass.
	const hook = "pull_agent_webhook_requests_total{result="
	if refused, taken := metricSum(t, metricsAddr, hook+`"refused"}`), metricSum(t, metricsAddr, hook+`"accepted"}`)+metricSum(t, metricsAddr, hook+`"coalesced"}`); refused != 4 || taken != 100 {
		t.Errorf("webhook requests counted: %d refused (want 4), %d accepted or coalesced (want 100)", refused, taken)
	}
	passes := passesTotal(t, metricsAddr)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("daemon exit: %v\n%s", err, out.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the daemon did not stop after SIGTERM:\n%s", out.String())
	}
	// A trigger taken by the idle daemon is logged at once: one line for
	// the 100 good ones, none for the bad ones.
	if n := triggered(); n != 1 {
		t.Errorf("%d triggered passes, want 1 (100 triggers during a pass coalesce; bad signatures start none):\n%s", n, out.String())
	}
	if refused := strings.Count(out.String(), "webhook trigger refused: bad or missing signature"); refused != 4 {
		t.Errorf("%d refusals logged, want 4", refused)
	}
	if strings.Contains(out.String(), "s3cret-hook-key") {
		t.Error("the webhook secret is in the log")
	}
	if passes-1 > 2 {
		t.Errorf("%d passes after the first one, want at most 2:\n%s", passes-1, out.String())
	}
	t.Logf("passes: %d in all, %d woken by the Engine's events", passes, strings.Count(out.String(), "changed outside a pass; reconciling"))
}
