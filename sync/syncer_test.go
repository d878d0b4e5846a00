package sync_test

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
	fleetsync "github.com/decnet/pull-agent/sync"
)

func newSyncer(t *testing.T, log *slog.Logger, opt fleetsync.Options) *fleetsync.Syncer {
	t.Helper()
	if opt.Dir == "" {
		opt.Dir = filepath.Join(t.TempDir(), "state")
	}
	s, err := fleetsync.New(opt, log)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func TestSyncSources(t *testing.T) {
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n", "services/ssh/Dockerfile": "FROM scratch\n"})
	head := repo.Commit("first")
	daemon := gittest.Daemon(t, root)
	httpURL := gittest.HTTP(t, root, nil)
	httpsURL, ca := gittest.HTTPS(t, root, nil)

	tests := []struct {
		name   string
		remote string
		ca     []byte
	}{
		{"file URL", repo.FileURL(), nil},
		{"plain path to a bare mirror", repo.Bare, nil},
		{"git daemon", daemon + "/fleet.git", nil},
		{"http-backend over http", httpURL + "/fleet.git", nil},
		{"http-backend over https with a CA bundle", httpsURL + "/fleet.git", ca},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{tt.remote}, CABundle: tt.ca})
			snap, err := s.Sync(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			if snap.Commit != head || !snap.Fetched {
				t.Fatalf("got commit %s fetched=%v, want %s fetched", snap.Commit, snap.Fetched, head)
			}
			data, err := fs.ReadFile(snap, "fleet.yaml")
			if err != nil || string(data) != "version: 1\n" {
				t.Fatalf("fleet.yaml = %q, %v", data, err)
			}
		})
	}
}

func TestHTTPSWithoutCAIsRefused(t *testing.T) {
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	repo.Commit("first")
	url, _ := gittest.HTTPS(t, root, nil)
	s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{url + "/fleet.git"}})
	if _, err := s.Sync(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("want a certificate error, got %v", err)
	}
}

func TestNoOpSyncTransfersNothing(t *testing.T) {
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	first := repo.Commit("first")
	var uploads atomic.Int32 // POST git-upload-pack = an object negotiation
	url := gittest.HTTP(t, root, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "git-upload-pack") {
				uploads.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{url + "/fleet.git"}})
	ctx := context.Background()
	if _, err := s.Sync(ctx, ""); err != nil {
		t.Fatal(err)
	}
	before := uploads.Load()
	snap, err := s.Sync(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Fetched || snap.Commit != first || uploads.Load() != before {
		t.Fatalf("no-op sync fetched=%v commit=%s uploads %d->%d", snap.Fetched, snap.Commit, before, uploads.Load())
	}
	repo.Write(map[string]string{"hosts/a.yaml": "deckies: []\n"})
	second := repo.Commit("second")
	snap, err = s.Sync(ctx, "")
	if err != nil || !snap.Fetched || snap.Commit != second {
		t.Fatalf("after a push: fetched=%v commit=%s err=%v, want %s", snap.Fetched, snap.Commit, err, second)
	}
	if _, err := fs.ReadFile(snap, "hosts/a.yaml"); err != nil {
		t.Fatal(err)
	}
}

