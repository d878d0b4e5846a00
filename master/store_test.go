package master

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

// The store suite: each test runs on SQLite and on PostgreSQL.

func TestStoreDeduplicatesAndNoticesGaps(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		record(t, st, body("worker-a", ev(1, "d1", "succeeded"), ev(2, "d2", "failed")))
		if rec := record(t, st, body("worker-a", ev(2, "d2", "failed"))); rec.Added != 0 || rec.Duplicates != 1 {
			t.Fatalf("a resend after a lost ack: %+v", rec)
		}
		record(t, st, body("worker-a", ev(4, "d1", "succeeded")))
		rows, _ := st.Events(ctx, EventFilter{Host: "worker-a"})
		if seqs(rows) != "1,2,4" {
			t.Fatalf("events: %s", seqs(rows))
		}
		hosts, _ := st.Hosts(ctx, time.Now(), time.Minute)
		if len(hosts) != 1 || hosts[0].Events != 3 || hosts[0].MaxSeq != 4 || hosts[0].MissingSeqs != 1 || hosts[0].Stale {
			t.Fatalf("host: %+v", hosts)
		}
		stale, _ := st.Hosts(ctx, time.Now().Add(time.Hour), time.Minute)
		if !stale[0].Stale {
			t.Error("a host silent for an hour is not stale")
		}
		// The heartbeat replaces the host's decky table.
		b := body("worker-a")
		b.Status.Runtime = map[string]report.Runtime{"d9": {State: "degraded", Services: map[string]string{"http": "exited", "ftp": "running"}}}
		record(t, st, b)
		d, _ := st.Deckies(ctx, "worker-a")
		if len(d) != 1 || d[0].Decky != "d9" || d[0].State != "degraded" || d[0].Services != "ftp=running,http=exited" {
			t.Fatalf("deckies: %+v", d)
		}
	})
}

// A seq reused with a different event_id is kept aside, counted on the
// host, listed by Conflicts, and recorded once however often it is resent.
func TestStoreReportsSeqReusedWithAnotherEventID(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		record(t, st, body("worker-a", hostEv("worker-a", 1, "succeeded", time.Now())))
		other := hostEv("worker-a", 1, "failed", time.Now())
		other.EventID = "reinstalled-000001"
		for i := 0; i < 2; i++ {
			rec := record(t, st, body("worker-a", other))
			if want := 1 - i; len(rec.Conflicts) != want {
				t.Fatalf("send %d: conflicts %+v, want %d", i, rec.Conflicts, want)
			}
		}
		rows, _ := st.Events(ctx, EventFilter{Host: "worker-a"})
		if len(rows) != 1 || rows[0].EventID != "worker-a-000001" {
			t.Fatalf("history must keep the first event only: %+v", rows)
		}
		c, err := st.Conflicts(ctx, "worker-a", 0)
		if err != nil || len(c) != 1 || c[0].Seq != 1 || c[0].EventID != "reinstalled-000001" || c[0].ExistingEventID != "worker-a-000001" ||
			!strings.Contains(string(c[0].Event), `"status":"failed"`) {
			t.Fatalf("conflicts: %+v %v", c, err)
		}
		hosts, _ := st.Hosts(ctx, time.Now(), time.Minute)
		if hosts[0].SeqConflicts != 1 || hosts[0].Events != 1 {
			t.Fatalf("host: %+v", hosts[0])
		}
	})
}

