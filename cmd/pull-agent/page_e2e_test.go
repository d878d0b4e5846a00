package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/decnet/pull-agent/internal/testlan"
)

// The master's status page, read by a real headless browser, shows a
// failed decky's error text once the agent has reported it.
func TestEndToEndStatusPageInBrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	testlan.Need(t, err == nil, "Debian's chromium (headless browser)")
	w := newWorld(t)
	fleet := readFile(t, w.repo.Work+"/fleet.yaml")
	fleet = strings.Replace(fleet, "services:\n", "services:\n  gone:\n    image: decoys/not-on-this-worker:9\n", 1)
	w.repo.Write(map[string]string{"fleet.yaml": fleet})
	w.commit("one good decky, one with a missing image", [][2]string{{"ok", "ssh"}, {"broken", "gone"}}, nil)
	if code, out := w.once(); code != 1 {
		t.Fatalf("want exit 1, got %d\n%s", code, out)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(w.master+"/"), chromedp.WaitVisible("#failures")); err != nil {
		t.Fatalf("browser: %v", err)
	}
	text := func(sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("browser: %s: %v", sel, err)
		}
		return s
	}
	failures, deckies, hosts := text("#failures"), text("#deckies"), text("#hosts")
	if !strings.Contains(failures, w.name("broken")) || !strings.Contains(failures, "decoys/not-on-this-worker:9") || !strings.Contains(failures, "not present on this worker") {
		t.Fatalf("the page does not show the failed decky's error:\n%s", failures)
	}
	if !strings.Contains(deckies, w.name("ok")) || !strings.Contains(deckies, "running") {
		t.Fatalf("the page does not list the running decky:\n%s", deckies)
	}
	if !strings.Contains(hosts, w.host) || !strings.Contains(hosts, "fresh") {
		t.Fatalf("the page does not show the host as fresh:\n%s", hosts)
	}
}
