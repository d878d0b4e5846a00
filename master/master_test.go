package master

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/testpki"
	"github.com/decnet/pull-agent/report"
)

func TestRecordDeduplicatesAndNoticesGaps(t *testing.T) {
	st, srv := newMaster(t, open)
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
	if seqs(rows) != "1,2,4" {
		t.Fatalf("events: %+v", rows)
	}
}

// Whole-body problems are 400/413 with a JSON message and no rejected
// list; a body with malformed events (a field too long, a seq out of
// range) is a 422 verdict that names exactly those events, by event_id and
// seq, with the field and the reason. In every case nothing is recorded.
func TestBadBodiesAreRefusedWhole(t *testing.T) {
	st, srv := newMaster(t, open)
	bad := ev(2, "d2", "succeeded")
	bad.Operation = "explode"
	longErr := ev(3, "d3", "failed")
	longErr.Error = strings.Repeat("x", MaxEventError+1)
	bigSeq := ev(4, "d1", "succeeded")
	bigSeq.Seq = MaxSeq + 1
	tooMany := make([]report.Event, MaxEventsPerBody+1)
	for i := range tooMany {
		tooMany[i] = ev(uint64(i+1), "d1", "succeeded")
	}
	longPassErr := body("worker-a")
	longPassErr.PassError = strings.Repeat("e", MaxPassError+1)
	longService := body("worker-a")
	longService.Status.Runtime["d1"] = report.Runtime{State: "running", Services: map[string]string{"ssh": strings.Repeat("s", MaxShortField+1)}}
	tests := []struct {
		name     string
		body     io.Reader
		code     int
		message  string   // in the error
		rejected []uint64 // seqs named in rejected
	}{
		{"malformed JSON", strings.NewReader(`{"host": "worker-a", "lifecycle": [`), 400, "malformed report", nil},
		{"invalid host name", mustJSON(body("Worker_A")), 400, "host", nil},
		{"oversized body", strings.NewReader(`{"host": "worker-a", "pass_error": "` + strings.Repeat("x", MaxBodyBytes) + `"}`), 413, "over 4194304 bytes", nil},
		{"too many events", mustJSON(body("worker-a", tooMany...)), 400, "at most 500 per body", nil},
		{"oversized heartbeat field", mustJSON(longPassErr), 400, "pass_error: 16385 bytes, at most 16384", nil},
		{"oversized runtime field", mustJSON(longService), 400, `status.runtime["d1"].services[ssh]: 256 bytes, at most 255`, nil},
		{"one bad event among good ones", mustJSON(body("worker-a", ev(1, "d1", "succeeded"), bad)), 422, "1 of the body's lifecycle events", []uint64{2}},
		{"oversized event error", mustJSON(body("worker-a", ev(1, "d1", "succeeded"), longErr)), 422, "malformed", []uint64{3}},
		{"seq out of range", mustJSON(body("worker-a", bigSeq)), 422, "malformed", []uint64{MaxSeq + 1}},
		{"seq zero", mustJSON(body("worker-a", ev(0, "d1", "succeeded"))), 422, "malformed", []uint64{0}},
		{"negative seq", strings.NewReader(`{"host":"worker-a","lifecycle":[{"event_id":"neg-000001","seq":-1,"decky_name":"d1","operation":"deploy","status":"succeeded"}]}`), 422, "malformed", []uint64{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rr := do(t, srv, http.MethodPost, report.HeartbeatPath, tt.body, "")
			if rr.Code != tt.code {
				t.Fatalf("status %d, want %d: %s", rr.Code, tt.code, rr.Body)
			}
			e := decodeError(t, rr)
			if !strings.Contains(e.Error, tt.message) {
				t.Errorf("error %q does not say %q", e.Error, tt.message)
			}
			if len(e.Rejected) != len(tt.rejected) {
				t.Fatalf("rejected %+v, want seqs %v", e.Rejected, tt.rejected)
			}
			for i, r := range e.Rejected {
				if r.Seq != tt.rejected[i] || r.Reason == "" {
					t.Errorf("rejected[%d] = %+v, want seq %d with a reason", i, r, tt.rejected[i])
				}
			}
		})
	}
	// The rejected entry names the field and the limit.
	rr := post(t, srv, body("worker-a", longErr))
	if e := decodeError(t, rr); len(e.Rejected) != 1 || e.Rejected[0].EventID != longErr.EventID || e.Rejected[0].Seq != longErr.Seq ||
		e.Rejected[0].Field != "error" || !strings.Contains(e.Rejected[0].Reason, "error: 65537 bytes, at most 65536") {
		t.Fatalf("rejected: %+v", e.Rejected)
	}
	rows, _ := st.Events(context.Background(), EventFilter{})
	hosts, _ := st.Hosts(context.Background(), time.Now(), time.Minute)
	if len(rows) != 0 || len(hosts) != 0 {
		t.Fatalf("a refused body was half recorded: %d events, %d hosts", len(rows), len(hosts))
	}
}