// Every listing pages with a cursor and covers everything exactly once.
func TestStorePaginates(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		base := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
		for h := 0; h < 5; h++ {
			host := fmt.Sprintf("worker-%d", h)
			var evs []report.Event
			for s := 1; s <= 7; s++ {
				evs = append(evs, hostEv(host, uint64(s), "failed", base.Add(time.Duration(s*10+h)*time.Second)))
			}
			b := body(host, evs...)
			b.Status.Runtime = map[string]report.Runtime{"a": {State: "running"}, "b": {State: "running"}, "c": {State: "failed"}}
			record(t, st, b)
		}
		// By host and seq, 4 per page.
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			rows, next, err := st.EventsPage(ctx, EventFilter{After: after, Limit: 4})
			if err != nil || pages > 20 {
				t.Fatal(err, pages)
			}
			for _, r := range rows {
				got = append(got, fmt.Sprintf("%s/%d", r.Host, r.Seq))
			}
			if next == "" {
				break
			}
			after = next
		}
		if len(got) != 35 || got[0] != "worker-0/1" || got[7] != "worker-1/1" || got[34] != "worker-4/7" {
			t.Fatalf("by seq: %v", got)
		}
		// Newest first across hosts, 6 per page: strictly by completion time.
		var times []string
		after = ""
		for {
			rows, next, err := st.EventsPage(ctx, EventFilter{Status: "failed", Order: NewestFirst, After: after, Limit: 6})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				times = append(times, r.CompletedAt)
			}
			if next == "" {
				break
			}
			after = next
		}
		if len(times) != 35 {
			t.Fatalf("newest first: %d events", len(times))
		}
		for i := 1; i < len(times); i++ {
			a, _ := time.Parse(time.RFC3339Nano, times[i-1])
			b, _ := time.Parse(time.RFC3339Nano, times[i])
			if !a.After(b) {
				t.Fatalf("newest first is not by time across hosts at %d: %v", i, times)
			}
		}
		// Hosts 2 per page, deckies 4 per page.
		var hosts []string
		hq := HostQuery{Limit: 2}
		for {
			rows, next, err := st.HostsPage(ctx, time.Now(), time.Minute, hq)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				hosts = append(hosts, r.Host)
			}
			if next == "" {
				break
			}
			hq.After = next
		}
		if strings.Join(hosts, " ") != "worker-0 worker-1 worker-2 worker-3 worker-4" {
			t.Fatalf("hosts: %v", hosts)
		}
		n := 0
		dq := DeckyQuery{Limit: 4}
		for {
			rows, next, err := st.DeckiesPage(ctx, dq)
			if err != nil {
				t.Fatal(err)
			}
			n += len(rows)
			if next == "" {
				break
			}
			dq.After = next
		}
		if n != 15 {
			t.Fatalf("deckies: %d", n)
		}
		if _, _, err := st.EventsPage(ctx, EventFilter{After: "not-a-cursor!"}); err == nil {
			t.Fatal("a forged cursor was accepted")
		}
		if rows, _ := st.Events(ctx, EventFilter{Limit: 1_000_000}); len(rows) != 35 {
			t.Fatalf("limit above the maximum: %d", len(rows))
		}
	})
}

func TestStoreRetentionRemovesOldEvents(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		old := time.Now().Add(-48 * time.Hour)
		for _, host := range []string{"worker-a", "worker-b"} {
			var evs []report.Event
			for s := 1; s <= 10; s++ {
				evs = append(evs, hostEv(host, uint64(s), "succeeded", old))
			}
			b := body(host, evs...)
			if _, err := st.Record(ctx, &b, "", old); err != nil {
				t.Fatal(err)
			}
		}
		record(t, st, body("worker-a", hostEv("worker-a", 11, "succeeded", time.Now()), hostEv("worker-a", 12, "succeeded", time.Now())))

		// Count per host: each host keeps its newest 4.
		n, err := st.Prune(ctx, time.Now(), Retain{MaxPerHost: 4})
		if err != nil || n != 8+6 {
			t.Fatalf("count: removed %d, %v", n, err)
		}
		a, _ := st.Events(ctx, EventFilter{Host: "worker-a"})
		b, _ := st.Events(ctx, EventFilter{Host: "worker-b"})
		if seqs(a) != "9,10,11,12" || seqs(b) != "7,8,9,10" {
			t.Fatalf("after count retention: a=%s b=%s", seqs(a), seqs(b))
		}
		// Age: what was received two days ago goes, today's stays.
		n, err = st.Prune(ctx, time.Now(), Retain{MaxAge: 24 * time.Hour})
		if err != nil || n != 6 {
			t.Fatalf("age: removed %d, %v", n, err)
		}
		a, _ = st.Events(ctx, EventFilter{Host: "worker-a"})
		b, _ = st.Events(ctx, EventFilter{Host: "worker-b"})
		if seqs(a) != "11,12" || len(b) != 0 {
			t.Fatalf("after age retention: a=%s b=%s", seqs(a), seqs(b))
		}
		// The host counters still tell what was ever recorded: no false gaps.
		hosts, _ := st.Hosts(ctx, time.Now(), time.Hour)
		if hosts[0].Events != 12 || hosts[0].MissingSeqs != 0 {
			t.Fatalf("host counters after retention: %+v", hosts[0])
		}
	})
}

