package master

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	stdsync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

// BenchmarkIngest posts reports of 1 and 100 lifecycle events over
// loopback HTTP to the master (validation, one transaction with
// synchronous=FULL, dedup index) and, interleaved in the same run, the
// very same requests to a handler that reads the body and does nothing.
// Metrics: events/s for each and their ratio.
func BenchmarkIngest(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			_, h := newMaster(b, open)
			real := httptest.NewServer(h)
			defer real.Close()
			noop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusNoContent)
			}))
			defer noop.Close()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			seq := uint64(0)
			next := func() []byte {
				var events []report.Event
				for i := 0; i < batch; i++ {
					seq++
					events = append(events, report.Event{EventID: fmt.Sprintf("%08x-0000-4000-8000-%012d", batch, seq), Seq: seq,
						DeckyName: fmt.Sprintf("d%03d", seq%250), Operation: "deploy", Status: "succeeded", CompletedAt: time.Now().UTC()})
				}
				data, _ := json.Marshal(body("worker-a", events...))
				return data
			}
			send := func(url string, data []byte) time.Duration {
				t0 := time.Now()
				resp, err := client.Post(url+report.HeartbeatPath, "application/json", bytes.NewReader(data))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					b.Fatalf("status %d", resp.StatusCode)
				}
				return time.Since(t0)
			}
			var tReal, tNoop time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				data := next()
				tReal += send(real.URL, data)
				tNoop += send(noop.URL, data)
			}
			events := float64(b.N * batch)
			b.ReportMetric(events/tReal.Seconds(), "master-events/s")
			b.ReportMetric(events/tNoop.Seconds(), "noop-events/s")
			b.ReportMetric(float64(tReal)/float64(tNoop), "master/noop")
		})
	}
}

// fleetLoad is a simulated fleet: hosts agents, each with its own agent
// token, sending batches of 1–50 lifecycle events (each with the
// heartbeat) and heartbeats alone, over loopback HTTP with keep-alive.
type fleetLoad struct {
	hosts    int
	tokens   []string
	seqs     []uint64
	client   *http.Client
	failures atomic.Int64
}

func newFleetLoad(b *testing.B, st *Store, hosts int) *fleetLoad {
	f := &fleetLoad{hosts: hosts, seqs: make([]uint64, hosts),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: hosts, MaxConnsPerHost: hosts}, Timeout: 60 * time.Second}}
	for i := 0; i < hosts; i++ {
		tok := ""
		if st != nil {
			var err error
			if tok, _, err = st.AddToken(context.Background(), AgentToken, fmt.Sprintf("bench-%03d", i), time.Now()); err != nil {
				b.Fatal(err)
			}
		}
		f.tokens = append(f.tokens, tok)
	}
	return f
}

// realistic event: a UUID-like id, a commit and a config hash, a note on
// some, and on the failed ones an error with container states and logs.
func (f *fleetLoad) body(rng *rand.Rand, h, n int) []byte {
	host := fmt.Sprintf("bench-%03d", h)
	evs := make([]report.Event, n)
	for i := range evs {
		f.seqs[h]++
		s := f.seqs[h]
		e := report.Event{EventID: fmt.Sprintf("%08x-%04x-4000-8000-%012x", h, s>>32, s), Seq: s, Host: host,
			DeckyName: fmt.Sprintf("decky-%02d", rng.IntN(40)), Operation: "deploy", Status: "succeeded",
			Commit: "a05fe4024f6ccfcfe2feb885a2263e40ec1b35a8", ConfigHash: "6c1e5d1f0b7a4f38c4d5a0e6b1f2c3d4e5f60718293a4b5c6d7e8f9012345678",
			StartedAt: time.Now().UTC(), CompletedAt: time.Now().UTC()}
		if rng.IntN(10) == 0 {
			e.Note = "address 198.51.100.7 (relocalized): repo pins 192.0.2.25, which is not on the local subnet 198.51.100.0/24"
		}
		if rng.IntN(20) == 0 {
			e.Status = "failed"
			e.Error = "container decky-07-http: exited (1)\n" + string(bytes.Repeat([]byte("log line: bind: address already in use\n"), 10))
		}
		evs[i] = e
	}
	data, _ := json.Marshal(body(host, evs...))
	return data
}