func TestLifecycleFiltersAndPages(t *testing.T) {
	_, srv := newMaster(t, open)
	post(t, srv, body("worker-a", ev(1, "d1", "succeeded"), ev(2, "d2", "failed")))
	post(t, srv, body("worker-b", ev(1, "d3", "failed")))
	get := func(q string) ([]EventRow, http.Header) {
		rr := do(t, srv, http.MethodGet, "/api/v1/lifecycle?"+q, nil, "")
		var rows []EventRow
		if err := json.Unmarshal(rr.Body.Bytes(), &rows); err != nil {
			t.Fatalf("%s: %v %s", q, err, rr.Body)
		}
		return rows, rr.Header()
	}
	if r, _ := get(""); len(r) != 3 {
		t.Errorf("all: %d", len(r))
	}
	if r, _ := get("host=worker-a&status=failed"); len(r) != 1 || r[0].DeckyName != "d2" || r[0].Error != "boom" {
		t.Errorf("host+status: %+v", r)
	}
	if r, _ := get("decky=d3"); len(r) != 1 || r[0].Host != "worker-b" {
		t.Errorf("decky: %+v", r)
	}
	if r, _ := get("since=" + time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); len(r) != 0 {
		t.Errorf("since: %+v", r)
	}
	r, h := get("limit=2")
	if len(r) != 2 || h.Get("X-Next-Cursor") == "" || !strings.Contains(h.Get("Link"), `rel="next"`) {
		t.Fatalf("limit: %+v %v", r, h)
	}
	r2, h2 := get("limit=2&after=" + h.Get("X-Next-Cursor"))
	if len(r2) != 1 || r2[0].Host != "worker-b" || h2.Get("Link") != "" {
		t.Fatalf("second page: %+v %v", r2, h2)
	}
	for _, q := range []string{"limit=0", "limit=x", "after=garbage!", "order=sideways", "since=yesterday"} {
		if rr := do(t, srv, http.MethodGet, "/api/v1/lifecycle?"+q, nil, ""); rr.Code != 400 {
			t.Errorf("%s: status %d", q, rr.Code)
		} else {
			decodeError(t, rr)
		}
	}
	rr := do(t, srv, http.MethodGet, "/api/v1/deckies?host=worker-a&format=table", nil, "")
	if !strings.Contains(rr.Body.String(), "worker-a  d1") {
		t.Errorf("deckies table: %s", rr.Body)
	}
}

// "Recent failures" on the page is ordered by time across hosts.
func TestPageFailuresNewestFirstAcrossHosts(t *testing.T) {
	_, srv := newMaster(t, open)
	base := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	post(t, srv, body("worker-a", hostEv("worker-a", 1, "failed", base.Add(1*time.Minute)), hostEv("worker-a", 2, "failed", base.Add(4*time.Minute))))
	post(t, srv, body("worker-b", hostEv("worker-b", 1, "failed", base.Add(3*time.Minute))))
	post(t, srv, body("worker-c", hostEv("worker-c", 1, "failed", base.Add(2*time.Minute))))
	page := do(t, srv, http.MethodGet, "/", nil, "").Body.String()
	_, fails, _ := strings.Cut(page, `id="failures"`)
	var order []string
	for _, c := range strings.Split(fails, "<tr class=\"failed\">")[1:] {
		order = append(order, c[strings.Index(c, "worker-"):strings.Index(c, "worker-")+8])
	}
	if strings.Join(order, " ") != "worker-a worker-b worker-c worker-a" {
		t.Fatalf("failures order: %v", order)
	}
}