func TestStoreTokens(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		tok, info, err := st.AddToken(ctx, AgentToken, "worker-a", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		got, err := st.VerifyToken(ctx, tok)
		if err != nil || got.Name != "worker-a" || got.Kind != AgentToken || got.ID != info.ID {
			t.Fatalf("verify: %+v %v", got, err)
		}
		// Only the hash is stored.
		list, _ := st.Tokens(ctx)
		if len(list) != 1 {
			t.Fatalf("tokens: %+v", list)
		}
		var stored string
		if err := st.r.QueryRow(st.q(`SELECT hash FROM tokens WHERE id = ?`), info.ID).Scan(&stored); err != nil || strings.Contains(tok, stored) || stored != hashToken(tok) {
			t.Fatalf("stored %q for token: %v", stored, err)
		}
		for _, bad := range []string{tok[:len(tok)-1] + "x", "pam1_" + info.ID + "_", "nonsense", ""} {
			if _, err := st.VerifyToken(ctx, bad); err != ErrBadToken {
				t.Errorf("%q: %v", bad, err)
			}
		}
		if n, err := st.RevokeTokens(ctx, AgentToken, "worker-a", "", time.Now()); n != 1 || err != nil {
			t.Fatalf("revoke: %d %v", n, err)
		}
		if _, err := st.VerifyToken(ctx, tok); err != ErrBadToken {
			t.Fatalf("a revoked token verified: %v", err)
		}
		if n, _ := st.ActiveTokens(ctx, ""); n != 0 {
			t.Fatalf("active after revoke: %d", n)
		}
	})
}

// Migrations are versioned, run at start and are idempotent: reopening
// changes nothing and keeps the data.
func TestStoreMigrationsAreVersioned(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		record(t, st, body("worker-a", ev(1, "d1", "succeeded")))
		st.Close()
		st = openStore(t, dsn)
		var versions []int
		rows, err := st.r.Query(`SELECT version FROM schema_migrations ORDER BY version`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var v int
			_ = rows.Scan(&v)
			versions = append(versions, v)
		}
		rows.Close()
		if len(versions) != SchemaVersion || versions[len(versions)-1] != SchemaVersion {
			t.Fatalf("schema_migrations: %v, want 1..%d", versions, SchemaVersion)
		}
		if ev, _ := st.Events(context.Background(), EventFilter{}); len(ev) != 1 {
			t.Fatalf("reopen lost data: %+v", ev)
		}
	})
}

// A database written before migrations were versioned (times as text,
// events keyed by event_id) is upgraded in place: history, counters and
// reused seqs all survive.
func TestLegacySQLiteDatabaseIsMigrated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "legacy.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(migrations[0].sqlite); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`INSERT INTO hosts(host, last_heartbeat, identity) VALUES('worker-a', '2026-11-27T10:00:00.5Z', 'worker-a')`,
		`INSERT INTO events(event_id, host, seq, decky, operation, status, completed_at, received_at) VALUES('e-000001', 'worker-a', 1, 'd1', 'deploy', 'succeeded', '2026-11-27T09:59:00Z', '2026-11-27T10:00:00Z')`,
		`INSERT INTO events(event_id, host, seq, decky, operation, status, completed_at, received_at) VALUES('e-000003', 'worker-a', 3, 'd1', 'repair', 'failed', '2026-11-27T09:59:30Z', '2026-11-27T10:00:01Z')`,
		`INSERT INTO events(event_id, host, seq, decky, operation, status, completed_at, received_at) VALUES('x-000003', 'worker-a', 3, 'd2', 'deploy', 'failed', '2026-11-27T09:59:40Z', '2026-11-27T10:00:02Z')`,
		`INSERT INTO deckies(host, decky, state, updated_at) VALUES('worker-a', 'd1', 'running', '2026-11-27T10:00:00Z')`,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatal(stmt, err)
		}
	}
	db.Close()
	st := openStore(t, path)
	ctx := context.Background()
	rows, _ := st.Events(ctx, EventFilter{})
	if seqs(rows) != "1,3" || rows[1].EventID != "e-000003" || rows[0].CompletedAt != "2026-11-27T09:59:00Z" {
		t.Fatalf("events: %+v", rows)
	}
	hosts, _ := st.Hosts(ctx, time.Now(), time.Minute)
	if len(hosts) != 1 || hosts[0].Events != 2 || hosts[0].MaxSeq != 3 || hosts[0].MissingSeqs != 1 || hosts[0].SeqConflicts != 1 ||
		hosts[0].LastHeartbeat != time.Date(2026, 11, 27, 10, 0, 0, 500e6, time.UTC) {
		t.Fatalf("hosts: %+v", hosts)
	}
	if c, _ := st.Conflicts(ctx, "", 0); len(c) != 1 || c[0].EventID != "x-000003" || c[0].ExistingEventID != "e-000003" {
		t.Fatalf("conflicts: %+v", c)
	}
	if d, _ := st.Deckies(ctx, ""); len(d) != 1 || d[0].UpdatedAt != "2026-11-27T10:00:00Z" {
		t.Fatalf("deckies: %+v", d)
	}
}

