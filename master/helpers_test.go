package master

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

// The PostgreSQL half of the store suite runs against a real server:
// scripts/setup.sh installs and starts Debian's postgresql and a role that
// may create databases. Each `go test` run creates its own database and
// drops it at the end; each test gets its own schema in it.
const defaultTestPostgres = "postgres://pull_agent_test:pull_agent_test@127.0.0.1:5432/postgres?sslmode=disable"

var (
	pgBase    string // DSN of this run's database; empty when unavailable
	pgErr     error
	pgSchemas atomic.Int64
)

func TestMain(m *testing.M) {
	cleanup := setupPostgres()
	code := m.Run()
	cleanup()
	os.Exit(code)
}

func setupPostgres() func() {
	admin := os.Getenv("PULL_AGENT_TEST_POSTGRES")
	if admin == "" {
		admin = defaultTestPostgres
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	db, err := sql.Open("pgx", admin)
	if err == nil {
		err = db.PingContext(ctx)
	}
	if err != nil {
		pgErr = fmt.Errorf("PostgreSQL at %s: %w (run scripts/setup.sh, or set PULL_AGENT_TEST_POSTGRES)", redactDSN(admin), err)
		return func() {}
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "pull_agent_test_" + hex.EncodeToString(rnd[:])
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		pgErr = fmt.Errorf("failed to create a throwaway database: %w", err)
		db.Close()
		return func() {}
	}
	u, _ := url.Parse(admin)
	u.Path = "/" + name
	pgBase = u.String()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		db.Close()
	}
}

// pgDSN returns the DSN of a fresh, empty schema of this run's database.
// Without PostgreSQL it skips, except under CI=true where it fails.
func pgDSN(t testing.TB) string {
	t.Helper()
	if pgBase == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and PostgreSQL is unavailable: %v", pgErr)
		}
		t.Skipf("PostgreSQL unavailable: %v", pgErr)
	}
	schema := fmt.Sprintf("t%d", pgSchemas.Add(1))
	db, err := sql.Open("pgx", pgBase)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(pgBase)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// backends is the one store suite's matrix: every test given to
// forEachStore runs on SQLite and on PostgreSQL.
var backends = []struct {
	name string
	dsn  func(testing.TB) string
}{
	{"sqlite", func(t testing.TB) string { return filepath.Join(t.TempDir(), "m.db") }},
	{"postgres", pgDSN},
}

func forEachStore(t *testing.T, f func(t *testing.T, dsn string)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b.dsn(t)) })
	}
}

func openStore(t testing.TB, dsn string) *Store {
	t.Helper()
	st, err := OpenStore(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newMaster(t testing.TB, opt Options) (*Store, *Server) {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), "m.db"))
	return st, NewServer(st, opt, slog.New(slog.DiscardHandler))
}

var open = Options{InsecureNoAuth: true}

func ev(seq uint64, decky, status string) report.Event {
	return report.Event{EventID: fmt.Sprintf("%08x-0000-4000-8000-%012d", len(decky)*7919+int(decky[len(decky)-1]), seq), Seq: seq, DeckyName: decky,
		Operation: "deploy", Status: status, CompletedAt: time.Now().UTC(), Error: map[bool]string{true: "boom"}[status == "failed"]}
}

func hostEv(host string, seq uint64, status string, at time.Time) report.Event {
	return report.Event{EventID: fmt.Sprintf("%s-%06d", host, seq), Seq: seq, DeckyName: "d1", Operation: "deploy", Status: status, CompletedAt: at}
}

func body(host string, events ...report.Event) report.Body {
	return report.Body{Heartbeat: report.Heartbeat{Host: host, HostUUID: host, AgentVersion: "t",
		Status: report.Status{Deployed: true, Runtime: map[string]report.Runtime{"d1": {State: "running", Running: true, Services: map[string]string{"ssh": "running"}}}}},
		Lifecycle: events}
}

func mustJSON(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

// do sends one request to h; token, when set, as a bearer token.
func do(t testing.TB, h http.Handler, method, path string, b io.Reader, token string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, b)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, req)
	return rr
}

func post(t testing.TB, h http.Handler, b any) *httptest.ResponseRecorder {
	t.Helper()
	return do(t, h, http.MethodPost, report.HeartbeatPath, mustJSON(b), "")
}

func decodeError(t testing.TB, rr *httptest.ResponseRecorder) ErrorBody {
	t.Helper()
	var e ErrorBody
	if err := json.Unmarshal(rr.Body.Bytes(), &e); err != nil || e.Error == "" {
		t.Fatalf("status %d: body is not a JSON error: %q", rr.Code, rr.Body)
	}
	return e
}

func record(t testing.TB, st *Store, b report.Body) Recorded {
	t.Helper()
	rec, err := st.Record(context.Background(), &b, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func seqs(rows []EventRow) string {
	var s []string
	for _, r := range rows {
		s = append(s, fmt.Sprint(r.Seq))
	}
	return strings.Join(s, ",")
}
