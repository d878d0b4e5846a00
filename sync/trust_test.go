package sync_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
	fleetsync "github.com/decnet/pull-agent/sync"
)

func initRepo(t *testing.T) (*gittest.Repo, string) {
	t.Helper()
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	return repo, root
}

func refused(t *testing.T, err error, want string) {
	t.Helper()
	var re *fleetsync.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("want a refusal containing %q, got %v", want, err)
	}
	if !strings.Contains(re.Error(), want) {
		t.Fatalf("refusal %q does not say %q", re.Error(), want)
	}
}

func TestSignedCommits(t *testing.T) {
	for _, kind := range []string{"gpg", "ssh"} {
		t.Run(kind, func(t *testing.T) {
			repo, _ := initRepo(t)
			signer := gittest.NewSSHSigner(t, "ops")
			opt := fleetsync.TrustOptions{SSHAllowedSigners: signer.Trust}
			if kind == "gpg" {
				signer = gittest.NewGPGSigner(t, "ops")
				opt = fleetsync.TrustOptions{GPGKeyRing: signer.Trust}
			}
			ctx := context.Background()
			newS := func() *fleetsync.Syncer {
				return newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Trust: opt})
			}

			repo.Signer = signer
			repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
			c1 := repo.Commit("signed 1")
			s := newS()
			snap, err := s.Sync(ctx, "")
			if err != nil {
				t.Fatalf("signed head refused: %v", err)
			}
			if snap.Commit != c1 || !strings.Contains(snap.Signer, "ops") {
				t.Fatalf("commit %s signer %q", snap.Commit, snap.Signer)
			}

			// An unsigned head is refused, and nothing is swapped in.
			repo.Signer = nil
			repo.Write(map[string]string{"a": "1"})
			c2 := repo.Commit("unsigned")
			_, err = s.Sync(ctx, c1)
			refused(t, err, "it is not signed")
			if l := s.Local(); l == nil || l.Commit != c1 {
				t.Fatalf("a refused commit replaced the local snapshot")
			}

			// Signed again on top: the unsigned commit in the middle is
			// still refused, since every new commit is checked.
			repo.Signer = signer
			repo.Write(map[string]string{"b": "1"})
			c3 := repo.Commit("signed 3")
			_, err = newS().Sync(ctx, c1)
			refused(t, err, "commit "+c2[:12]+" (one of the 2 new since "+c1[:12]+") is not signed")

			// From c2 on (as if an operator had accepted it), c3 alone is new and signed.
			snap, err = newS().Sync(ctx, c2)
			if err != nil || snap.Commit != c3 {
				t.Fatalf("signed c3 after c2: %v", err)
			}

			// A commit signed by a key nobody trusts is refused.
			repo.Signer = gittest.NewSSHSigner(t, "intruder")
			if kind == "gpg" {
				repo.Signer = gittest.NewGPGSigner(t, "intruder")
			}
			repo.Write(map[string]string{"c": "1"})
			repo.Commit("signed by an intruder")
			_, err = newS().Sync(ctx, c3)
			refused(t, err, "it")
			if !strings.Contains(err.Error(), "not an allowed signer") && !strings.Contains(err.Error(), "not by a trusted, valid key") {
				t.Fatalf("want an untrusted-signer refusal, got %v", err)
			}
		})
	}
}

func TestAntiRollback(t *testing.T) {
	repo, root := initRepo(t)
	ctx := context.Background()
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	c1 := repo.Commit("one")
	repo.Write(map[string]string{"a": "1"})
	c2 := repo.Commit("two")

	// Force-push: c2 is replaced by a rewritten c2'.
	repo.Reset(c1)
	repo.Write(map[string]string{"a": "rewritten"})
	c2b := repo.Commit("two, rewritten")
	_, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}}).Sync(ctx, c2)
	refused(t, err, "does not descend from the last applied commit "+c2[:12])

	// The operator's explicit override accepts it.
	snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, AllowRollback: true}).Sync(ctx, c2)
	if err != nil || snap.Commit != c2b {
		t.Fatalf("override: %v", err)
	}

	// A stale mirror (still at c1) must not roll a worker at c2b back.
	mirror := filepath.Join(root, "mirror.git")
	gittest.Git(t, root, "clone", "-q", "--bare", repo.Bare, mirror)
	gittest.Git(t, mirror, "update-ref", "refs/heads/main", c1)
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{"http://127.0.0.1:1/dead.git", mirror}}).Sync(ctx, c2b)
	refused(t, err, "does not descend")

	// A descendant far down the history is found by deepening the clone.
	for i := 0; i < 40; i++ {
		repo.Write(map[string]string{"n": strings.Repeat("x", i+1)})
		repo.Commit("more")
	}
	if _, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}}).Sync(ctx, c2b); err != nil {
		t.Fatalf("a descendant 40 commits later was refused: %v", err)
	}
}

func TestTokenAuthAndNoTokenInLogs(t *testing.T) {
	repo, root := initRepo(t)
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	head := repo.Commit("one")
	const token = "ghp_s3cr3tTOKENvalue1234567890"
	url, ca := gittest.HTTPS(t, root, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "x-access-token" || p != token {
				w.Header().Set("WWW-Authenticate", `Basic realm="fleet"`)
				http.Error(w, "authentication required", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()

	s := newSyncer(t, log, fleetsync.Options{Remotes: []string{url + "/fleet.git"}, CABundle: ca})
	_, errNoAuth := s.Sync(ctx, "")
	if errNoAuth == nil {
		t.Fatal("anonymous clone of a protected remote succeeded")
	}
	s = newSyncer(t, log, fleetsync.Options{Remotes: []string{url + "/fleet.git"}, CABundle: ca,
		Credentials: fleetsync.Credentials{Username: "x-access-token", Password: "wrong-" + token}})
	_, errWrong := s.Sync(ctx, "")
	if errWrong == nil {
		t.Fatal("a wrong token was accepted")
	}
	s = newSyncer(t, log, fleetsync.Options{Remotes: []string{url + "/fleet.git"}, CABundle: ca,
		Credentials: fleetsync.Credentials{Username: "x-access-token", Password: token}})
	snap, err := s.Sync(ctx, "")
	if err != nil || snap.Commit != head {
		t.Fatalf("token auth: %v", err)
	}
	// A token in the URL is refused at start, without echoing it.
	withURL := strings.Replace(url, "https://", "https://x-access-token:"+token+"@", 1) + "/fleet.git"
	_, errURL := fleetsync.New(fleetsync.Options{Remotes: []string{withURL}, Dir: t.TempDir(), CABundle: ca}, log)
	var ue *fleetsync.CredentialsInURLError
	if !errors.As(errURL, &ue) {
		t.Fatalf("a token in the URL was not refused: %v", errURL)
	}
	for _, text := range []string{logs.String(), errNoAuth.Error(), errWrong.Error(), snap.Remote, errString(errURL)} {
		if strings.Contains(text, token) {
			t.Fatalf("the token leaked: %s", text)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestSSHStrictHostKeys(t *testing.T) {
	repo, root := initRepo(t)
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	head := repo.Commit("one")
	srv := gittest.NewSSHServer(t, root)
	ctx := context.Background()
	creds := fleetsync.Credentials{SSHKeyFile: srv.ClientKey, SSHKnownHostsFile: srv.KnownHosts}

	// The server offers ed25519 and ECDSA host keys; known_hosts holding
	// either one alone is enough, as with OpenSSH.
	snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{srv.URL("fleet.git")}, Credentials: creds}).Sync(ctx, "")
	if err != nil || snap.Commit != head {
		t.Fatalf("ssh clone with only the ed25519 host key in known_hosts: %v", err)
	}
	ecdsaOnly := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(ecdsaOnly, []byte(srv.KnownHostsLine(srv.ECDSAHostKey)), 0o600)
	snap, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{srv.URL("fleet.git")},
		Credentials: fleetsync.Credentials{SSHKeyFile: srv.ClientKey, SSHKnownHostsFile: ecdsaOnly}}).Sync(ctx, "")
	if err != nil || snap.Commit != head {
		t.Fatalf("ssh clone with only the ECDSA host key in known_hosts: %v", err)
	}

	// Unknown host: an empty known_hosts file.
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	creds.SSHKnownHostsFile = empty
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{srv.URL("fleet.git")}, Credentials: creds}).Sync(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "is not in "+empty) {
		t.Fatalf("an unknown host key must be refused, got %v", err)
	}

	// Changed host key: known_hosts names another key for this address.
	other := gittest.NewSSHServer(t, root)
	changed := filepath.Join(t.TempDir(), "known_hosts")
	data, _ := os.ReadFile(other.KnownHosts)
	_, otherPort, _ := strings.Cut(other.Addr, ":")
	_, port, _ := strings.Cut(srv.Addr, ":")
	os.WriteFile(changed, []byte(strings.Replace(string(data), ":"+otherPort+" ", ":"+port+" ", 1)), 0o600)
	creds.SSHKnownHostsFile = changed
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{srv.URL("fleet.git")}, Credentials: creds}).Sync(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "CHANGED") {
		t.Fatalf("a changed host key must be refused, got %v", err)
	}
	// A wrong ECDSA key alone is refused too (not silently matched by the
	// genuine ed25519 key the server also has).
	wrongECDSA := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(wrongECDSA, []byte(srv.KnownHostsLine(other.ECDSAHostKey)), 0o600)
	creds.SSHKnownHostsFile = wrongECDSA
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{srv.URL("fleet.git")}, Credentials: creds}).Sync(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "CHANGED") {
		t.Fatalf("a wrong ECDSA host key must be refused, got %v", err)
	}

	// Without a known_hosts file SSH is not even attempted.
	if _, err := fleetsync.New(fleetsync.Options{Remotes: []string{srv.URL("fleet.git")}, Dir: t.TempDir(),
		Credentials: fleetsync.Credentials{SSHKeyFile: srv.ClientKey}}, quietLog()); err == nil || !strings.Contains(err.Error(), "known_hosts") {
		t.Fatalf("want a missing known_hosts error, got %v", err)
	}
}

