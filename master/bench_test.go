package master

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

// BenchmarkIngest posts reports of 1 and 100 lifecycle events over
// loopback HTTP to the master (validation, one SQLite transaction with
// synchronous=FULL, dedup index) and, interleaved in the same run, the
// very same requests to a handler that reads the body and does nothing.
// Metrics: events/s for each and their ratio.
func BenchmarkIngest(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			_, h := newMaster(b, Options{})
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
