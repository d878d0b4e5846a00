package master

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

// Two masters share one PostgreSQL behind a "load balancer" (each request
// goes to either at random) while agents report concurrently. Agents
// behave like the real one: a batch is resent until a 2xx, and the next
// batch goes only after that; on top of that, a third of the batches are
// also sent to the other master at the same moment (a retry racing a slow
// first attempt). Every event must be recorded exactly once, and each
// host's events in seq order.
func TestTwoMastersOnOnePostgresKeepExactlyOnceInOrder(t *testing.T) {
	dsn := pgDSN(t)
	var urls []string
	var stores []*Store
	for i := 0; i < 2; i++ {
		st := openStore(t, dsn) // its own pools and writers, as another process would have
		stores = append(stores, st)
		srv := httptest.NewServer(NewServer(st, Options{}, slog.New(slog.DiscardHandler)))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	const agents, perAgent = 24, 80
	tokens := make([]string, agents)
	for i := range tokens {
		var err error
		// Tokens added through one master are good on the other.
		if tokens[i], _, err = stores[i%2].AddToken(context.Background(), AgentToken, fmt.Sprintf("worker-%02d", i), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	send := func(url, token string, b report.Body) int {
		req, _ := http.NewRequest(http.MethodPost, url+report.HeartbeatPath, mustJSON(b))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	var wg stdsync.WaitGroup
	errs := make(chan error, agents)
	for a := 0; a < agents; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			host := fmt.Sprintf("worker-%02d", a)
			rng := rand.New(rand.NewPCG(uint64(a), 11))
			for seq := 1; seq <= perAgent; {
				n := min(1+rng.IntN(10), perAgent-seq+1)
				var evs []report.Event
				for i := 0; i < n; i++ {
					evs = append(evs, hostEv(host, uint64(seq+i), "succeeded", time.Now()))
				}
				b := body(host, evs...)
				first := rng.IntN(2)
				if rng.IntN(3) == 0 {
					go send(urls[1-first], tokens[a], b) // the racing duplicate
				}
				for tries := 0; ; tries++ {
					code := send(urls[(first+tries)%2], tokens[a], b)
					if code == http.StatusNoContent {
						break
					}
					if code/100 == 4 || tries > 50 {
						errs <- fmt.Errorf("%s seq %d: status %d after %d tries", host, seq, code, tries)
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
				seq += n
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Let racing duplicates land before checking.
	time.Sleep(500 * time.Millisecond)
	ctx := context.Background()
	for a := 0; a < agents; a++ {
		host := fmt.Sprintf("worker-%02d", a)
		// In insertion order (id), then as the API lists them.
		rows, err := stores[0].r.QueryContext(ctx, `SELECT seq FROM events WHERE host = $1 ORDER BY id`, host)
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for rows.Next() {
			var s int64
			_ = rows.Scan(&s)
			got = append(got, s)
		}
		rows.Close()
		if len(got) != perAgent {
			t.Fatalf("%s: %d events recorded, want exactly %d", host, len(got), perAgent)
		}
		for i, s := range got {
			if s != int64(i+1) {
				t.Fatalf("%s: recorded out of order or with holes: %v", host, got)
			}
		}
	}
	hosts, _ := stores[1].Hosts(ctx, time.Now(), time.Minute)
	for _, h := range hosts {
		if h.Events != perAgent || h.MaxSeq != perAgent || h.MissingSeqs != 0 || h.SeqConflicts != 0 {
			t.Fatalf("host counters: %+v", h)
		}
	}
	if len(hosts) != agents {
		t.Fatalf("%d hosts", len(hosts))
	}
}

// Two masters on one PostgreSQL get the first heartbeat of a
// re-provisioned worker at the same moment (a resend racing the first
// attempt). The host upsert that refuses to overwrite the decommissioned
// row still locks it, so the old life is archived exactly once and the
// new life's event is recorded once, with no seq conflict and no error.
func TestTwoMastersArchiveAReprovisionedHostOnce(t *testing.T) {
	dsn := pgDSN(t)
	stores := []*Store{openStore(t, dsn), openStore(t, dsn)}
	const hosts = 16
	for h := 0; h < hosts; h++ {
		host := fmt.Sprintf("worker-%02d", h)
		last := body(host, hostEv(host, 1, "succeeded", time.Now()), hostEv(host, 2, "succeeded", time.Now()))
		last.Decommissioned = true
		record(t, stores[h%2], last)
	}
	var wg stdsync.WaitGroup
	errs := make(chan error, 2*hosts)
	for h := 0; h < hosts; h++ {
		host := fmt.Sprintf("worker-%02d", h)
		reborn := body(host, report.Event{EventID: host + "-new-life-1", Seq: 1, DeckyName: "d1", Operation: "deploy", Status: "succeeded", CompletedAt: time.Now()})
		for _, st := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := reborn
				rec, err := st.Record(context.Background(), &b, "", time.Now())
				if err == nil && len(rec.Conflicts) != 0 {
					err = fmt.Errorf("%s: seq conflicts %+v", host, rec.Conflicts)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rows, err := stores[0].Hosts(context.Background(), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	lives := map[string]int{}
	for _, r := range rows {
		name, _, archived := strings.Cut(r.Host, ArchivedSuffix)
		switch {
		case archived && (!r.Decommissioned || r.Events != 2):
			t.Fatalf("archived life: %+v", r)
		case !archived && (r.Decommissioned || r.Events != 1 || r.SeqConflicts != 0):
			t.Fatalf("new life: %+v", r)
		}
		lives[name]++
	}
	if len(lives) != hosts {
		t.Fatalf("%d host names, want %d: %v", len(lives), hosts, lives)
	}
	for name, n := range lives {
		if n != 2 {
			t.Fatalf("%s has %d lives, want 2 (one archived, one new)", name, n)
		}
	}
}
