package sync_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// bigBlob is incompressible content far larger than anything an
// incremental fetch of a small change should transfer.
const bigBlobSize = 256 << 10

func bigBlob(t *testing.T) string {
	t.Helper()
	b := make([]byte, bigBlobSize/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b) // text, so git treats it as a normal file
}

// signedFleet makes a fleet repository whose commits signer signs, with a
// first commit (message msg) holding the large blob a fresh clone sends
// and an incremental fetch must not send again; it returns the
// repository's root directory, the repository, the signer and that commit.
func signedFleet(t *testing.T, msg string) (string, *gittest.Repo, *gittest.Signer, string) {
	t.Helper()
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	signer := gittest.NewSSHSigner(t, "ops")
	repo.Signer = signer
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n", "services/ssh/decoy.bin": bigBlob(t)})
	return root, repo, signer, repo.Commit(msg)
}

// trustingSyncer syncs url into state, trusting only signer's commits.
func trustingSyncer(t *testing.T, url, state string, signer *gittest.Signer) *fleetsync.Syncer {
	t.Helper()
	return newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{url}, Dir: state, Trust: fleetsync.TrustOptions{SSHAllowedSigners: signer.Trust}})
}

// packCounter serves root with git http-backend and counts the bytes of
// every upload-pack response (the packs the remote sends), the ref
// advertisements (GET info/refs) and the upload-pack requests (POST).
type packCounter struct{ bytes, adverts, uploads atomic.Int64 }

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}

