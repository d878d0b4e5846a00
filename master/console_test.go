package master

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

// seedRollout records a fleet of 200 workers with deckies each, all on
// oldC an hour ago; then 150 apply newC cleanly, 30 apply it with decky
// "d2" failed, 20 say nothing more (stale).
func seedRollout(t testing.TB, st *Store, deckies int) (oldC, newC string) {
	t.Helper()
	ctx := context.Background()
	oldC, newC = strings.Repeat("a", 40), strings.Repeat("b", 40)
	t0 := time.Now().Add(-time.Hour)
	for i := 0; i < 200; i++ {
		host := fmt.Sprintf("worker-%03d", i)
		b := body(host)
		b.Commit = oldC
		b.Status.Runtime = map[string]report.Runtime{}
		for d := 1; d <= deckies; d++ {
			name := fmt.Sprintf("d%d", d)
			b.Status.Runtime[name] = report.Runtime{State: "running", Running: true, Services: map[string]string{"ssh": "running"}}
			b.Status.Deckies = append(b.Status.Deckies, report.DeckyStatus{Name: name, IP: fmt.Sprintf("198.51.100.%d", d), MAC: "8a:2f:e4:22:13:5d"})
		}
		if _, err := st.Record(ctx, &b, "", t0); err != nil {
			t.Fatal(err)
		}
		if i >= 180 {
			continue
		}
		b.Commit = newC
		ev := report.Event{EventID: host + "-000001", Seq: 1, DeckyName: "d2", Operation: "mutate", Status: "succeeded", Commit: newC, CompletedAt: time.Now()}
		if i >= 150 {
			b.Status.Runtime["d2"] = report.Runtime{State: "failed", Error: "container d2-http: exited (1)\nbind: address already in use"}
			ev.Status, ev.Error = "failed", "container d2-http: exited (1)\nbind: address already in use"
		}
		b.Lifecycle = []report.Event{ev}
		if _, err := st.Record(ctx, &b, "", time.Now().Add(-time.Duration(200-i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	return oldC, newC
}

func TestConsolePagesAndAPI(t *testing.T) {
	st, srv := newMaster(t, Options{StaleAfter: 10 * time.Minute, LoopbackReaders: true})
	_, newC := seedRollout(t, st, 4)
	get := func(path string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, path, nil)
		req.RemoteAddr = "127.0.0.1:5555"
		rr := newRecorder()
		srv.ServeHTTP(rr, req)
		return rr.Code, rr.Body.String()
	}
	cell := func(page, id string) string {
		m := regexp.MustCompile(`id="` + id + `">([^<]*)<`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no #%s in the page", id)
		}
		return m[1]
	}
	code, page := get("/")
	if code != 200 {
		t.Fatalf("page: %d", code)
	}
	for id, want := range map[string]string{"sum-fresh": "180", "sum-stale": "20", "sum-applied": "180", "sum-deckies-running": "770", "sum-deckies-failed": "30"} {
		if got := cell(page, id); got != want {
			t.Errorf("summary %s = %s, want %s", id, got, want)
		}
	}
	_, rollouts, _ := strings.Cut(page, `id="rollouts"`)
	row := regexp.MustCompile(`<td>` + newC[:12] + `</td><td>[^<]*</td><td class="applied">(\d+)</td><td class="failed-count">(\d+)</td><td class="moved-on"[^>]*>(\d+)</td><td><span class="behind">(\d+)</span></td><td class="stale-count">(\d+)</td>`).FindStringSubmatch(rollouts)
	if row == nil || row[1] != "150" || row[2] != "30" || row[3] != "0" || row[4] != "0" || row[5] != "20" {
		t.Fatalf("rollout row: %v\n%s", row, rollouts[:min(len(rollouts), 2000)])
	}
	if !strings.Contains(rollouts, "<svg") {
		t.Error("no progress chart")
	}
	// A failed worker's page shows the failing decky and its error.
	if !strings.Contains(page, `href="/hosts/worker-150?status=failed"`) {
		t.Fatal("recent failures do not link to the worker")
	}
	code, host := get("/hosts/worker-150?status=failed")
	if code != 200 || !strings.Contains(host, `<td>d2</a>`) && !strings.Contains(host, `>d2</a>`) || !strings.Contains(host, "bind: address already in use") {
		t.Fatalf("host page (%d):\n%s", code, host)
	}
	if n := strings.Count(host, `<tr class="failed">`); n != 3 { // troubled, the decky table, its event
		t.Errorf("failed rows on the host page: %d", n)
	}
	code, decky := get("/hosts/worker-150/deckies/d2")
	if code != 200 || !strings.Contains(decky, "<details><summary>container d2-http: exited (1)</summary>") {
		t.Fatalf("decky page (%d):\n%s", code, decky)
	}
	if code, _ := get("/hosts/nobody"); code != 404 {
		t.Errorf("unknown host: %d", code)
	}

	// The same views as JSON.
	var sum FleetSummary
	if _, b := get("/api/v1/summary"); json.Unmarshal([]byte(b), &sum) != nil || sum.Workers.Fresh != 180 || sum.Applied != 180 {
		t.Errorf("api summary: %s", b)
	}
	var ro []Rollout
	if _, b := get("/api/v1/rollouts"); json.Unmarshal([]byte(b), &ro) != nil || len(ro) != 2 || ro[0].Applied != 150 || ro[0].Failed != 30 || ro[0].Stale != 20 {
		t.Errorf("api rollouts: %s", b)
	}
	var hd HostDetail
	if _, b := get("/api/v1/hosts/worker-150?status=failed"); json.Unmarshal([]byte(b), &hd) != nil || hd.Host.Host != "worker-150" ||
		len(hd.Deckies) != 4 || hd.Deckies[1].MAC == "" || len(hd.Troubled) != 1 || hd.Troubled[0].Decky != "d2" || len(hd.Events) != 1 || hd.Events[0].DeckyName != "d2" {
		t.Errorf("api host: %s", b)
	}
	var evs []EventRow
	if _, b := get("/api/v1/deckies/worker-150/d2/events"); json.Unmarshal([]byte(b), &evs) != nil || len(evs) != 1 || evs[0].Status != "failed" {
		t.Errorf("api decky events: %s", b)
	}
	// Readers only.
	req, _ := http.NewRequest(http.MethodGet, "/api/v1/rollouts", nil)
	rr := newRecorder()
	srv.ServeHTTP(rr, req)
	if rr.Code != 401 {
		t.Errorf("rollouts without credentials from afar: %d", rr.Code)
	}
}

// No console page renders more than its documented rows.
func TestConsoleRowLimits(t *testing.T) {
	st, srv := newMaster(t, open)
	b := body("worker-a")
	b.Status.Runtime = map[string]report.Runtime{}
	var evs []report.Event
	for d := 0; d < pageHostDeckies+50; d++ {
		b.Status.Runtime[fmt.Sprintf("d%04d", d)] = report.Runtime{State: "running"}
	}
	for s := 1; s <= pageHostEvents+20; s++ {
		evs = append(evs, hostEv("worker-a", uint64(s), "failed", time.Now().Add(time.Duration(s)*time.Second)))
	}
	b.Lifecycle = evs
	record(t, st, b)
	for _, tt := range []struct {
		path, table string
		limit       int
	}{
		{"/hosts/worker-a", `id="deckies"`, pageHostDeckies},
		{"/hosts/worker-a", `id="events"`, pageHostEvents},
		{"/hosts/worker-a/deckies/d1", `id="events"`, pageDeckyEvents},
		{"/", `id="failures"`, pageFailures},
		{"/", `id="deckies"`, pageDeckies},
	} {
		rr := do(t, srv, http.MethodGet, tt.path, nil, "")
		_, rest, _ := strings.Cut(rr.Body.String(), tt.table)
		table, _, _ := strings.Cut(rest, "</table>")
		rows := strings.Count(table, "<tr") - 1
		if rows > tt.limit || rows <= 0 {
			t.Errorf("%s %s: %d rows, limit %d", tt.path, tt.table, rows, tt.limit)
		}
	}
}

func newRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }
