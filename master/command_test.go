package master

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net/http"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/decnet/pull-agent/report"
)

type syncBuffer struct {
	mu stdsync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startCommand runs `pull-agent master args…` until the test ends and
// returns its base URL, or the error it exited with at once.
func startCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- Command(ctx, args, &out, &out) }()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < 200; i++ {
		select {
		case err := <-done:
			done <- err
			return "", err
		default:
		}
		if _, addr, ok := strings.Cut(out.String(), "master listening on "); ok {
			return "http://" + strings.TrimSpace(strings.SplitN(addr, "\n", 2)[0]), nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("master did not start:\n%s", out.String())
	return "", nil
}

func runCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Command(context.Background(), args, &out, &errOut)
	return out.String(), err
}

// The master refuses to start without an authentication method, except
// on loopback with --insecure-no-auth; it refuses plain HTTP off loopback.
func TestCommandRefusesToStartWithoutAuthentication(t *testing.T) {
	db := filepath.Join(t.TempDir(), "m.db")
	tests := []struct {
		name string
		args []string
		want string // in the usage error; "" = starts
	}{
		{"no method at all", []string{"--listen", "127.0.0.1:0", "--db", db}, "no authentication method"},
		{"insecure on all interfaces", []string{"--listen", ":0", "--db", db, "--insecure-no-auth"}, "only a loopback address"},
		{"insecure on a LAN address", []string{"--listen", "192.0.2.10:0", "--db", db, "--insecure-no-auth"}, "only a loopback address"},
		{"plain HTTP off loopback", []string{"--listen", "0.0.0.0:0", "--db", db}, "in clear"},
		{"client CA without TLS", []string{"--listen", "127.0.0.1:0", "--db", db, "--client-ca", "/dev/null"}, "needs --tls-cert"},
		{"bad retain", []string{"--listen", "127.0.0.1:0", "--db", db, "--insecure-no-auth", "--retain", "age=soon"}, "--retain"},
		{"insecure on loopback", []string{"--listen", "127.0.0.1:0", "--db", db, "--insecure-no-auth"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := startCommand(t, tt.args...)
			var ue *UsageError
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("did not start: %v", err)
			case tt.want != "" && (!errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want a usage error saying %q", err, tt.want)
			}
		})
	}
	var help bytes.Buffer
	if err := Command(context.Background(), []string{"-h"}, &help, &help); !errors.Is(err, flag.ErrHelp) ||
		!strings.Contains(help.String(), "(env PULL_AGENT_INSECURE_NO_AUTH)") {
		t.Fatalf("help: %v\n%s", err, help.String())
	}
}

// token add prints a token once; the master then starts (tokens are an
// authentication method) and accepts it for its host only; token revoke
// takes effect on the running master.
func TestCommandTokens(t *testing.T) {
	db := filepath.Join(t.TempDir(), "m.db")
	tok, err := runCommand(t, "token", "add", "worker-a", "--db", db)
	tok = strings.TrimSpace(tok)
	if err != nil || !strings.HasPrefix(tok, "pam1_") {
		t.Fatalf("token add: %q %v", tok, err)
	}
	op, err := runCommand(t, "token", "add", "--operator", "alice", "--db", db)
	op = strings.TrimSpace(op)
	if err != nil {
		t.Fatal(err)
	}
	list, err := runCommand(t, "token", "list", "--db", db)
	if err != nil || !strings.Contains(list, "agent     worker-a") || !strings.Contains(list, "operator  alice") || strings.Contains(list, tok[5:]) {
		t.Fatalf("token list (must not show secrets):\n%s %v", list, err)
	}
	if _, err := runCommand(t, "token", "add", "Not A Host", "--db", db); err == nil {
		t.Fatal("a token for an invalid name")
	}
	base, err := startCommand(t, "--listen", "127.0.0.1:0", "--db", db, "--loopback-reads=false")
	if err != nil {
		t.Fatal(err)
	}
	send := func(host, token string) int {
		req, _ := http.NewRequest(http.MethodPost, base+report.HeartbeatPath, mustJSON(body(host, hostEv(host, 1, "succeeded", time.Now()))))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	get := func(token string) int {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/lifecycle", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send("worker-b", tok); code != 403 {
		t.Errorf("worker-a's token as worker-b: %d", code)
	}
	if code := send("worker-a", tok); code != 204 {
		t.Errorf("worker-a's token: %d", code)
	}
	if code := get(""); code != 401 {
		t.Errorf("unauthenticated read with --loopback-reads=false: %d", code)
	}
	if code := get(op); code != 200 {
		t.Errorf("operator read: %d", code)
	}
	if out, err := runCommand(t, "token", "revoke", "worker-a", "--db", db); err != nil || !strings.Contains(out, "revoked 1") {
		t.Fatalf("revoke: %q %v", out, err)
	}
	if code := send("worker-a", tok); code != 401 {
		t.Errorf("revoked token: %d", code)
	}
}

// --retain runs at start: old history goes.
func TestCommandRetention(t *testing.T) {
	db := filepath.Join(t.TempDir(), "m.db")
	st := openStore(t, db)
	old := time.Now().Add(-100 * 24 * time.Hour)
	b := body("worker-a", hostEv("worker-a", 1, "succeeded", old), hostEv("worker-a", 2, "succeeded", old))
	if _, err := st.Record(context.Background(), &b, "", old); err != nil {
		t.Fatal(err)
	}
	record(t, st, body("worker-a", hostEv("worker-a", 3, "succeeded", time.Now())))
	if _, err := startCommand(t, "--listen", "127.0.0.1:0", "--db", db, "--insecure-no-auth", "--retain", "90d"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if rows, _ := st.Events(context.Background(), EventFilter{}); seqs(rows) == "3" {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	rows, _ := st.Events(context.Background(), EventFilter{})
	t.Fatalf("after --retain 90d: %s", seqs(rows))
}

func TestParseRetain(t *testing.T) {
	tests := []struct {
		in   string
		want Retain
		bad  bool
	}{
		{"", Retain{}, false},
		{"90d", Retain{MaxAge: 90 * 24 * time.Hour}, false},
		{"720h", Retain{MaxAge: 720 * time.Hour}, false},
		{"100000", Retain{MaxPerHost: 100000}, false},
		{"age=30d,count=500", Retain{MaxAge: 30 * 24 * time.Hour, MaxPerHost: 500}, false},
		{"count=0", Retain{}, true},
		{"age=-1h", Retain{}, true},
		{"size=1G", Retain{}, true},
	}
	for _, tt := range tests {
		got, err := ParseRetain(tt.in)
		if (err != nil) != tt.bad || (!tt.bad && got != tt.want) {
			t.Errorf("%q: %+v %v", tt.in, got, err)
		}
	}
}

// A PostgreSQL password never reaches a log line or an error.
func TestRedactDSN(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://pa:s3cret@db.example.org:5432/master?sslmode=verify-full": "postgres://pa:xxxxx@db.example.org:5432/master?sslmode=verify-full",
		"postgresql://db.example.org/master?user=pa&password=s3cret":          "postgresql://db.example.org/master?user=pa&password=xxxxx",
		"/var/lib/pull-agent-master/master.db":                                "/var/lib/pull-agent-master/master.db",
	} {
		if got := redactDSN(in); got != want || strings.Contains(got, "s3cret") {
			t.Errorf("%s: %s", in, got)
		}
	}
	_, err := OpenStore(context.Background(), "postgres://pa:s3cret@127.0.0.1:1/master?connect_timeout=2")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error: %v", err)
	}
}