func (c *packCounter) serve(t *testing.T, root string) string {
	return gittest.HTTP(t, root, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "git-upload-pack") {
				w = countingWriter{w, &c.bytes}
				c.uploads.Add(1)
			}
			if strings.HasSuffix(r.URL.Path, "/info/refs") {
				c.adverts.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
}

// packs lists the kept clone's pack files.
func packs(t *testing.T, state string) []string {
	t.Helper()
	p, err := filepath.Glob(filepath.Join(state, "clone", "objects", "pack", "*.pack"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A new commit is fetched into the kept clone: the remote sends only the
// new commit's objects (not the unchanged large file again), over every
// transport, and the kept clone's first pack is kept (the same file), not
// replaced by a fresh clone.
func TestNewCommitFetchedIntoTheKeptClone(t *testing.T) {
	root, repo, signer, _ := signedFleet(t, "first")
	var counter packCounter
	httpURL := counter.serve(t, root)
	daemon := gittest.Daemon(t, root)

	tests := []struct {
		name   string
		remote string
		count  bool // the remote's bytes are counted
	}{
		{"http-backend", httpURL + "/fleet.git", true},
		{"git daemon", daemon + "/fleet.git", false},
		{"file URL", repo.FileURL(), false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			state := filepath.Join(t.TempDir(), "state")
			s := trustingSyncer(t, tt.remote, state, signer)
			b0 := counter.bytes.Load()
			first, err := s.Sync(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			if !first.Fetched || first.Incremental {
				t.Fatalf("first sync: fetched=%v incremental=%v, want a fresh clone", first.Fetched, first.Incremental)
			}
			b1, a1, u1 := counter.bytes.Load(), counter.adverts.Load(), counter.uploads.Load()
			base := packs(t, state)
			if len(base) != 1 {
				t.Fatalf("fresh clone has packs %v, want one", base)
			}
			baseInfo, err := os.Stat(base[0])
			if err != nil {
				t.Fatal(err)
			}

			repo.Write(map[string]string{"hosts/a.yaml": "deckies: []\n", "fleet.yaml": "version: 1\n# " + tt.name + "\n"})
			second := repo.Commit("second " + tt.name)
			snap, err := s.Sync(ctx, first.Commit)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Commit != second || !snap.Fetched || !snap.Incremental {
				t.Fatalf("second sync: commit %s fetched=%v incremental=%v, want %s fetched incrementally", snap.Commit, snap.Fetched, snap.Incremental, second)
			}
			if snap.Verified != first.Verified || !strings.HasPrefix(snap.Verified, "ssh:") {
				t.Fatalf("verified %q, want the signer %q", snap.Verified, first.Verified)
			}
			for name, want := range map[string]string{"hosts/a.yaml": "deckies: []\n", "fleet.yaml": "version: 1\n# " + tt.name + "\n"} {
				if got, err := fs.ReadFile(snap, name); err != nil || string(got) != want {
					t.Fatalf("%s = %q, %v", name, got, err)
				}
			}
			if got, err := fs.ReadFile(snap, "services/ssh/decoy.bin"); err != nil || len(got) != bigBlobSize {
				t.Fatalf("the unchanged large file reads %d bytes, %v", len(got), err)
			}
			// The object store grew by one pack; the first is the same file.
			now := packs(t, state)
			if len(now) != 2 {
				t.Fatalf("packs after the incremental fetch: %v, want the first and one more", now)
			}
			info, err := os.Stat(base[0])
			if err != nil || !os.SameFile(info, baseInfo) {
				t.Fatalf("the kept clone's first pack was replaced (%v)", err)
			}
			if tt.count {
				fresh, incr := b1-b0, counter.bytes.Load()-b1
				if fresh < bigBlobSize/2 || incr >= bigBlobSize/16 {
					t.Fatalf("the remote sent %d bytes for the fresh clone and %d for the new commit; want the large file once, then only the change", fresh, incr)
				}
				t.Logf("remote sent %d bytes for the clone, %d for the new commit", fresh, incr)
				// One advertisement (the ref check, whose session the
				// fetch reuses) and one upload-pack request.
				if a, u := counter.adverts.Load()-a1, counter.uploads.Load()-u1; a != 1 || u != 1 {
					t.Fatalf("the new commit cost the remote %d advertisements and %d upload-pack requests; want 1 and 1", a, u)
				}
			}
			// A new process opens and verifies what was swapped in.
			again := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{tt.remote}, Dir: state})
			if l := again.Local(); l == nil || l.Commit != second {
				t.Fatalf("reopened clone: %+v", l)
			}
			_ = i
		})
	}
}

// On the incremental path an unsigned commit and a force-push are refused
// as before, decided from the objects fetched into the copy of the kept
// clone (the remote sends only the new commits, not a fresh clone), and
// the kept clone is left as it was.
func TestIncrementalPathStillRefuses(t *testing.T) {
	tests := []struct {
		name string
		push func(r *gittest.Repo, signer *gittest.Signer, first string) string
		want error
	}{
		{"unsigned commit", func(r *gittest.Repo, _ *gittest.Signer, _ string) string {
			r.Signer = nil
			r.Write(map[string]string{"hosts/evil.yaml": "deckies: []\n"})
			return r.Commit("unsigned")
		}, fleetsync.ErrUnverified},
		{"signed commit after an unsigned one", func(r *gittest.Repo, signer *gittest.Signer, _ string) string {
			r.Signer = nil
			r.Write(map[string]string{"hosts/evil.yaml": "deckies: []\n"})
			r.Commit("unsigned")
			r.Signer = signer
			r.Write(map[string]string{"hosts/b.yaml": "deckies: []\n"})
			return r.Commit("signed on top")
		}, fleetsync.ErrUnverified},
		{"force-push of a signed commit not descending from the applied one", func(r *gittest.Repo, _ *gittest.Signer, first string) string {
			r.Reset(first + "~1")
			r.Write(map[string]string{"hosts/old.yaml": "deckies: []\n"})
			return r.Commit("rewritten")
		}, fleetsync.ErrRollback},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, repo, signer, zero := signedFleet(t, "zero")
			var counter packCounter
			url := counter.serve(t, root) + "/fleet.git"
			state := filepath.Join(t.TempDir(), "state")
			s := trustingSyncer(t, url, state, signer)
			ctx := context.Background()
			if _, err := s.Sync(ctx, ""); err != nil { // a fresh clone of depth 1
				t.Fatal(err)
			}
			// The kept clone holds what it has fetched since: zero, first.
			repo.Write(map[string]string{"hosts/a.yaml": "deckies: []\n"})
			first := repo.Commit("first")
			if snap, err := s.Sync(ctx, zero); err != nil || !snap.Incremental {
				t.Fatalf("first: %+v, %v; want an incremental fetch", snap, err)
			}
			base := packs(t, state)
			b0 := counter.bytes.Load()

			head := tt.push(repo, signer, first)
			_, err := s.Sync(ctx, first)
			var re *fleetsync.RefusedError
			if !errors.As(err, &re) || !errors.Is(err, tt.want) || re.Commit != head {
				t.Fatalf("want a refusal of %s (%v), got %v", head, tt.want, err)
			}
			if sent := counter.bytes.Load() - b0; sent >= bigBlobSize/16 {
				t.Fatalf("the refusal cost the remote %d bytes: a fresh clone, not the incremental fetch", sent)
			}
			if l := s.Local(); l == nil || l.Commit != first {
				t.Fatalf("the kept clone changed after a refusal: %+v", l)
			}
			if now := packs(t, state); len(now) != len(base) || now[0] != base[0] {
				t.Fatalf("the kept clone's packs changed after a refusal: %v -> %v", base, now)
			}
			// The refusal is remembered: asking again fetches nothing.
			b1 := counter.bytes.Load()
			if _, err := s.Sync(ctx, first); !errors.Is(err, tt.want) || counter.bytes.Load() != b1 {
				t.Fatalf("again: %v after %d more bytes", err, counter.bytes.Load()-b1)
			}
		})
	}
}

// A kept clone damaged on disk while the agent runs (objects corrupt or
// missing) makes the incremental fetch fail its verification; the agent
// then clones afresh, verifies the commit as always, and replaces the
// damaged clone.
func TestCorruptKeptCloneFallsBackToAFreshClone(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, pack string)
	}{
		{"pack bytes overwritten", func(t *testing.T, pack string) {
			f, err := os.OpenFile(pack, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			info, _ := f.Stat()
			if _, err := f.WriteAt(bytes.Repeat([]byte("x"), 4096), info.Size()/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"pack index removed", func(t *testing.T, pack string) {
			if err := os.Remove(strings.TrimSuffix(pack, ".pack") + ".idx"); err != nil {
				t.Fatal(err)
			}
		}},
		{"pack removed", func(t *testing.T, pack string) {
			if err := os.Remove(pack); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, repo, signer, first := signedFleet(t, "first")
			var counter packCounter
			url := counter.serve(t, root) + "/fleet.git"
			state := filepath.Join(t.TempDir(), "state")
			s := trustingSyncer(t, url, state, signer)
			ctx := context.Background()
			snap, err := s.Sync(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			signerName := snap.Verified
			tt.damage(t, packs(t, state)[0])

			repo.Write(map[string]string{"hosts/a.yaml": "deckies: []\n"})
			second := repo.Commit("second")
			b0 := counter.bytes.Load()
			snap, err = s.Sync(ctx, first)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Commit != second || !snap.Fetched || snap.Incremental || snap.Verified != signerName {
				t.Fatalf("commit %s fetched=%v incremental=%v verified=%q; want %s from a fresh clone verified by %q",
					snap.Commit, snap.Fetched, snap.Incremental, snap.Verified, second, signerName)
			}
			if sent := counter.bytes.Load() - b0; sent < bigBlobSize/2 {
				t.Fatalf("the remote sent %d bytes: not a fresh clone", sent)
			}
			if got, err := fs.ReadFile(snap, "services/ssh/decoy.bin"); err != nil || len(got) != bigBlobSize {
				t.Fatalf("decoy.bin reads %d bytes, %v", len(got), err)
			}
			again := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{url}, Dir: state})
			if l := again.Local(); l == nil || l.Commit != second {
				t.Fatalf("the replaced clone does not reopen: %+v", l)
			}
		})
	}
}

// A remote that answers the incremental fetch with a damaged pack (the
// ref advertisement real) gets nothing accepted from it: the agent clones
// afresh, and the commit is applied only when that clone verifies; while
// every pack is damaged, the pass fails and the kept clone stays as it
// was.
func TestDamagedPackOnTheIncrementalFetch(t *testing.T) {
	root, repo, signer, first := signedFleet(t, "first")
	var damage atomic.Int32 // how many more upload-pack answers to damage; -1: all
	url := gittest.HTTP(t, root, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !(r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "git-upload-pack")) || damage.Load() == 0 {
				h.ServeHTTP(w, r)
				return
			}
			if damage.Load() > 0 {
				damage.Add(-1)
			}
			rec := &recorder{ResponseWriter: w}
			h.ServeHTTP(rec, r)
			body := rec.buf.Bytes()
			if i := bytes.Index(body, []byte("PACK")); i >= 0 {
				for j := i + 12; j < len(body)-20; j += 7 {
					body[j] ^= 0x5a
				}
			}
			_, _ = w.Write(body)
		})
	}) + "/fleet.git"
	state := filepath.Join(t.TempDir(), "state")
	s := trustingSyncer(t, url, state, signer)
	ctx := context.Background()
	if _, err := s.Sync(ctx, ""); err != nil {
		t.Fatal(err)
	}
	repo.Write(map[string]string{"hosts/a.yaml": "deckies: []\n"})
	second := repo.Commit("second")

	damage.Store(-1)
	if snap, err := s.Sync(ctx, first); err == nil {
		t.Fatalf("every pack damaged: got commit %s, want an error", snap.Commit)
	}
	if l := s.Local(); l == nil || l.Commit != first {
		t.Fatalf("the kept clone changed: %+v", l)
	}

	damage.Store(1) // the incremental fetch's pack only
	snap, err := s.Sync(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Commit != second || snap.Incremental || !strings.HasPrefix(snap.Verified, "ssh:") {
		t.Fatalf("commit %s incremental=%v verified=%q; want %s from a verified fresh clone", snap.Commit, snap.Incremental, snap.Verified, second)
	}
}

type recorder struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (r *recorder) Write(b []byte) (int, error) { return r.buf.Write(b) }