func TestFallbackToMirror(t *testing.T) {
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	head := repo.Commit("first")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	dead := "http://127.0.0.1:1/fleet.git"
	s := newSyncer(t, log, fleetsync.Options{Remotes: []string{dead, repo.FileURL()}})
	snap, err := s.Sync(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Commit != head || snap.Remote != repo.FileURL() {
		t.Fatalf("served by %s at %s, want the mirror %s at %s", snap.Remote, snap.Commit, repo.FileURL(), head)
	}
	if !strings.Contains(logs.String(), "fleet remote did not answer") {
		t.Errorf("the dead remote was not logged: %s", logs.String())
	}
}

// A kept clone found damaged when a new process opens it (where a no-op
// pass checks the packs' checksums instead of inflating every object) is
// removed and cloned again, whatever the damage: packs gone, one byte of a
// pack flipped (inside a blob, so only the checksum sees it before use), an
// index damaged, an object missing.
func TestCorruptCloneIsRecloned(t *testing.T) {
	flip := func(ext string) func(t *testing.T, packs []string) {
		return func(t *testing.T, packs []string) {
			p := strings.TrimSuffix(packs[0], ".pack") + ext
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x01
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, packs []string)
	}{
		{"packs deleted", func(t *testing.T, packs []string) {
			for _, p := range packs {
				os.Remove(p)
				os.Remove(strings.TrimSuffix(p, ".pack") + ".idx")
			}
		}},
		{"one byte of the pack flipped", flip(".pack")},
		{"one byte of the index flipped", flip(".idx")},
		{"index truncated", func(t *testing.T, packs []string) {
			if err := os.Truncate(strings.TrimSuffix(packs[0], ".pack")+".idx", 30); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			repo := gittest.New(t, root, "fleet")
			// Incompressible, so the flipped byte lands in a blob's data.
			repo.Write(map[string]string{"fleet.yaml": "version: 1\n", "hosts/a.yaml": "deckies: []\n", "services/ssh/decoy.bin": bigBlob(t)})
			head := repo.Commit("first")
			dir := filepath.Join(t.TempDir(), "state")
			s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir})
			if _, err := s.Sync(context.Background(), ""); err != nil {
				t.Fatal(err)
			}
			// Intact, it reopens as it is: nothing fetched.
			if snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir}).Sync(context.Background(), head); err != nil || snap.Fetched {
				t.Fatalf("an intact kept clone was not reused: %+v %v", snap, err)
			}
			packs, _ := filepath.Glob(filepath.Join(dir, "clone", "objects", "pack", "*.pack"))
			if len(packs) == 0 {
				t.Fatal("no packs in the clone")
			}
			tc.damage(t, packs)
			var logs bytes.Buffer
			s = newSyncer(t, slog.New(slog.NewTextHandler(&logs, nil)), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir})
			snap, err := s.Sync(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			if snap.Commit != head || !snap.Fetched {
				t.Fatalf("want a fresh clone of %s, got %s fetched=%v", head, snap.Commit, snap.Fetched)
			}
			if !strings.Contains(logs.String(), "corrupt") {
				t.Errorf("recovery was not logged: %s", logs.String())
			}
			if got, err := fs.ReadFile(snap, "services/ssh/decoy.bin"); err != nil || len(got) != bigBlobSize {
				t.Fatalf("decoy.bin reads %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestCredentialsNeverLogged(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	secret := "s3cr3t-token-value"
	// A token over plain http is refused before anything is sent.
	_, err := fleetsync.New(fleetsync.Options{Remotes: []string{"http://127.0.0.1:1/fleet.git"}, Dir: t.TempDir(),
		Credentials: fleetsync.Credentials{Password: secret}}, log)
	if err == nil {
		t.Fatal("want a refusal of a token over http://")
	}
	// Over https to a dead remote, the token stays out of errors and logs.
	s := newSyncer(t, log, fleetsync.Options{Remotes: []string{"https://127.0.0.1:1/fleet.git"},
		Credentials: fleetsync.Credentials{Password: secret}})
	_, err2 := s.Sync(context.Background(), "")
	if err2 == nil {
		t.Fatal("want an error from a dead remote")
	}
	for _, text := range []string{err.Error(), err2.Error(), logs.String()} {
		if strings.Contains(text, secret) {
			t.Fatalf("token leaked: %s", text)
		}
	}
}

func TestSnapshotContextHashAndMaterialize(t *testing.T) {
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	repo.Write(map[string]string{"ctx/a/Dockerfile": "FROM scratch\n", "ctx/a/sub/x": "x", "ctx/b/Dockerfile": "FROM scratch\n", "ctx/b/sub/x": "x"})
	repo.Commit("first")
	s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}})
	snap, err := s.Sync(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	ha, _ := snap.ContextHash("ctx/a")
	hb, _ := snap.ContextHash("ctx/b")
	if ha == "" || ha != hb {
		t.Fatalf("identical contexts hash differently: %s %s", ha, hb)
	}
	repo.Write(map[string]string{"ctx/b/sub/x": "y"})
	repo.Commit("change b")
	snap, _ = s.Sync(context.Background(), "")
	ha2, _ := snap.ContextHash("ctx/a")
	hb2, _ := snap.ContextHash("ctx/b")
	if ha2 != ha || hb2 == hb {
		t.Fatalf("hash must follow content only: a %s->%s b %s->%s", ha, ha2, hb, hb2)
	}
	dst := filepath.Join(t.TempDir(), "b")
	if err := snap.Materialize("ctx/b", dst); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(dst, "sub", "x")); string(data) != "y" {
		t.Fatalf("materialized content = %q", data)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:tok@example.org/fleet.git":       "https://***@example.org/fleet.git",
		"https://ghp_token@example.org/fleet.git":      "https://***@example.org/fleet.git",
		"https://user:tok%zz@example.org/fleet.git":    "https://***@example.org/fleet.git",
		"https://user:pa/ss@example.org/fleet.git":     "https://***@example.org/fleet.git",
		"https://user:p@ss/w%rd@example.org/fleet.git": "https://***@example.org/fleet.git",
		"HTTPS://user:tok@example.org/fleet.git":       "HTTPS://***@example.org/fleet.git",
		"ssh://git@example.org/fleet.git":              "ssh://git@example.org/fleet.git",
		"ssh://git:pw@example.org/fleet.git":           "ssh://***@example.org/fleet.git",
		"ssh://git:p/w@example.org/fleet.git":          "ssh://***@example.org/fleet.git",
		"git@example.org:ops/fleet.git":                "git@example.org:ops/fleet.git",
		"/srv/mirror/fleet.git":                        "/srv/mirror/fleet.git",
		"file:///srv/mirror/fleet.git":                 "file:///srv/mirror/fleet.git",
		"https://example.org/fleet.git":                "https://example.org/fleet.git",
	} {
		if got := fleetsync.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	for _, tt := range []struct{ in, secret, want string }{
		{`Get "https://u:secret@h/x": failed`, "", `Get "https://***@h/x": failed`},
		{`Get "https://u:tok%zz@h/x": invalid URL escape "%zz"`, "", `Get "https://***@h/x": invalid URL escape "%zz"`},
		{`clone https://u:pa/ss@h/x failed; retry http://v:q/r@h2/y`, "", `clone https://***@h/x failed; retry http://***@h2/y`},
		{`auth failed for token abcd1234`, "abcd1234", `auth failed for token ***`},
		{`plain text, no URL`, "", `plain text, no URL`},
	} {
		if got := fleetsync.RedactText(tt.in, tt.secret); got != tt.want {
			t.Errorf("RedactText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
