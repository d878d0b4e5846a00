package master

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/decnet/pull-agent/internal/testlan"
	"github.com/decnet/pull-agent/report"
)

// fleetBody is a worker's heartbeat with n running deckies, as seedRollout
// sends it.
func fleetBody(host, commit string, n int) report.Body {
	b := body(host)
	b.Commit = commit
	b.Status.Runtime = map[string]report.Runtime{}
	for d := 1; d <= n; d++ {
		name := fmt.Sprintf("d%d", d)
		b.Status.Runtime[name] = report.Runtime{State: "running", Running: true, Services: map[string]string{"ssh": "running"}}
		b.Status.Deckies = append(b.Status.Deckies, report.DeckyStatus{Name: name, IP: fmt.Sprintf("198.51.100.%d", d), MAC: "8a:2f:e4:22:13:5d"})
	}
	return b
}

// The fleet console at 200 workers × 250 deckies, in headless Chromium:
// the summary numbers, the rollout row (150 applied, 30 failed, 20 stale),
// a click from a failure to the worker's page showing the failing decky
// and its error, every table within its row limit, and the time to first
// paint against an empty master in the same run (logged as a ratio, never
// asserted). PULL_AGENT_SCREENSHOTS=DIR saves screenshots there.
func TestConsoleInBrowserAt200Workers(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	testlan.Need(t, err == nil, "Debian's chromium (headless browser)")
	st, h := newMaster(t, Options{StaleAfter: 10 * time.Minute, InsecureNoAuth: true})
	_, newC := seedRollout(t, st, 250)
	// worker-179 (one of the 30 failed) also found two deckies drifted
	// and could not repair them; a third drift it repaired.
	{
		b := fleetBody("worker-179", newC, 250)
		b.Status.Runtime["d2"] = report.Runtime{State: "failed", Error: "container d2-http: exited (1)\nbind: address already in use"}
		at := time.Now().Add(-30 * time.Minute) // older than the d2 failures
		drift := func(seq uint64, decky, op, status string) report.Event {
			e := report.Event{EventID: fmt.Sprintf("worker-179-%06d", seq), Seq: seq, DeckyName: decky, Operation: op, Status: status, Commit: newC, CompletedAt: at}
			if status == "failed" {
				e.Error = "container " + decky + "-ssh: port 22 published on 0.0.0.0, want 198.51.100.5; repair: network decnet-lan: not found"
			}
			return e
		}
		b.Lifecycle = []report.Event{drift(2, "d5", "drift", "failed"), drift(3, "d6", "drift", "failed"), drift(4, "d7", "drift", "failed"), drift(5, "d7", "repair", "succeeded")}
		if _, err := st.Record(context.Background(), &b, "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	full := httptest.NewServer(h)
	defer full.Close()
	_, eh := newMaster(t, open)
	empty := httptest.NewServer(eh)
	defer empty.Close()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 180*time.Second)
	defer cancel()

	firstPaint := func(url string) float64 {
		if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible("#failures")); err != nil {
			t.Fatalf("browser: %v", err)
		}
		ms, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd`))
		if err != nil {
			t.Fatalf("paint timing: %v", err)
		}
		return ms
	}
	emptyMS := firstPaint(empty.URL + "/")
	fullMS := firstPaint(full.URL + "/")
	// Server-rendered HTML without scripts or external assets paints once
	// it is parsed: DOMContentLoaded stands for the first paint.
	t.Logf("time to first paint (DOMContentLoaded): %.0f ms with 200 workers × 250 deckies, %.0f ms empty, ratio %.1f", fullMS, emptyMS, fullMS/max(emptyMS, 1))

	text := func(sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	for sel, want := range map[string]string{"#sum-fresh": "180", "#sum-stale": "20", "#sum-applied": "180", "#sum-deckies-failed": "30", "#sum-deckies-running": "49970", "#sum-drifted": "2"} {
		if got := text(sel); got != want {
			t.Errorf("summary %s = %q, want %s", sel, got, want)
		}
	}
	for sel, want := range map[string]string{"#rollouts tr:nth-child(2) .applied": "150", "#rollouts tr:nth-child(2) .failed-count": "30",
		"#rollouts tr:nth-child(2) .stale-count": "20", "#rollouts tr:nth-child(2) .behind": "0",
		// The previous commit: the 180 fresh workers moved on from it,
		// none is behind it.
		"#rollouts tr:nth-child(3) .applied": "0", "#rollouts tr:nth-child(3) .moved-on": "180", "#rollouts tr:nth-child(3) .behind": "0",
		"#rollouts tr:nth-child(3) .behind-why": "", "#rollouts tr:nth-child(3) .stale-count": "20"} {
		if got := text(sel); got != want {
			t.Errorf("rollout %s = %q, want %s", sel, got, want)
		}
	}
	rows := func(table string) int {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('`+table+` tr').length - 1`))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	shoot := func(name string) {
		dir := os.Getenv("PULL_AGENT_SCREENSHOTS")
		if dir == "" {
			return
		}
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := rows("#deckies"); n != pageDeckies {
		t.Errorf("main page deckies: %d rows, want the limit %d (of 50,000)", n, pageDeckies)
	}
	if n := rows("#failures"); n != 33 { // 30 × d2, 3 drifts of worker-179
		t.Errorf("main page failures: %d rows", n)
	}
	shoot("console-summary.png")

	// From the failures, click a failed worker: its page shows the decky
	// that failed and its error.
	worker := text("#failures tr:nth-child(2) td:nth-child(2) a")
	if err := chromedp.Do(ctx, chromedp.Click("#failures tr:nth-child(2) td:nth-child(2) a"), chromedp.WaitVisible("#events")); err != nil {
		t.Fatalf("click: %v", err)
	}
	if n, _ := strconv.Atoi(strings.TrimPrefix(worker, "worker-")); n < 150 || n >= 180 {
		t.Fatalf("clicked %q, not a failed worker", worker)
	}
	if h1 := text("main > h1"); h1 != worker {
		t.Fatalf("landed on %q", h1)
	}
	events := text("#events")
	if !strings.Contains(events, "d2") || !strings.Contains(events, "container d2-http: exited (1)") {
		t.Fatalf("the failed worker's history:\n%s", events)
	}
	if d := text("#troubled"); !strings.Contains(d, "d2") || !strings.Contains(d, "failed") || !strings.Contains(d, "bind: address already in use") {
		t.Fatalf("the failed worker's page does not put the failing decky first:\n%s", d)
	}
	if n := rows("#deckies"); n > pageHostDeckies || n != 250 {
		t.Errorf("host page deckies: %d rows (limit %d)", n, pageHostDeckies)
	}

	// The drifted worker's page counts its two unrepaired drifts.
	if err := chromedp.Do(ctx, chromedp.Navigate(full.URL+"/hosts/worker-179"), chromedp.WaitVisible("#events")); err != nil {
		t.Fatal(err)
	}
	if d := text("#host-drifted .num"); d != "2" {
		t.Errorf("worker-179 drifted: %q", d)
	}
	if n := rows("#deckies"); n > pageHostDeckies || n != 250 {
		t.Errorf("host page deckies: %d rows (limit %d)", n, pageHostDeckies)
	}
	shoot("console-host.png")

	// A newer commit is pushed: 12 workers applied it, the others are
	// behind; 8 of them are suspended, 10 refuse it, 10 fetched since
	// (applying). The rollout names
	// the first 10 behind and why, and links to the others.
	newest := strings.Repeat("c", 40)
	for i := 0; i < 40; i++ {
		host := fmt.Sprintf("worker-%03d", i)
		b := fleetBody(host, newC, 250)
		switch {
		case i < 12:
			b.Commit = newest
		case i < 20:
			b.Suspended = true
		case i < 30:
			b.PassError = "refusing commit " + newest[:12] + ": not signed by a key of the trust policy"
		default:
			b.LastFetchOK = time.Now()
		}
		if _, err := st.Record(context.Background(), &b, "", time.Now().Add(-time.Duration(40-i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(full.URL+"/"), chromedp.WaitVisible("#rollouts")); err != nil {
		t.Fatal(err)
	}
	for sel, want := range map[string]string{"#rollouts tr:nth-child(2) .applied": "12", "#rollouts tr:nth-child(2) .behind": "168",
		"#rollouts tr:nth-child(2) .stale-count": "20", "#rollouts tr:nth-child(2) .behind-more": "and 158 more →",
		"#rollouts tr:nth-child(3) .applied": "138", "#rollouts tr:nth-child(3) .failed-count": "30", "#rollouts tr:nth-child(3) .moved-on": "12",
		"#rollouts tr:nth-child(3) .behind": "0", "#sum-applied": "12"} {
		if got := text(sel); got != want {
			t.Errorf("after the push, %s = %q, want %s", sel, got, want)
		}
	}
	why := text("#rollouts tr:nth-child(2) .behind-why")
	if n, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#rollouts tr:nth-child(2) .behind-why a[href^="/hosts/"]').length`)); n != RolloutBehindShown ||
		!strings.Contains(why, "worker-012 on "+newC[:12]+" (suspended)\n") || !strings.Contains(why, "worker-020 on "+newC[:12]+": refusing commit "+newest[:12]) {
		t.Errorf("behind, and why (%d named):\n%s", n, why)
	}
	if !strings.Contains(text("#rollouts tr:nth-child(2)"), "168 (10 applying, 8 suspended, 10 with a pass error)") {
		t.Errorf("the behind count does not say why: %s", text("#rollouts tr:nth-child(2)"))
	}
	shoot("console-rollout.png")
	// "and 158 more →": every worker behind, a bounded page at a time.
	if err := chromedp.Do(ctx, chromedp.Click("#rollouts tr:nth-child(2) .behind-more"), chromedp.WaitVisible("#behind")); err != nil {
		t.Fatalf("click: %v", err)
	}
	if n := rows("#behind"); n != pageBehind {
		t.Errorf("behind page: %d rows, want the limit %d (of 168)", n, pageBehind)
	}
	if b := text("#behind"); !strings.Contains(b, "worker-030\tbbbbbbbbbbbb\tapplying") || !strings.Contains(b, "worker-012\tbbbbbbbbbbbb\tsuspended") {
		t.Errorf("the behind page does not say why:\n%.600s", b)
	}
	if err := chromedp.Do(ctx, chromedp.Click("#behind-next"), chromedp.WaitVisible("#behind")); err != nil {
		t.Fatalf("click: %v", err)
	}
	if n := rows("#behind"); n != 168-pageBehind {
		t.Errorf("behind page 2: %d rows, want %d", n, 168-pageBehind)
	}
}