func TestExplicitProxy(t *testing.T) {
	repo, root := initRepo(t)
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	head := repo.Commit("one")
	target := gittest.HTTP(t, root, nil)
	var proxied atomic.Int32
	proxy := gittest.HTTP(t, root, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			proxied.Add(1)
			u, _ := url.Parse(target)
			rp := httputil.NewSingleHostReverseProxy(u)
			r.URL.Scheme, r.URL.Host = u.Scheme, u.Host
			rp.ServeHTTP(w, r)
		})
	})
	s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{target + "/fleet.git"}, Proxy: proxy})
	snap, err := s.Sync(context.Background(), "")
	if err != nil || snap.Commit != head {
		t.Fatalf("sync through the proxy: %v", err)
	}
	if proxied.Load() == 0 {
		t.Fatal("no request went through the proxy")
	}
}

func TestRefSelection(t *testing.T) {
	repo, _ := initRepo(t)
	ctx := context.Background()
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	c1 := repo.Commit("one")
	gittest.Git(t, repo.Work, "tag", "-a", "-m", "release 1", "v1")
	gittest.Git(t, repo.Work, "push", "-q", "origin", "v1")
	repo.Write(map[string]string{"a": "1"})
	c2 := repo.Commit("two")
	repo.Write(map[string]string{"a": "2"})
	repo.Commit("three")

	snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Ref: "refs/tags/v1"}).Sync(ctx, "")
	if err != nil || snap.Commit != c1 {
		t.Fatalf("annotated tag: got %v %v, want %s", snapCommit(snap), err, c1)
	}
	snap, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Pin: c2}).Sync(ctx, "")
	if err != nil || snap.Commit != c2 {
		t.Fatalf("pinned commit: got %v %v, want %s", snapCommit(snap), err, c2)
	}
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Pin: strings.Repeat("ab", 20)}).Sync(ctx, "")
	refused(t, err, "not in the history")
}

func snapCommit(s *fleetsync.Snapshot) string {
	if s == nil {
		return "<nil>"
	}
	return s.Commit
}

// The local clone's size does not grow with the number of passes.
func TestCloneSizeIsBounded(t *testing.T) {
	repo, _ := initRepo(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir})
	ctx := context.Background()
	var after10 int64
	applied := ""
	for i := 1; i <= 200; i++ {
		repo.Write(map[string]string{"fleet.yaml": "version: 1\n", "hosts/a.yaml": "deckies: []\n# pass " + strings.Repeat("x", i) + "\n"})
		repo.Commit("commit")
		snap, err := s.Sync(ctx, applied)
		if err != nil {
			t.Fatal(err)
		}
		applied = snap.Commit
		if i == 10 {
			after10 = dirSize(t, dir)
		}
	}
	after200 := dirSize(t, dir)
	t.Logf("clone size after 10 commits: %d bytes, after 200: %d bytes", after10, after200)
	// Content grows by ~190 bytes; allow pack overhead, not history.
	if after200 > after10+16*1024 {
		t.Fatalf("clone grew from %d to %d bytes over 190 commits", after10, after200)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func TestInterruptedCloneLeftoversAreRemoved(t *testing.T) {
	repo, _ := initRepo(t)
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	head := repo.Commit("one")
	dir := filepath.Join(t.TempDir(), "state")
	half := filepath.Join(dir, "clone.tmp-123456")
	os.MkdirAll(filepath.Join(half, "objects"), 0o700)
	os.WriteFile(filepath.Join(half, "objects", "junk"), []byte("half a pack"), 0o600)
	var logs bytes.Buffer
	s := newSyncer(t, slog.New(slog.NewTextHandler(&logs, nil)), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir})
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Fatal("the half-written clone was not removed")
	}
	if !strings.Contains(logs.String(), "interrupted fetch") {
		t.Errorf("removal not logged: %s", logs.String())
	}
	if snap, err := s.Sync(context.Background(), ""); err != nil || snap.Commit != head {
		t.Fatal(err)
	}
}