func (f *fleetLoad) post(url string, h int, data []byte) bool {
	req, _ := http.NewRequest(http.MethodPost, url+report.HeartbeatPath, bytes.NewReader(data))
	if f.tokens[h] != "" {
		req.Header.Set("Authorization", "Bearer "+f.tokens[h])
	}
	resp, err := f.client.Do(req)
	if err != nil {
		f.failures.Add(1)
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		f.failures.Add(1)
		return false
	}
	return true
}

type loadResult struct {
	events, requests int
	elapsed          time.Duration
	cpu              time.Duration // this process's CPU time (user+system) during the phase
	lat              []time.Duration
}

// cpuTime is the process's CPU time so far. On a shared machine the
// wall-clock rate depends on what else runs; events per CPU-second does
// not (much), so both are reported.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (r loadResult) p(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	slices.Sort(r.lat)
	return r.lat[min(len(r.lat)-1, int(q*float64(len(r.lat))))]
}

// openLoop offers rate events/s for d: every host sends a batch of 1–50
// events and, half-way to its next batch, a heartbeat alone, on a fixed
// schedule (random phase). Latency counts from the scheduled time, so a
// server that falls behind is charged for the wait (no coordinated
// omission).
func (f *fleetLoad) openLoop(url string, rate float64, d time.Duration) loadResult {
	// 25.5 events per batch on average: one batch per host every period.
	period := time.Duration(float64(time.Second) * 25.5 * float64(f.hosts) / rate)
	var start, end time.Time
	var cpu0 time.Duration
	var mu stdsync.Mutex
	var res loadResult
	var wg, ready stdsync.WaitGroup
	ready.Add(f.hosts)
	startc := make(chan struct{})
	go func() {
		ready.Wait() // the clock starts when every host has its bodies
		start = time.Now().Add(100 * time.Millisecond)
		end = start.Add(d)
		cpu0 = cpuTime()
		close(startc)
	}()
	for h := 0; h < f.hosts; h++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(h), 7))
			// Bodies are built before the clock starts, so that the load
			// generator's JSON encoding does not compete with the master.
			type post struct {
				data []byte
				n    int
			}
			var posts []post
			for k := 0; k <= int(2*d/period)+1; k++ {
				if k%2 == 0 {
					n := 1 + rng.IntN(50)
					posts = append(posts, post{f.body(rng, h, n), n})
				} else {
					posts = append(posts, post{f.body(rng, h, 0), 0})
				}
			}
			ready.Done()
			<-startc
			var lat []time.Duration
			events, reqs := 0, 0
			at := start.Add(time.Duration(rng.Int64N(int64(period))))
			for k := 0; at.Before(end) && k < len(posts); k++ {
				time.Sleep(time.Until(at))
				if f.post(url, h, posts[k].data) {
					events += posts[k].n
					reqs++
					lat = append(lat, time.Since(at))
				}
				at = at.Add(period / 2)
			}
			mu.Lock()
			res.events += events
			res.requests += reqs
			res.lat = append(res.lat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed, res.cpu = time.Since(start), cpuTime()-cpu0
	return res
}

// closedLoop has every host send batches of n events back to back for d:
// the most the master can take.
func (f *fleetLoad) closedLoop(url string, n int, d time.Duration) loadResult {
	var start, end time.Time
	var cpu0 time.Duration
	var mu stdsync.Mutex
	var res loadResult
	var wg, ready stdsync.WaitGroup
	ready.Add(f.hosts)
	startc := make(chan struct{})
	go func() {
		ready.Wait()
		start = time.Now()
		end = start.Add(d)
		cpu0 = cpuTime()
		close(startc)
	}()
	for h := 0; h < f.hosts; h++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(h), 9))
			var bodies [][]byte
			for k := 0; k < 8; k++ {
				bodies = append(bodies, f.body(rng, h, n))
			}
			ready.Done()
			<-startc
			var lat []time.Duration
			events := 0
			for k := 0; time.Now().Before(end); k++ {
				var data []byte
				if k < len(bodies) {
					data = bodies[k]
				} else {
					data = f.body(rng, h, n)
				}
				t0 := time.Now()
				if f.post(url, h, data) {
					events += n
					lat = append(lat, time.Since(t0))
				}
			}
			mu.Lock()
			res.events += events
			res.requests += len(lat)
			res.lat = append(res.lat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed, res.cpu = time.Since(start), cpuTime()-cpu0
	return res
}

func benchDuration() time.Duration {
	if v, err := time.ParseDuration(os.Getenv("PULL_AGENT_BENCH_DURATION")); err == nil {
		return v
	}
	return 8 * time.Second
}

// BenchmarkIngest500Hosts: 500 simulated hosts, each with its own agent
// token, on loopback. Same run, same load generator:
//
//   - open loop at 5,000 events/s offered (batches of 1–50 plus
//     heartbeats): events/s achieved and p50/p99 latency, against the same
//     load on a handler that only reads the body (the HTTP floor);
//   - closed loop, batches of 1–50 back to back: the most the store takes;
//   - baseline: closed loop with one event per POST (the path the issue
//     measured at 540 events/s).
//
// Run: go test -run '^$' -bench Ingest500Hosts -benchtime 1x ./master
// (PULL_AGENT_BENCH_DURATION per phase, default 8s; PULL_AGENT_BENCH_RATE).
func BenchmarkIngest500Hosts(b *testing.B) {
	const hosts = 500
	rate := 5000.0 // events/s offered in the open loop; PULL_AGENT_BENCH_RATE overrides
	if v, err := strconv.ParseFloat(os.Getenv("PULL_AGENT_BENCH_RATE"), 64); err == nil && v > 0 {
		rate = v
	}
	d := benchDuration()
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			st, err := OpenStore(context.Background(), be.dsn(b))
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			srv := httptest.NewServer(NewServer(st, Options{}, slog.New(slog.DiscardHandler)))
			defer srv.Close()
			noop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusNoContent)
			}))
			defer noop.Close()
			fl := newFleetLoad(b, st, hosts)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				open := fl.openLoop(srv.URL, rate, d)
				floor := fl.openLoop(noop.URL, rate, d)
				sat := fl.closedLoop(srv.URL, 25, d)
				single := fl.closedLoop(srv.URL, 1, d)
				if n := fl.failures.Load(); n > 0 {
					b.Fatalf("%d requests failed", n)
				}
				ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
				b.ReportMetric(float64(open.events)/open.elapsed.Seconds(), "open-events/s")
				b.ReportMetric(ms(open.p(0.50)), "open-p50-ms")
				b.ReportMetric(ms(open.p(0.99)), "open-p99-ms")
				b.ReportMetric(ms(floor.p(0.99)), "noop-p99-ms")
				b.ReportMetric(float64(sat.events)/sat.elapsed.Seconds(), "max-events/s")
				b.ReportMetric(float64(sat.events)/sat.cpu.Seconds(), "max-events/cpu-s")
				b.ReportMetric(sat.cpu.Seconds()/sat.elapsed.Seconds(), "max-cores-used")
				b.ReportMetric(ms(sat.p(0.99)), "max-p99-ms")
				b.ReportMetric(float64(single.events)/single.elapsed.Seconds(), "single-events/s")
				b.ReportMetric(float64(sat.events)/sat.elapsed.Seconds()/(float64(single.events)/single.elapsed.Seconds()), "max/single")
				b.Logf("%s: CPU this process got: open loop %.2f cores, closed loop %.2f cores (of 2)", be.name,
					open.cpu.Seconds()/open.elapsed.Seconds(), sat.cpu.Seconds()/sat.elapsed.Seconds())
				b.Logf("%s: open loop %d events %d requests in %v; p50 %v p99 %v (noop p99 %v); closed loop %d events/s p99 %v; one event per POST %d events/s",
					be.name, open.events, open.requests, open.elapsed.Round(time.Millisecond), open.p(0.5), open.p(0.99), floor.p(0.99),
					int(float64(sat.events)/sat.elapsed.Seconds()), sat.p(0.99), int(float64(single.events)/single.elapsed.Seconds()))
			}
		})
	}
}

// BenchmarkRecordBodies measures the store's write path alone (no HTTP,
// no JSON): Store.Record of the two bodies an agent sends most, from 500
// hosts, 64 at a time so that group commit fills as under load. ns/op is
// per body:
//
//   - heartbeat: a heartbeat alone (the steady state: an agent with
//     nothing to report still sends one every interval);
//   - events=1: a heartbeat with one lifecycle event.
//
// It isolates per-body statements (the host upsert and its checks) from
// the HTTP and load generator cost that BenchmarkIngest500Hosts includes.
// cpu-us/op is this process's CPU per body (with SQLite, all of it).
// Run: go test -run '^$' -bench RecordBodies -benchtime 20000x ./master
func BenchmarkRecordBodies(b *testing.B) {
	for _, events := range []int{0, 1} {
		name := "heartbeat"
		if events > 0 {
			name = fmt.Sprintf("events=%d", events)
		}
		for _, be := range backends {
			b.Run(name+"/"+be.name, func(b *testing.B) {
				st, err := OpenStore(context.Background(), be.dsn(b))
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				const hosts = 500
				var seqs [hosts]atomic.Uint64
				var next atomic.Int64
				mk := func() report.Body {
					h := int(next.Add(1) % hosts)
					host := fmt.Sprintf("bench-%03d", h)
					var evs []report.Event
					for i := 0; i < events; i++ {
						s := seqs[h].Add(1)
						evs = append(evs, report.Event{EventID: fmt.Sprintf("%08x-%04x-4000-8000-%012x", h, s>>32, s), Seq: s,
							DeckyName: "decky-01", Operation: "deploy", Status: "succeeded", CompletedAt: time.Now().UTC()})
					}
					return body(host, evs...)
				}
				for h := 0; h < hosts; h++ { // every host known: the upsert updates
					bd := mk()
					if _, err := st.Record(context.Background(), &bd, "", time.Now()); err != nil {
						b.Fatal(err)
					}
				}
				b.SetParallelism(32) // 64 writers on 2 cores
				b.ResetTimer()
				cpu0 := cpuTime()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						bd := mk()
						if _, err := st.Record(context.Background(), &bd, "", time.Now()); err != nil {
							b.Error(err)
							return
						}
					}
				})
				// This process's CPU per body: on a shared machine it moves
				// far less with the load than ns/op. SQLite's whole write
				// path runs in this process; PostgreSQL's server does not.
				b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			})
		}
	}
}

// BenchmarkStorageSize records PULL_AGENT_BENCH_EVENTS (default 1,000,000)
// realistic events from 500 hosts through Store.Record and reports the
// database size per million events (SQLite: the file after a checkpoint;
// PostgreSQL: tables, indexes and TOAST).
//
// Run: go test -run '^$' -bench StorageSize -benchtime 1x -timeout 60m ./master
func BenchmarkStorageSize(b *testing.B) {
	total := 1_000_000
	if n, err := strconv.Atoi(os.Getenv("PULL_AGENT_BENCH_EVENTS")); err == nil {
		total = n
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			dsn := be.dsn(b)
			st, err := OpenStore(context.Background(), dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			fl := newFleetLoad(b, nil, 500)
			b.ResetTimer()
			start := time.Now()
			var wg stdsync.WaitGroup
			per := total / 500
			for w := 0; w < 16; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 3))
					for h := w; h < 500; h += 16 {
						for sent := 0; sent < per; sent += 100 {
							var rb report.Body
							if err := json.Unmarshal(fl.body(rng, h, min(100, per-sent)), &rb); err != nil {
								b.Error(err)
								return
							}
							if _, err := st.Record(context.Background(), &rb, "", time.Now()); err != nil {
								b.Error(err)
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			var size int64
			if st.Postgres() {
				err = st.r.QueryRow(`SELECT pg_total_relation_size('events') + pg_total_relation_size('hosts') + pg_total_relation_size('deckies')`).Scan(&size)
			} else {
				if _, err = st.w.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err == nil {
					var fi os.FileInfo
					fi, err = os.Stat(filepath.Clean(dsn))
					if fi != nil {
						size = fi.Size()
					}
				}
			}
			if err != nil {
				b.Fatal(err)
			}
			var n int
			_ = st.r.QueryRow(`SELECT COUNT(*) FROM events`).Scan(&n)
			b.ReportMetric(float64(size)/float64(n)*1e6/(1<<20), "MiB/1M-events")
			b.ReportMetric(float64(n)/elapsed.Seconds(), "record-events/s")
			b.Logf("%s: %d events, %d bytes (%.0f bytes/event) in %v", be.name, n, size, float64(size)/float64(n), elapsed.Round(time.Second))
		})
	}
}