// Readers never block ingestion: with every read connection held (a slow
// reader each, inside an open read transaction), a report with a token is
// still authenticated and recorded. The deadline only turns a hang into a
// failure; nothing is timed.
func TestStoreReadersNeverBlockIngestion(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st, err := OpenStoreWith(context.Background(), dsn, StoreOptions{ReadConns: 2})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		ctx := context.Background()
		record(t, st, body("worker-a", hostEv("worker-a", 1, "succeeded", time.Now())))
		tok, _, _ := st.AddToken(ctx, AgentToken, "worker-a", time.Now())
		for i := 0; i < 2; i++ {
			c, err := st.r.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tx, err := c.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback() //nolint:errcheck
			rows, err := tx.QueryContext(ctx, `SELECT event_id FROM events`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
		}
		srv := NewServer(st, Options{}, st.log)
		done := make(chan int, 1)
		go func() {
			done <- do(t, srv, "POST", report.HeartbeatPath, mustJSON(body("worker-a", hostEv("worker-a", 2, "succeeded", time.Now()))), tok).Code
		}()
		select {
		case code := <-done:
			if code != 204 {
				t.Fatalf("status %d", code)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a report waited for readers")
		}
	})
}

// The fleet summary and the rollout of a commit: 150 workers applied it,
// 30 applied it with a failed decky, 20 are stale on the previous one.
func TestStoreSummaryAndRollout(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		oldC, newC := strings.Repeat("a", 40), strings.Repeat("b", 40)
		t0 := time.Now().Add(-time.Hour)
		// One clock reading for the whole loop: a slow machine must not
		// stretch the 1 s steps the percentiles below are computed from.
		now := time.Now()
		for i := 0; i < 200; i++ {
			host := fmt.Sprintf("worker-%03d", i)
			b := body(host)
			b.Commit = oldC
			b.Status.Runtime = map[string]report.Runtime{"d1": {State: "running"}, "d2": {State: "running"}}
			if _, err := st.Record(ctx, &b, "", t0); err != nil {
				t.Fatal(err)
			}
			if i >= 180 {
				continue // stale: never heard of again
			}
			b.Commit = newC
			if i >= 150 {
				b.Status.Runtime = map[string]report.Runtime{"d1": {State: "running"}, "d2": {State: "failed", Error: "exited (1)"}}
			}
			if _, err := st.Record(ctx, &b, "", now.Add(-time.Duration(200-i)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		tok, _, _ := st.AddToken(ctx, AgentToken, "worker-new", time.Now())
		_ = tok
		sum, err := st.Summary(ctx, time.Now(), 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Workers.Fresh != 180 || sum.Workers.Stale != 20 || sum.Workers.NeverSeen != 1 || sum.NewestCommit != newC || sum.Applied != 180 ||
			sum.Deckies["running"] != 370 || sum.Deckies["failed"] != 30 {
			t.Fatalf("summary: %+v", sum)
		}
		ro, err := st.Rollouts(ctx, time.Now(), 10*time.Minute, 5)
		if err != nil || len(ro) != 2 {
			t.Fatalf("rollouts: %+v %v", ro, err)
		}
		r := ro[0]
		if r.Commit != newC || r.Applied != 150 || r.Failed != 30 || r.Stale != 20 || r.Behind != 0 {
			t.Fatalf("rollout of the new commit: %+v", r)
		}
		// Workers reported it 1 s apart, over 179 s.
		if r.P50Seconds < 85 || r.P50Seconds > 95 || r.P95Seconds < 165 || r.P95Seconds > 175 {
			t.Fatalf("p50 %v p95 %v", r.P50Seconds, r.P95Seconds)
		}
		if last := r.Progress[len(r.Progress)-1]; last.Workers != 180 || r.Progress[0].Workers != 1 {
			t.Fatalf("progress: %+v", r.Progress)
		}
		// The 180 fresh workers left the old commit for the new one: they
		// moved on, none of them is behind it.
		if old := ro[1]; old.Commit != oldC || old.Applied != 0 || old.Stale != 20 || old.MovedOn != 180 || old.Behind != 0 || len(old.BehindHosts) != 0 || old.BehindMore != 0 {
			t.Fatalf("rollout of the old commit: %+v", old)
		}
	})
}

// Who signed the applied commit and whether the agent is suspended are
// kept, and a suspended worker behind the newest commit says so.
func TestStoreVerifiedAndSuspended(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		a, b := body("worker-a"), body("worker-b")
		a.Commit, a.Verified = strings.Repeat("c", 40), "SHA256:ops-signing-key"
		b.Commit, b.Suspended, b.PassError = strings.Repeat("d", 40), true, "suspended by an operator"
		if _, err := st.Record(ctx, &b, "", time.Now().Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		record(t, st, a)
		h, ok, err := st.Host(ctx, time.Now(), time.Hour, "worker-a")
		if err != nil || !ok || h.Verified != "SHA256:ops-signing-key" || h.Suspended {
			t.Fatalf("worker-a: %+v %v", h, err)
		}
		ro, err := st.Rollouts(ctx, time.Now(), time.Hour, 1)
		if err != nil || len(ro) != 1 || ro[0].Commit != a.Commit || len(ro[0].BehindHosts) != 1 ||
			!ro[0].BehindHosts[0].Suspended || ro[0].BehindHosts[0].PassError != "suspended by an operator" {
			t.Fatalf("rollout: %+v %v", ro, err)
		}
	})
}

// A rollout's workers against the order in which the fleet first
// reported commits: those past a commit moved on, those before it (or on
// none) are behind, with why; only the first RolloutBehindShown are named
// inline and BehindPage lists them all, one page at a time.
func TestStoreRolloutOrderAndBehind(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		cA, cB, cC := strings.Repeat("a", 40), strings.Repeat("b", 40), strings.Repeat("c", 40)
		t0 := time.Now().Add(-5 * time.Minute)
		rec := func(host, commit string, at time.Time, mod func(*report.Body)) {
			t.Helper()
			b := body(host)
			b.Commit = commit
			if mod != nil {
				mod(&b)
			}
			if _, err := st.Record(ctx, &b, "", at); err != nil {
				t.Fatal(err)
			}
		}
		// The fleet first sees A, then B, then C.
		rec("first-a", cA, t0, nil)
		rec("first-b", cB, t0.Add(time.Minute), nil)
		rec("first-c", cC, t0.Add(2*time.Minute), nil)
		// first-a stays on A; first-b and first-c as seeded.
		rec("via-b", cB, t0.Add(3*time.Minute), nil)                                                                       // B, then C: moved on from B
		rec("via-b", cC, t0.Add(4*time.Minute), nil)                                                                       //
		rec("skipped-b", cC, t0.Add(4*time.Minute), nil)                                                                   // A straight to C: past B
		rec("suspended", cB, t0.Add(4*time.Minute), func(b *report.Body) { b.Suspended = true })                           // B, frozen: behind C
		rec("refusing", cB, t0.Add(4*time.Minute), func(b *report.Body) { b.PassError = "refused " + cC })                 // behind C, says why
		rec("rolled-back", cC, t0.Add(3*time.Minute), nil)                                                                 // applied C, then back to A
		rec("rolled-back", cA, t0.Add(4*time.Minute), nil)                                                                 //
		rec("fetched", cB, t0.Add(4*time.Minute), func(b *report.Body) { b.LastFetchOK = t0.Add(3 * time.Minute) })        // fetched since C: applying
		rec("fetched-early", cB, t0.Add(4*time.Minute), func(b *report.Body) { b.LastFetchOK = t0.Add(90 * time.Second) }) // not since
		rec("nothing-yet", "", t0.Add(4*time.Minute), nil)                                                                 // no commit applied: behind all
		rec("gone", cA, t0.Add(-time.Hour), nil)                                                                           // stale
		for i := 0; i < 2*RolloutBehindShown; i++ {                                                                        // many on A: behind B and C
			rec(fmt.Sprintf("old-%02d", i), cA, t0.Add(4*time.Minute), nil)
		}
		ro, err := st.Rollouts(ctx, time.Now(), 10*time.Minute, 5)
		if err != nil || len(ro) != 3 || ro[0].Commit != cC || ro[1].Commit != cB || ro[2].Commit != cA {
			t.Fatalf("rollouts: %+v %v", ro, err)
		}
		type counts struct{ applied, movedOn, behind, susp, passErr, applying, stale, shown, more int }
		got := func(r Rollout) counts {
			return counts{r.Applied, r.MovedOn, r.Behind, r.BehindSuspended, r.BehindPassError, r.Applying, r.Stale, len(r.BehindHosts), r.BehindMore}
		}
		many := 2 * RolloutBehindShown
		for _, tt := range []struct {
			r    Rollout
			want counts
		}{
			// C: first-c, via-b, skipped-b applied; rolled-back moved on
			// (applied it before); first-a, first-b, suspended, refusing,
			// fetched (applying), fetched-early, nothing-yet and the many
			// are behind.
			{ro[0], counts{3, 1, 7 + many, 1, 1, 1, 1, RolloutBehindShown, 7 + many - RolloutBehindShown}},
			// B: first-b, suspended, refusing, fetched, fetched-early
			// applied; via-b, skipped-b, first-c moved on (past it);
			// rolled-back (on A, never on B), first-a, nothing-yet and the
			// many are behind.
			{ro[1], counts{5, 3, 3 + many, 0, 0, 0, 1, RolloutBehindShown, 3 + many - RolloutBehindShown}},
			// A: everyone else moved past it, only nothing-yet is behind.
			{ro[2], counts{2 + many, 8, 1, 0, 0, 0, 1, 1, 0}},
		} {
			if g := got(tt.r); g != tt.want {
				t.Errorf("rollout %s: %+v, want %+v", tt.r.Commit[:1], g, tt.want)
			}
		}
		// Inline, by name: the first ones; those who say why, say it.
		if b := ro[0].BehindHosts; b[0].Host != "fetched" || b[0].Commit != cB || b[0].State != "applying" || b[2].Host != "first-a" || b[2].Commit != cA {
			t.Errorf("behind C, first: %+v", b[0])
		}
		// All of them, one page at a time, each once, in order.
		var all []BehindHost
		after := ""
		for pages := 0; ; pages++ {
			rows, next, ok, err := st.BehindPage(ctx, time.Now(), 10*time.Minute, cC, after, 7)
			if err != nil || !ok || len(rows) > 7 || pages > 10 {
				t.Fatalf("behind page %d: %d rows, %v %v", pages, len(rows), ok, err)
			}
			all = append(all, rows...)
			if after = next; next == "" {
				break
			}
		}
		why := map[string]BehindHost{}
		for i, b := range all {
			if i > 0 && all[i-1].Host >= b.Host {
				t.Fatalf("not in order: %s then %s", all[i-1].Host, b.Host)
			}
			why[b.Host] = b
		}
		if len(all) != 7+many || !why["suspended"].Suspended || why["refusing"].PassError != "refused "+cC || why["nothing-yet"].Commit != "" {
			t.Fatalf("behind C: %d workers, %+v", len(all), why)
		}
		for h, want := range map[string]string{"suspended": "suspended", "refusing": "pass error", "fetched": "applying", "fetched-early": "not fetched since", "nothing-yet": "not fetched since"} {
			if why[h].State != want {
				t.Errorf("%s behind C: state %q, want %q", h, why[h].State, want)
			}
		}
		for _, h := range []string{"via-b", "skipped-b", "rolled-back", "gone", "first-c"} {
			if _, ok := why[h]; ok {
				t.Errorf("%s listed behind C", h)
			}
		}
		if _, _, ok, err := st.BehindPage(ctx, time.Now(), time.Minute, strings.Repeat("f", 40), "", 10); ok || err != nil {
			t.Errorf("an unknown commit: ok %v, %v", ok, err)
		}
	})
}

