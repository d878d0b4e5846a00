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
	now := time.Now() // one reading: a slow machine must not stretch the steps
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
		if _, err := st.Record(ctx, &b, "", now.Add(-time.Duration(200-i)*time.Second)); err != nil {
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

// No console page renders more than its documented rows: the tables, the
// "behind, and why" cell of a rollout (the first RolloutBehindShown, then
// a link to the others) and that link's page.
func TestConsoleRowLimits(t *testing.T) {
	st, srv := newMaster(t, open)
	b := body("worker-a")
	b.Status.Runtime = map[string]report.Runtime{}
	var evs []report.Event
	for d := 0; d < pageHostDeckies+50; d++ {
		b.Status.Runtime[fmt.Sprintf("d%04d", d)] = report.Runtime{State: "failed"}
	}
	for s := 1; s <= pageHostEvents+20; s++ {
		evs = append(evs, hostEv("worker-a", uint64(s), "failed", time.Now().Add(time.Duration(s)*time.Second)))
	}
	b.Lifecycle = evs
	b.Commit = strings.Repeat("e", 40)
	record(t, st, b)
	// More workers behind the newest commit than the behind page holds,
	// on a commit the fleet saw first.
	oldC := strings.Repeat("0", 40)
	for i := 0; i < pageBehind+20; i++ {
		w := body(fmt.Sprintf("worker-%03d", i))
		w.Commit, w.PassError = oldC, "fetch: connection refused"
		if _, err := st.Record(context.Background(), &w, "", time.Now().Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < MaxRollouts; i++ { // more commits than the page shows
		w := body("worker-z")
		w.Commit = fmt.Sprintf("%040d", i+1)
		if _, err := st.Record(context.Background(), &w, "", time.Now().Add(-time.Duration(MaxRollouts-i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	record(t, st, b)
	behind := pageBehind + 21 // and worker-z, on commits the fleet saw before
	behindPath := "/rollouts/" + b.Commit + "/behind"
	for _, tt := range []struct {
		path, table string
		limit       int
	}{
		{"/hosts/worker-a", `id="troubled"`, pageHostDeckies},
		{"/hosts/worker-a", `id="deckies"`, pageHostDeckies},
		{"/hosts/worker-a", `id="events"`, pageHostEvents},
		{"/hosts/worker-a/deckies/d1", `id="events"`, pageDeckyEvents},
		{"/", `id="failures"`, pageFailures},
		{"/", `id="deckies"`, pageDeckies},
		{"/", `id="hosts"`, pageHosts},
		{"/", `id="rollouts"`, 5},
		{behindPath, `id="behind"`, pageBehind},
	} {
		rr := do(t, srv, http.MethodGet, tt.path, nil, "")
		_, rest, _ := strings.Cut(rr.Body.String(), tt.table)
		table, _, _ := strings.Cut(rest, "</table>")
		rows := strings.Count(table, "<tr") - 1
		if rr.Code != 200 || rows > tt.limit || rows <= 0 {
			t.Errorf("%s %s: %d, %d rows, limit %d", tt.path, tt.table, rr.Code, rows, tt.limit)
		}
	}
	// The newest rollout names RolloutBehindShown workers and links to
	// the rest.
	page := do(t, srv, http.MethodGet, "/", nil, "").Body.String()
	_, rest, _ := strings.Cut(page, `<td class="behind-why">`)
	cell, _, _ := strings.Cut(rest, "</td>")
	if n := strings.Count(cell, `<a href="/hosts/`); n != RolloutBehindShown {
		t.Errorf("the behind cell names %d workers, want %d:\n%s", n, RolloutBehindShown, cell)
	}
	more := fmt.Sprintf(`<a class="behind-more" href="%s">and %d more →</a>`, behindPath, behind-RolloutBehindShown)
	if !strings.Contains(cell, more) || !strings.Contains(cell, "fetch: connection refused") {
		t.Errorf("the behind cell does not link to the others (%s):\n%s", more, cell)
	}
	// The link's page, then its next page: every worker behind, once.
	seen := map[string]bool{}
	for path, pages := behindPath, 0; path != ""; pages++ {
		body := do(t, srv, http.MethodGet, path, nil, "").Body.String()
		for _, m := range regexp.MustCompile(`<td><a href="/hosts/(worker-[0-9z]+)">`).FindAllStringSubmatch(body, -1) {
			if seen[m[1]] {
				t.Fatalf("%s listed twice", m[1])
			}
			seen[m[1]] = true
		}
		path = ""
		if m := regexp.MustCompile(`id="behind-next" href="([^"]+)"`).FindStringSubmatch(body); m != nil {
			path = strings.ReplaceAll(m[1], "&amp;", "&")
		}
		if pages > 3 {
			t.Fatal("the behind pages do not end")
		}
	}
	if len(seen) != behind {
		t.Errorf("behind pages list %d workers, want %d", len(seen), behind)
	}
	// The same as JSON, and a commit nobody applied is a 404.
	var rows []BehindHost
	if rr := do(t, srv, http.MethodGet, "/api/v1"+behindPath, nil, ""); json.Unmarshal(rr.Body.Bytes(), &rows) != nil || len(rows) != pageBehind || rows[0].PassError == "" {
		t.Errorf("api behind: %d rows", len(rows))
	}
	if rr := do(t, srv, http.MethodGet, "/rollouts/"+strings.Repeat("9", 40)+"/behind", nil, ""); rr.Code != 404 {
		t.Errorf("behind an unknown commit: %d", rr.Code)
	}
	// The troubled deckies page on.
	host := do(t, srv, http.MethodGet, "/hosts/worker-a", nil, "").Body.String()
	if !strings.Contains(host, "more deckies not running") {
		t.Error("the host page does not link to its other troubled deckies")
	}
}

// Drifted deckies show in the summary and on the host page, which links
// to the unrepaired drifts.
func TestConsoleDrifted(t *testing.T) {
	st, srv := newMaster(t, open)
	e := func(seq uint64, decky, op, status string) report.Event {
		return report.Event{EventID: fmt.Sprintf("worker-a-%06d", seq), Seq: seq, DeckyName: decky, Operation: op, Status: status, CompletedAt: time.Now(),
			Error: map[bool]string{true: "d1-ssh: port 22 published to 0.0.0.0, want 198.51.100.7"}[status == "failed"]}
	}
	a := body("worker-a", e(1, "d1", "drift", "failed"), e(2, "d2", "drift", "failed"), e(3, "d2", "repair", "succeeded"))
	a.Status.Runtime = map[string]report.Runtime{"d1": {State: "running"}, "d2": {State: "running"}}
	record(t, st, a)
	record(t, st, body("worker-b"))
	page := do(t, srv, http.MethodGet, "/", nil, "").Body.String()
	if !regexp.MustCompile(`id="sum-drifted"[^>]*>1<`).MatchString(page) {
		t.Errorf("summary: no drifted count of 1")
	}
	host := do(t, srv, http.MethodGet, "/hosts/worker-a", nil, "").Body.String()
	if !regexp.MustCompile(`id="host-drifted" class="failed"><span class="num">1</span> <a href="\?operation=drift&amp;status=failed">`).MatchString(host) {
		t.Errorf("host page: no drifted count of 1 with a link")
	}
	if h := do(t, srv, http.MethodGet, "/hosts/worker-b", nil, "").Body.String(); !strings.Contains(h, `id="host-drifted"><span class="num">0</span>`) {
		t.Errorf("worker-b: no drifted count of 0")
	}
	filtered := do(t, srv, http.MethodGet, "/hosts/worker-a?operation=drift&status=failed", nil, "").Body.String()
	_, events, _ := strings.Cut(filtered, `id="events"`)
	if n := strings.Count(events, `<tr class="failed">`); n != 2 || !strings.Contains(events, "port 22 published") {
		t.Errorf("drift failures in the history: %d", n)
	}
	var hd HostDetail
	if rr := do(t, srv, http.MethodGet, "/api/v1/hosts/worker-a", nil, ""); json.Unmarshal(rr.Body.Bytes(), &hd) != nil || hd.Drifted != 1 {
		t.Errorf("api host drifted: %s", rr.Body)
	}
	var sum FleetSummary
	if rr := do(t, srv, http.MethodGet, "/api/v1/summary", nil, ""); json.Unmarshal(rr.Body.Bytes(), &sum) != nil || sum.Drifted != 1 {
		t.Errorf("api summary drifted: %s", rr.Body)
	}
}

func newRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }
