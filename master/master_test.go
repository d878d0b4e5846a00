package master

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/testpki"
	"github.com/decnet/pull-agent/report"
)

func newMaster(t testing.TB, opt Options) (*Store, *Server) {
	t.Helper()
	st, err := OpenStore(context.Background(), filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, NewServer(st, opt, slog.New(slog.DiscardHandler))
}

func ev(seq uint64, decky, status string) report.Event {
	return report.Event{EventID: fmt.Sprintf("%08x-0000-4000-8000-%012d", len(decky)*7919+int(decky[len(decky)-1]), seq), Seq: seq, DeckyName: decky,
		Operation: "deploy", Status: status, CompletedAt: time.Now().UTC(), Error: map[bool]string{true: "boom"}[status == "failed"]}
}

func body(host string, events ...report.Event) report.Body {
	return report.Body{Heartbeat: report.Heartbeat{Host: host, HostUUID: host, AgentVersion: "t",
		Status: report.Status{Deployed: true, Runtime: map[string]report.Runtime{"d1": {State: "running", Running: true, Services: map[string]string{"ssh": "running"}}}}},
		Lifecycle: events}
}

func post(t *testing.T, h http.Handler, b any) *httptest.ResponseRecorder {
	t.Helper()
	data, _ := json.Marshal(b)
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest(http.MethodPost, report.HeartbeatPath, bytes.NewReader(data)))
	return rr
}

func TestRecordDeduplicatesAndNoticesGaps(t *testing.T) {
	st, srv := newMaster(t, Options{})
	for _, b := range []report.Body{
		body("worker-a", ev(1, "d1", "succeeded"), ev(2, "d2", "failed")),
		body("worker-a", ev(2, "d2", "failed")), // a resend after a lost ack
		body("worker-a", ev(4, "d1", "succeeded")),
	} {
		if rr := post(t, srv, b); rr.Code != http.StatusNoContent {
			t.Fatalf("status %d: %s", rr.Code, rr.Body)
		}
	}
	rows, _ := st.Events(context.Background(), EventFilter{Host: "worker-a"})
	if len(rows) != 3 || rows[0].Seq != 1 || rows[1].Seq != 2 || rows[2].Seq != 4 {
		t.Fatalf("events: %+v", rows)
	}
	hosts, _ := st.Hosts(context.Background(), time.Now(), time.Minute)
	if len(hosts) != 1 || hosts[0].Events != 3 || hosts[0].MaxSeq != 4 || hosts[0].MissingSeqs != 1 || hosts[0].Stale {
		t.Fatalf("host: %+v", hosts)
	}
	stale, _ := st.Hosts(context.Background(), time.Now().Add(time.Hour), time.Minute)
	if !stale[0].Stale {
		t.Error("a host silent for an hour is not stale")
	}
}

func TestBadBodiesAreRefusedWhole(t *testing.T) {
	st, srv := newMaster(t, Options{})
	bad := ev(2, "d2", "succeeded")
	bad.Operation = "explode"
	tests := []struct {
		name string
		body io.Reader
		code int
	}{
		{"malformed JSON", strings.NewReader(`{"host": "worker-a", "lifecycle": [`), 400},
		{"one bad event among good ones", mustJSON(body("worker-a", ev(1, "d1", "succeeded"), bad)), 400},
		{"invalid host name", mustJSON(body("Worker_A")), 400},
		{"oversized", strings.NewReader(`{"host": "worker-a", "pass_error": "` + strings.Repeat("x", MaxBodyBytes) + `"}`), 413},
	}
	for _, tt := range tests {
		rr := httptest.NewRecorder()
		srv.ServeHTTP(rr, httptest.NewRequest(http.MethodPost, report.HeartbeatPath, tt.body))
		if rr.Code != tt.code {
			t.Errorf("%s: status %d, want %d", tt.name, rr.Code, tt.code)
		}
	}
	rows, _ := st.Events(context.Background(), EventFilter{})
	hosts, _ := st.Hosts(context.Background(), time.Now(), time.Minute)
	if len(rows) != 0 || len(hosts) != 0 {
		t.Fatalf("a refused body was half recorded: %d events, %d hosts", len(rows), len(hosts))
	}
}

func mustJSON(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

func TestLifecycleFilters(t *testing.T) {
	_, srv := newMaster(t, Options{})
	post(t, srv, body("worker-a", ev(1, "d1", "succeeded"), ev(2, "d2", "failed")))
	post(t, srv, body("worker-b", ev(1, "d3", "failed")))
	get := func(q string) []EventRow {
		rr := httptest.NewRecorder()
		srv.ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/api/v1/lifecycle?"+q, nil))
		var rows []EventRow
		if err := json.Unmarshal(rr.Body.Bytes(), &rows); err != nil {
			t.Fatalf("%s: %v %s", q, err, rr.Body)
		}
		return rows
	}
	if n := len(get("")); n != 3 {
		t.Errorf("all: %d", n)
	}
	if r := get("host=worker-a&status=failed"); len(r) != 1 || r[0].DeckyName != "d2" || r[0].Error != "boom" {
		t.Errorf("host+status: %+v", r)
	}
	if r := get("decky=d3"); len(r) != 1 || r[0].Host != "worker-b" {
		t.Errorf("decky: %+v", r)
	}
	if r := get("since=" + time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); len(r) != 0 {
		t.Errorf("since: %+v", r)
	}
	if r := get("limit=1"); len(r) != 1 {
		t.Errorf("limit: %+v", r)
	}
	rr := httptest.NewRecorder()
	srv.ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/api/v1/deckies?host=worker-a&format=table", nil))
	if !strings.Contains(rr.Body.String(), "worker-a  d1") {
		t.Errorf("deckies table: %s", rr.Body)
	}
}

// With TLS and client CAs the master records the certificate's identity
// and refuses a report whose claimed host is another one.
func TestClientCertificateIdentity(t *testing.T) {
	ca := testpki.NewCA(t)
	st, handler := newMaster(t, Options{RequireClientCert: true})
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert, Certificates: []tls.Certificate{ca.Issue(t, "master", true).TLS}}
	srv.StartTLS()
	defer srv.Close()
	client := func(cn string) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{ca.Issue(t, cn, false).TLS}}}}
	}
	send := func(c *http.Client, claimed string) int {
		resp, err := c.Post(srv.URL+report.HeartbeatPath, "application/json", mustJSON(body(claimed, ev(1, "d1", "succeeded"))))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send(client("worker-a"), "worker-b"); code != http.StatusForbidden {
		t.Fatalf("worker-a's certificate claiming worker-b: status %d, want 403", code)
	}
	if rows, _ := st.Events(context.Background(), EventFilter{}); len(rows) != 0 {
		t.Fatal("a refused impersonation was recorded")
	}
	if code := send(client("worker-a"), "worker-a"); code != http.StatusNoContent {
		t.Fatalf("matching identity: status %d", code)
	}
	hosts, _ := st.Hosts(context.Background(), time.Now(), time.Minute)
	if len(hosts) != 1 || hosts[0].Identity != "worker-a" {
		t.Fatalf("identity not recorded: %+v", hosts)
	}
	// No certificate at all: the TLS handshake itself fails.
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}
	if _, err := plain.Post(srv.URL+report.HeartbeatPath, "application/json", mustJSON(body("worker-a"))); err == nil {
		t.Fatal("a report without a client certificate got through")
	}
}
