package sync_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// signerOf makes a signer of the kind and the trust options naming it.
func signerOf(t *testing.T, kind, name string) (*gittest.Signer, fleetsync.TrustOptions) {
	t.Helper()
	if kind == "gpg" {
		s := gittest.NewGPGSigner(t, name)
		return s, fleetsync.TrustOptions{GPGKeyRing: s.Trust}
	}
	s := gittest.NewSSHSigner(t, name)
	return s, fleetsync.TrustOptions{SSHAllowedSigners: s.Trust}
}

// commits makes n commits on the current branch, each changing file.
func commits(repo *gittest.Repo, n int, file, msg string) []string {
	var out []string
	for i := 0; i < n; i++ {
		repo.Write(map[string]string{file: fmt.Sprintf("%s %d\n", msg, i)})
		out = append(out, repo.Commit(fmt.Sprintf("%s %d", msg, i)))
	}
	return out
}

// Too lenient, before: a signed merge of a side branch longer than the
// first shallow clone (16) was accepted once the last applied commit was
// found, although the side branch's oldest commits were unsigned. Every
// commit reachable from the head and not from the last applied commit is
// new, and must be verified.
//
// Served over smart HTTP (git http-backend) and git daemon, so deepening a
// shallow clone is shown against real servers. Over HTTP the server first
// refuses to deepen: the commit is refused (incomplete history) and nothing
// is swapped in; that refusal is not remembered, and once the server
// serves the history the exact set is checked.
func TestSignedMergeOfPartlyUnsignedSideBranchIsRefused(t *testing.T) {
	for _, kind := range []string{"ssh", "gpg"} {
		t.Run(kind, func(t *testing.T) {
			repo, root := initRepo(t)
			signer, trust := signerOf(t, kind, "ops")
			repo.Signer = signer
			repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
			repo.Commit("base")
			applied := commits(repo, 3, "hosts/a.yaml", "main")[2]

			repo.Branch("side", applied)
			repo.Signer = nil
			unsigned := commits(repo, 4, "side.txt", "unsigned side")
			repo.Signer = signer
			commits(repo, 20, "side.txt", "signed side")
			repo.Checkout("main")
			merge := repo.Merge("side", "merge side")

			ctx := context.Background()
			var refuseDeepen atomic.Bool
			remote := gittest.Daemon(t, root) + "/fleet.git"
			if kind == "ssh" {
				refuseDeepen.Store(true)
				remote = gittest.HTTP(t, root, func(h http.Handler) http.Handler {
					return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if r.Method == http.MethodPost && refuseDeepen.Load() {
							body, _ := io.ReadAll(r.Body)
							r.Body = io.NopCloser(bytes.NewReader(body))
							if bytes.Contains(body, []byte("deepen 128")) {
								http.Error(w, "history depth limited", http.StatusForbidden)
								return
							}
						}
						h.ServeHTTP(w, r)
					})
				}) + "/fleet.git"
			}
			s := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{remote}, Trust: trust})
			if kind == "ssh" {
				_, err := s.Sync(ctx, applied)
				if !errors.Is(err, fleetsync.ErrIncompleteHistory) {
					t.Fatalf("a remote that refuses to deepen: want an incomplete-history refusal, got %v", err)
				}
				refused(t, err, "the remote did not serve the 128 commits of history needed to establish which commits are new")
				if s.Local() != nil {
					t.Fatal("a commit whose new commits were not established was swapped in")
				}
				refuseDeepen.Store(false)
			}

			_, err := s.Sync(ctx, applied)
			if !errors.Is(err, fleetsync.ErrUnverified) {
				t.Fatalf("the merge %s of a side branch with unsigned commits was not refused as unverified: %v", merge[:12], err)
			}
			named := false
			for _, u := range unsigned {
				named = named || strings.Contains(err.Error(), "commit "+u[:12]+" (one of the 25 new since "+applied[:12]+") is not signed")
			}
			if !named {
				t.Fatalf("the refusal does not name one of the unsigned side commits among exactly 25 new ones: %v", err)
			}
		})
	}
}