// A decky whose latest event is a drift the agent did not repair counts as
// drifted, in the fleet summary and for its host; a later repair, or a
// decky the host no longer reports, does not.
func TestStoreDrifted(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		e := func(host string, seq uint64, decky, op, status string) report.Event {
			return report.Event{EventID: fmt.Sprintf("%s-%06d", host, seq), Seq: seq, DeckyName: decky, Operation: op, Status: status, CompletedAt: time.Now()}
		}
		runtime := map[string]report.Runtime{"d1": {State: "running"}, "d2": {State: "running"}, "d3": {State: "running"}, "d4": {State: "running"}}
		a := body("worker-a",
			e("worker-a", 1, "d1", "deploy", "succeeded"),
			e("worker-a", 2, "d1", "drift", "failed"),     // drifted
			e("worker-a", 3, "d2", "drift", "failed"),     // repaired later
			e("worker-a", 4, "d2", "repair", "succeeded"), //
			e("worker-a", 5, "d3", "drift", "succeeded"),  // drift repaired at once
			e("worker-a", 6, "gone", "drift", "failed"),   // not reported any more
			e("worker-a", 7, "d4", "drift", "failed"),     // drifted
		)
		a.Status.Runtime = runtime
		b := body("worker-b", e("worker-b", 1, "d1", "drift", "failed"))
		b.Status.Runtime = runtime
		record(t, st, a)
		record(t, st, b)
		sum, err := st.Summary(ctx, time.Now(), time.Hour)
		if err != nil || sum.Drifted != 3 {
			t.Fatalf("summary drifted %d, want 3 (%v)", sum.Drifted, err)
		}
		if n, err := st.Drifted(ctx, "worker-a"); err != nil || n != 2 {
			t.Fatalf("worker-a drifted %d, want 2 (%v)", n, err)
		}
		// worker-b repairs d1: no longer drifted.
		b = body("worker-b", e("worker-b", 2, "d1", "repair", "succeeded"))
		b.Status.Runtime = runtime
		record(t, st, b)
		if n, err := st.Drifted(ctx, "worker-b"); err != nil || n != 0 {
			t.Fatalf("worker-b drifted %d after its repair (%v)", n, err)
		}
	})
}

