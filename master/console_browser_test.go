package master

import (
	"context"
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
)

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
	seedRollout(t, st, 250)
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
	for sel, want := range map[string]string{"#sum-fresh": "180", "#sum-stale": "20", "#sum-applied": "180", "#sum-deckies-failed": "30", "#sum-deckies-running": "49970"} {
		if got := text(sel); got != want {
			t.Errorf("summary %s = %q, want %s", sel, got, want)
		}
	}
	for sel, want := range map[string]string{"#rollouts tr:nth-child(2) .applied": "150", "#rollouts tr:nth-child(2) .failed-count": "30",
		"#rollouts tr:nth-child(2) .stale-count": "20"} {
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
	if n := rows("#failures"); n != 30 {
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
	shoot("console-host.png")
}