// Too strict, before: commits the last applied commit already contains
// (here the 3 unsigned ones from before signing was adopted) were taken
// for new ones when a merged branch reached them within the shallow clone
// while the applied commit's own history was cut off.
func TestMergeOfBranchForkedAfterAdoptionIsAccepted(t *testing.T) {
	for _, kind := range []string{"ssh", "gpg"} {
		t.Run(kind, func(t *testing.T) {
			repo, _ := initRepo(t)
			signer, trust := signerOf(t, kind, "ops")
			repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
			commits(repo, 3, "hosts/a.yaml", "before signing")
			repo.Signer = signer
			signed := commits(repo, 30, "hosts/a.yaml", "signed")
			applied := signed[29]

			repo.Branch("feature", signed[0])
			commits(repo, 3, "feature.txt", "feature")
			repo.Checkout("main")
			merge := repo.Merge("feature", "merge feature")

			snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Trust: trust}).Sync(context.Background(), applied)
			if err != nil {
				t.Fatalf("a signed merge whose new commits are all signed was refused: %v", err)
			}
			if snap.Commit != merge || !strings.Contains(snap.Verified, "ops") || snap.Verified != snap.Signer {
				t.Fatalf("got commit %s verified %q signer %q, want %s verified by ops", snap.Commit, snap.Verified, snap.Signer, merge)
			}
		})
	}
}

// When the new commits cannot all be found within MaxHistory, the commit
// is refused and the refusal says why.
func TestIncompleteHistoryIsRefused(t *testing.T) {
	repo, _ := initRepo(t)
	signer, trust := signerOf(t, "ssh", "ops")
	repo.Signer = signer
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	applied := repo.Commit("applied")
	repo.Branch("side", applied)
	commits(repo, 40, "side.txt", "side")
	repo.Checkout("main")
	repo.Merge("side", "merge side")
	_, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Trust: trust, MaxHistory: 20}).Sync(context.Background(), applied)
	if !errors.Is(err, fleetsync.ErrIncompleteHistory) {
		t.Fatalf("want an incomplete-history refusal, got %v", err)
	}
	refused(t, err, "the commits new since "+applied[:12]+" could not all be found within the 20 newest commits of main")
}

// Turning trust on, or changing its roots, re-verifies what the kept clone
// holds before anything is served from it.
func TestTrustChangeReverifiesKeptHead(t *testing.T) {
	ctx := context.Background()
	repo, _ := initRepo(t)
	signer, trust := signerOf(t, "ssh", "ops")
	repo.Signer = signer
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	applied := repo.Commit("signed, applied")
	repo.Signer = nil
	repo.Write(map[string]string{"hosts/a.yaml": "deckies: []\n"})
	unsigned := repo.Commit("unsigned")
	repo.Signer = signer
	repo.Write(map[string]string{"hosts/a.yaml": "deckies: []\n# signed\n"})
	kept := repo.Commit("signed on top")

	// Without trust, the head (and the unsigned commit under it) is
	// fetched and kept; the apply of it failed, so applied stays behind.
	dir := filepath.Join(t.TempDir(), "state")
	snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir}).Sync(ctx, applied)
	if err != nil || snap.Commit != kept || snap.Verified != fleetsync.VerifiedNone {
		t.Fatalf("without trust: %v, commit %s verified %q", err, snapCommit(snap), snapVerified(snap))
	}

	// Restarted with trust: the kept head verifies by itself, but a
	// commit new since the applied one is unsigned.
	var logs bytes.Buffer
	s := newSyncer(t, slog.New(slog.NewTextHandler(&logs, nil)), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir, Trust: trust})
	_, err = s.Sync(ctx, applied)
	if !errors.Is(err, fleetsync.ErrUnverified) {
		t.Fatalf("the kept head was served without re-verification after trust was turned on: %v", err)
	}
	refused(t, err, "commit "+unsigned[:12]+" (one of the 2 new since "+applied[:12]+") is not signed")
	if !strings.Contains(logs.String(), "trust roots changed") {
		t.Errorf("the re-verification was not logged: %s", logs.String())
	}

	// Once the operator accepts the unsigned commit (applied moves to it),
	// the kept head verifies and is kept: same trust, no re-verification.
	s = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir, Trust: trust})
	snap, err = s.Sync(ctx, unsigned)
	if err != nil || snap.Commit != kept || !strings.HasPrefix(snap.Verified, "ssh:ops@example.org SHA256:") {
		t.Fatalf("kept head after accepting: %v, commit %s verified %q", err, snapCommit(snap), snapVerified(snap))
	}
	snap, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir, Trust: trust}).Sync(ctx, kept)
	if err != nil || snap.Fetched || !strings.HasPrefix(snap.Verified, "ssh:ops@example.org") {
		t.Fatalf("same trust after a restart: %v, fetched %v verified %q", err, snapFetched(snap), snapVerified(snap))
	}

	// Other roots (ops's key removed): the kept head is verified again.
	_, other := signerOf(t, "ssh", "someone-else")
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir, Trust: other}).Sync(ctx, kept)
	if !errors.Is(err, fleetsync.ErrUnverified) || !strings.Contains(err.Error(), "not an allowed signer") {
		t.Fatalf("the kept head was not verified against the new roots: %v", err)
	}

	// A head fetched unsigned and applied is refused once trust is on.
	repo.Signer = nil
	repo.Write(map[string]string{"b": "1"})
	head := repo.Commit("unsigned head")
	dir2 := filepath.Join(t.TempDir(), "state")
	if _, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir2}).Sync(ctx, ""); err != nil {
		t.Fatal(err)
	}
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir2, Trust: trust}).Sync(ctx, head)
	refused(t, err, "it is not signed")
}

func snapVerified(s *fleetsync.Snapshot) string {
	if s == nil {
		return "<nil>"
	}
	return s.Verified
}

func snapFetched(s *fleetsync.Snapshot) bool { return s != nil && s.Fetched }

// Without trust roots, the agent says so: at start, on every new commit,
// and in the snapshot.
func TestNoTrustIsSaid(t *testing.T) {
	repo, _ := initRepo(t)
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	repo.Commit("one")
	var logs bytes.Buffer
	s := newSyncer(t, slog.New(slog.NewTextHandler(&logs, nil)), fleetsync.Options{Remotes: []string{repo.FileURL()}})
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "no trust roots configured") {
		t.Fatalf("no warning at start: %s", logs.String())
	}
	ctx := context.Background()
	snap, err := s.Sync(ctx, "")
	if err != nil || snap.Verified != "none" {
		t.Fatalf("verified = %q, %v; want none", snapVerified(snap), err)
	}
	const fetched = "without signature verification: no trust roots configured"
	if n := strings.Count(logs.String(), fetched); n != 1 {
		t.Fatalf("%d warnings for one new commit: %s", n, logs.String())
	}
	snap, _ = s.Sync(ctx, snap.Commit) // nothing new: no warning
	if snap.Verified != fleetsync.VerifiedNone {
		t.Fatalf("no-op pass: verified = %q", snap.Verified)
	}
	repo.Write(map[string]string{"a": "1"})
	repo.Commit("two")
	if _, err := s.Sync(ctx, snap.Commit); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), fetched); n != 2 {
		t.Fatalf("want a warning per new commit fetched, got %d: %s", n, logs.String())
	}
}

// Anti-rollback does not rest on the caller's state alone: the kept clone
// is the floor when the last applied commit is unknown.
func TestMissingStateStillRefusesRollback(t *testing.T) {
	ctx := context.Background()
	repo, _ := initRepo(t)
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	c1 := repo.Commit("one")
	repo.Write(map[string]string{"a": "1"})
	c2 := repo.Commit("two")
	dir := filepath.Join(t.TempDir(), "state")
	if snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir}).Sync(ctx, ""); err != nil || snap.Commit != c2 {
		t.Fatal(err)
	}
	// Force-push back to c1 and on to c2'; state.json is gone (applied "").
	repo.Reset(c1)
	repo.Write(map[string]string{"a": "rewritten"})
	c2b := repo.Commit("two, rewritten")
	_, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir}).Sync(ctx, "")
	if !errors.Is(err, fleetsync.ErrRollback) {
		t.Fatalf("missing state with a kept clone accepted a rollback: %v", err)
	}
	refused(t, err, "does not descend from the last applied commit "+c2[:12])
	// A plain replay of the old commit is refused the same way.
	gittest.Git(t, repo.Work, "push", "-q", "-f", "origin", c1+":refs/heads/main")
	_, err = newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir}).Sync(ctx, "")
	if !errors.Is(err, fleetsync.ErrRollback) {
		t.Fatalf("a replayed ancestor was accepted with missing state: %v", err)
	}
	// Only the operator's explicit flag lowers the floor.
	gittest.Git(t, repo.Work, "push", "-q", "-f", "origin", c2b+":refs/heads/main")
	snap, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}, Dir: dir, AllowRollback: true}).Sync(ctx, "")
	if err != nil || snap.Commit != c2b {
		t.Fatalf("--allow-rollback: %v", err)
	}
	// Without a kept clone nor state there is no floor: the first commit.
	if _, err := newSyncer(t, quietLog(), fleetsync.Options{Remotes: []string{repo.FileURL()}}).Sync(ctx, ""); err != nil {
		t.Fatal(err)
	}
}