// The summary's newest commit is the one the fleet first saw last, even
// when a late worker applies an older one afterwards.
func TestStoreNewestCommitIsFirstSeenLast(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		t0 := time.Now().Add(-5 * time.Minute)
		for i, r := range []struct {
			host, commit string
		}{{"w1", "old"}, {"w2", "new"}, {"w3", "old"}} { // w3 catches up with the old one last
			b := body(r.host)
			b.Commit = strings.Repeat(r.commit[:1], 40)
			if _, err := st.Record(ctx, &b, "", t0.Add(time.Duration(i)*time.Minute)); err != nil {
				t.Fatal(err)
			}
		}
		sum, err := st.Summary(ctx, time.Now(), time.Hour)
		if err != nil || sum.NewestCommit != strings.Repeat("n", 40) || sum.Applied != 1 {
			t.Fatalf("newest %q applied %d (%v)", sum.NewestCommit, sum.Applied, err)
		}
	})
}

// A decommissioned worker (its last heartbeat says so) is kept with its
// history, shown as decommissioned, and leaves the fleet's counts: it is
// neither stale once silent nor behind a later commit.
func TestStoreDecommissionedHostLeavesTheFleet(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		gone, live := body("worker-gone"), body("worker-live")
		gone.Commit, gone.Decommissioned, gone.PassError = strings.Repeat("a", 40), true, "decommissioned by commit aaaaaaa"
		live.Commit = strings.Repeat("b", 40)
		// The decommissioned worker's last word is two hours old: stale
		// by age, yet it must not be counted stale nor behind.
		if _, err := st.Record(ctx, &gone, "", time.Now().Add(-2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		record(t, st, live)
		h, ok, err := st.Host(ctx, time.Now(), time.Hour, "worker-gone")
		if err != nil || !ok || !h.Decommissioned || h.Stale {
			t.Fatalf("worker-gone: %+v %v", h, err)
		}
		if h, _, _ := st.Host(ctx, time.Now(), time.Hour, "worker-live"); h.Decommissioned {
			t.Fatalf("worker-live says decommissioned: %+v", h)
		}
		sum, err := st.Summary(ctx, time.Now(), time.Hour)
		if err != nil || sum.Workers.Decommissioned != 1 || sum.Workers.Stale != 0 || sum.Workers.Fresh != 1 {
			t.Fatalf("summary workers: %+v %v", sum.Workers, err)
		}
		ro, err := st.Rollouts(ctx, time.Now(), time.Hour, 1)
		if err != nil || len(ro) != 1 || ro[0].Commit != live.Commit || ro[0].Behind != 0 || ro[0].Stale != 0 {
			t.Fatalf("rollout: %+v %v", ro, err)
		}
		// Fresh and decommissioned is not behind either.
		gone.Commit = strings.Repeat("c", 40)
		record(t, st, gone)
		live.Commit = strings.Repeat("d", 40)
		record(t, st, live)
		ro, err = st.Rollouts(ctx, time.Now(), time.Hour, 1)
		if err != nil || len(ro) != 1 || ro[0].Commit != live.Commit || ro[0].Behind != 0 {
			t.Fatalf("rollout after a new commit: %+v %v", ro, err)
		}
	})
}

// A host name that was decommissioned and reports again (a re-provisioned
// worker, whose event sequence starts at 1 again) starts a new history;
// the old one is archived under another name, not lost, and no new event
// is kept aside as a seq conflict.
func TestStoreReprovisionedHostStartsANewHistory(t *testing.T) {
	forEachStore(t, func(t *testing.T, dsn string) {
		st := openStore(t, dsn)
		ctx := context.Background()
		old := body("worker-x", hostEv("old-life", 1, "succeeded", time.Now()), hostEv("old-life", 2, "succeeded", time.Now()))
		record(t, st, old)
		last := body("worker-x", report.Event{EventID: "old-life-teardown", Seq: 3, DeckyName: "d1", Operation: "teardown", Status: "succeeded", CompletedAt: time.Now()})
		last.Decommissioned = true
		record(t, st, last)
		// The timer runs the decommissioned agent again: still the old life.
		again := body("worker-x")
		again.Decommissioned = true
		record(t, st, again)
		if hosts, err := st.Hosts(ctx, time.Now(), time.Hour); err != nil || len(hosts) != 1 || !hosts[0].Decommissioned || hosts[0].Events != 3 {
			t.Fatalf("after the decommission: %+v %v", hosts, err)
		}

		rec := record(t, st, body("worker-x", hostEv("new-life", 1, "succeeded", time.Now())))
		if len(rec.Conflicts) != 0 || rec.Added != 1 {
			t.Fatalf("the new life's first event: %+v", rec)
		}
		hosts, err := st.Hosts(ctx, time.Now(), time.Hour)
		if err != nil || len(hosts) != 2 {
			t.Fatalf("hosts: %+v %v", hosts, err)
		}
		byName := map[string]HostRow{}
		for _, h := range hosts {
			byName[h.Host] = h
		}
		if h := byName["worker-x"]; h.Decommissioned || h.Events != 1 || h.MaxSeq != 1 || h.SeqConflicts != 0 {
			t.Fatalf("the new life: %+v", h)
		}
		var archived HostRow
		for name, h := range byName {
			if strings.HasPrefix(name, "worker-x"+ArchivedSuffix) {
				archived = h
			}
		}
		if !archived.Decommissioned || archived.Events != 3 || archived.MaxSeq != 3 {
			t.Fatalf("the archived life: %+v (hosts %v)", archived, hosts)
		}
		evs, err := st.Events(ctx, EventFilter{Host: archived.Host})
		if err != nil || len(evs) != 3 {
			t.Fatalf("archived events: %v %v", evs, err)
		}
	})
}