// Auth: without credentials nothing gets in; a token or certificate of
// host A cannot report as host B; a revoked token is refused; reading
// needs an operator token or a certificate, or loopback when allowed.
func TestAuthentication(t *testing.T) {
	st, srv := newMaster(t, Options{})
	ctx := context.Background()
	tokA, _, _ := st.AddToken(ctx, AgentToken, "worker-a", time.Now())
	tokB, _, _ := st.AddToken(ctx, AgentToken, "worker-b", time.Now())
	tokOp, _, _ := st.AddToken(ctx, OperatorToken, "alice", time.Now())
	sendAs := func(host, token string) int {
		return do(t, srv, http.MethodPost, report.HeartbeatPath, mustJSON(body(host, hostEv(host, 1, "succeeded", time.Now()))), token).Code
	}
	read := func(path, token string) *httptest.ResponseRecorder {
		return do(t, srv, http.MethodGet, path, nil, token)
	}
	tests := []struct {
		name string
		got  int
		want int
	}{
		{"unauthenticated POST", sendAs("worker-a", ""), 401},
		{"malformed Authorization", basicAuth(t, srv), 401},
		{"unknown token", sendAs("worker-a", "pam1_000000000000_AAAA"), 401},
		{"A's token reporting as B", sendAs("worker-b", tokA), 403},
		{"operator token reporting", sendAs("worker-a", tokOp), 403},
		{"A's token reporting as A", sendAs("worker-a", tokA), 204},
		{"B's token reporting as B", sendAs("worker-b", tokB), 204},
		{"unauthenticated GET of the API", read("/api/v1/hosts", "").Code, 401},
		{"unauthenticated GET of lifecycle", read("/api/v1/lifecycle", "").Code, 401},
		{"unauthenticated GET of the page", read("/", "").Code, 401},
		{"agent token reading", read("/api/v1/hosts", tokA).Code, 403},
		{"operator token reading", read("/api/v1/hosts", tokOp).Code, 200},
		{"operator token reading the page", read("/", tokOp).Code, 200},
		{"health needs nothing", read("/healthz", "").Code, 204},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, tt.got, tt.want)
		}
	}
	// Clear JSON bodies, and a challenge on 401.
	rr := read("/api/v1/hosts", "")
	if e := decodeError(t, rr); !strings.Contains(e.Error, "authentication required") || !strings.HasPrefix(rr.Header().Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("401 body %q header %q", e.Error, rr.Header().Get("WWW-Authenticate"))
	}
	rr = do(t, srv, http.MethodPost, report.HeartbeatPath, mustJSON(body("worker-b")), tokA)
	if e := decodeError(t, rr); !strings.Contains(e.Error, `this token is for host "worker-a", not "worker-b"`) {
		t.Errorf("403 body %q", e.Error)
	}
	rows, _ := st.Events(ctx, EventFilter{})
	if len(rows) != 2 || rows[0].Host != "worker-a" || rows[1].Host != "worker-b" {
		t.Fatalf("recorded: %+v", rows)
	}
	if hosts, _ := st.Hosts(ctx, time.Now(), time.Minute); !strings.HasPrefix(hosts[0].Identity, "token ") {
		t.Errorf("identity of a token report: %q", hosts[0].Identity)
	}
	// Revoked: refused from then on.
	if n, _ := st.RevokeTokens(ctx, AgentToken, "worker-a", "", time.Now()); n != 1 {
		t.Fatal("revoke")
	}
	if code := sendAs("worker-a", tokA); code != 401 {
		t.Errorf("revoked token: status %d, want 401", code)
	}
	if code := sendAs("worker-b", tokB); code != 204 {
		t.Errorf("another host's token after a revoke: status %d", code)
	}

	// Loopback readers, when the master trusts loopback.
	loop := NewServer(st, Options{LoopbackReaders: true}, srv.log)
	req := httptest.NewRequest(http.MethodGet, "/api/v1/hosts", nil)
	req.RemoteAddr = "127.0.0.1:40000"
	rr = httptest.NewRecorder()
	loop.ServeHTTP(rr, req)
	if rr.Code != 200 {
		t.Errorf("loopback reader: status %d", rr.Code)
	}
	req = httptest.NewRequest(http.MethodPost, report.HeartbeatPath, mustJSON(body("worker-a")))
	req.RemoteAddr = "127.0.0.1:40000"
	rr = httptest.NewRecorder()
	loop.ServeHTTP(rr, req)
	if rr.Code != 401 {
		t.Errorf("loopback never exempts reports: status %d", rr.Code)
	}
}

// With TLS and client CAs the master records the certificate's identity
// and refuses a report whose claimed host is another one; a SAN counts
// like the CN; a certificate reads.
func TestClientCertificateIdentity(t *testing.T) {
	ca := testpki.NewCA(t)
	sanRoot, sanCert := sanCA(t, "agent certificate", "worker-c")
	pool := ca.Pool.Clone()
	pool.AddCert(sanRoot)
	st, handler := newMaster(t, Options{})
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven, Certificates: []tls.Certificate{ca.Issue(t, "master", true).TLS}}
	srv.StartTLS()
	defer srv.Close()
	client := func(cert tls.Certificate) *http.Client {
		var certs []tls.Certificate
		if cert.Certificate != nil {
			certs = []tls.Certificate{cert}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: certs}}}
	}
	send := func(c *http.Client, claimed string) int {
		resp, err := c.Post(srv.URL+report.HeartbeatPath, "application/json", mustJSON(body(claimed, hostEv(claimed, 1, "succeeded", time.Now()))))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	a := client(ca.Issue(t, "worker-a", false).TLS)
	if code := send(a, "worker-b"); code != http.StatusForbidden {
		t.Fatalf("worker-a's certificate claiming worker-b: status %d, want 403", code)
	}
	if rows, _ := st.Events(context.Background(), EventFilter{}); len(rows) != 0 {
		t.Fatal("a refused impersonation was recorded")
	}
	if code := send(a, "worker-a"); code != http.StatusNoContent {
		t.Fatalf("matching identity: status %d", code)
	}
	hosts, _ := st.Hosts(context.Background(), time.Now(), time.Minute)
	if len(hosts) != 1 || hosts[0].Identity != "worker-a" {
		t.Fatalf("identity not recorded: %+v", hosts)
	}
	// A certificate whose CN is something else but whose SAN is the host.
	if code := send(client(sanCert), "worker-c"); code != http.StatusNoContent {
		t.Fatalf("SAN identity: status %d", code)
	}
	if code := send(client(tls.Certificate{}), "worker-a"); code != http.StatusUnauthorized {
		t.Fatalf("no certificate, no token: status %d", code)
	}
	resp, err := a.Get(srv.URL + "/api/v1/hosts")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a client certificate reads: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}

// sanCA is a second CA whose client certificate carries a CN that is
// not a host and the host as a DNS SAN (testpki sets only the CN).
func sanCA(t *testing.T, cn, san string) (*x509.Certificate, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "san CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{san},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return caCert, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func basicAuth(t *testing.T, h http.Handler) int {
	req := httptest.NewRequest(http.MethodPost, report.HeartbeatPath, mustJSON(body("worker-a")))
	req.Header.Set("Authorization", "Basic d29ya2VyLWE6eA==")
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req)
	return rr.Code
}

// With authentication off (loopback only), credentials are not even read:
// an agent whose token is stale still reports.
func TestInsecureNoAuthIgnoresCredentials(t *testing.T) {
	_, srv := newMaster(t, open)
	rr := do(t, srv, http.MethodPost, report.HeartbeatPath, mustJSON(body("worker-a", ev(1, "d1", "succeeded"))), "pam1_000000000000_stale")
	if rr.Code != http.StatusNoContent {
		t.Fatalf("status %d: %s", rr.Code, rr.Body)
	}
}
