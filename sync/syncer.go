package sync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/go-git/go-git/v5/storage/memory"
)

// Options configure a Syncer. Zero values are documented per field.
type Options struct {
	// Remotes are tried in order; the first that answers serves the pass.
	// A remote is an https:// or file:// URL or a plain path to a (bare)
	// repository, such as a mirror on a USB disk.
	Remotes []string
	// Ref is a branch name, or a full ref such as refs/tags/v3.
	// Default "main".
	Ref string
	// Dir holds the local clone; it is created when missing.
	Dir string
	// Timeout bounds each network operation (ls-remote, clone).
	// Default 2 minutes.
	Timeout time.Duration
	// CABundle is extra PEM roots for https remotes.
	CABundle []byte
	// Auth is used with every remote; nil means anonymous.
	Auth transport.AuthMethod
}

// Syncer keeps the local clone of the fleet repository. It is not safe for
// concurrent use; the agent runs one pass at a time.
type Syncer struct {
	opt  Options
	log  *slog.Logger
	snap *Snapshot // the clone currently held, nil until opened
}

// Errors classified by what the pass should do about them.
var (
	// ErrNoRemote: no remote answered; the pass cannot start (retry later).
	ErrNoRemote = errors.New("no fleet remote answered")
	// ErrRefNotFound: the remote answered but has no such ref.
	ErrRefNotFound = errors.New("ref not found on the remote")
)

// New returns a Syncer. It does not touch the network.
func New(opt Options, log *slog.Logger) (*Syncer, error) {
	if len(opt.Remotes) == 0 {
		return nil, errors.New("no fleet repository remote given (--repo)")
	}
	if opt.Dir == "" {
		return nil, errors.New("no directory for the local clone")
	}
	if opt.Ref == "" {
		opt.Ref = "main"
	}
	if opt.Timeout == 0 {
		opt.Timeout = 2 * time.Minute
	}
	return &Syncer{opt: opt, log: log.With("component", "sync")}, nil
}

func (s *Syncer) refName() plumbing.ReferenceName {
	if strings.HasPrefix(s.opt.Ref, "refs/") {
		return plumbing.ReferenceName(s.opt.Ref)
	}
	return plumbing.NewBranchReferenceName(s.opt.Ref)
}

func (s *Syncer) cloneDir() string { return filepath.Join(s.opt.Dir, "clone") }

// Sync returns the snapshot of the ref's current commit, fetching only when
// the remote's commit differs from the one held locally.
func (s *Syncer) Sync(ctx context.Context) (*Snapshot, error) {
	if s.snap == nil {
		s.snap = s.openLocal()
	}
	remote, head, err := s.advertised(ctx)
	if err != nil {
		return nil, err
	}
	if s.snap != nil && s.snap.Commit == head.String() {
		snap := *s.snap
		snap.Remote, snap.Fetched = Redact(remote), false
		return &snap, nil
	}
	snap, err := s.clone(ctx, remote)
	if err != nil {
		return nil, err
	}
	s.snap = snap
	return snap, nil
}

// Local returns the snapshot held on disk without asking any remote, or
// nil when there is none (used when every remote is down).
func (s *Syncer) Local() *Snapshot {
	if s.snap == nil {
		s.snap = s.openLocal()
	}
	return s.snap
}

// advertised asks each remote in turn for its refs and returns the first
// answer: the ref advertisement only, no objects.
func (s *Syncer) advertised(ctx context.Context) (string, plumbing.Hash, error) {
	var errs []string
	for _, url := range s.opt.Remotes {
		h, err := s.lsRemote(ctx, url)
		if err == nil {
			return url, h, nil
		}
		if errors.Is(err, ErrRefNotFound) {
			return "", plumbing.ZeroHash, err
		}
		msg := RedactText(err.Error())
		s.log.WarnContext(ctx, "fleet remote did not answer", "remote", Redact(url), "err", msg)
		errs = append(errs, Redact(url)+": "+msg)
	}
	return "", plumbing.ZeroHash, fmt.Errorf("%w: %s", ErrNoRemote, strings.Join(errs, "; "))
}

func (s *Syncer) lsRemote(ctx context.Context, url string) (plumbing.Hash, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	r := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{url}})
	refs, err := r.ListContext(ctx, &git.ListOptions{Auth: s.opt.Auth, CABundle: s.opt.CABundle})
	if err != nil {
		return plumbing.ZeroHash, err
	}
	want := s.refName()
	for _, ref := range refs {
		if ref.Name() == want && ref.Type() == plumbing.HashReference {
			return ref.Hash(), nil
		}
	}
	return plumbing.ZeroHash, fmt.Errorf("%w: %s has no %s", ErrRefNotFound, Redact(url), want)
}

// clone makes a fresh shallow single-branch clone next to the current one
// and swaps it in. A crash at any point leaves either the old clone or the
// new one in place, never a mix.
func (s *Syncer) clone(ctx context.Context, url string) (*Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	if err := os.MkdirAll(s.opt.Dir, 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.opt.Dir, "clone.tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	st := filesystem.NewStorage(osfs.New(tmp), cache.NewObjectLRUDefault())
	start := time.Now()
	repo, err := git.CloneContext(ctx, st, nil, &git.CloneOptions{
		URL:           url,
		Auth:          s.opt.Auth,
		CABundle:      s.opt.CABundle,
		ReferenceName: s.refName(),
		SingleBranch:  true,
		Depth:         1,
		Tags:          git.NoTags,
		NoCheckout:    true,
	})
	if err != nil {
		return nil, fmt.Errorf("failed to clone %s: %s", Redact(url), RedactText(err.Error()))
	}
	snap, err := snapshotOf(repo, s.refName())
	if err != nil {
		return nil, fmt.Errorf("cloned %s but cannot read it: %w", Redact(url), err)
	}
	dst := s.cloneDir()
	old := dst + ".old"
	_ = os.RemoveAll(old)
	if _, err := os.Stat(dst); err == nil {
		if err := os.Rename(dst, old); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		return nil, err
	}
	_ = os.RemoveAll(old)
	// Reopen from the final location so later reads use the swapped-in storage.
	final := s.openLocal()
	if final == nil || final.Commit != snap.Commit {
		return nil, fmt.Errorf("clone of %s did not survive the swap into %s", Redact(url), dst)
	}
	final.Remote, final.Fetched = Redact(url), true
	s.log.InfoContext(ctx, "fetched fleet repository", "remote", Redact(url), "commit", final.Commit, "took", time.Since(start).Round(time.Millisecond))
	return final, nil
}

// openLocal opens and fully verifies the clone on disk. A clone that is
// missing objects, half-written or otherwise unreadable is removed (and
// logged), so the next Sync clones afresh.
func (s *Syncer) openLocal() *Snapshot {
	dir := s.cloneDir()
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	snap, err := func() (*Snapshot, error) {
		st := filesystem.NewStorage(osfs.New(dir), cache.NewObjectLRUDefault())
		repo, err := git.Open(st, nil)
		if err != nil {
			return nil, err
		}
		snap, err := snapshotOf(repo, s.refName())
		if err != nil {
			return nil, err
		}
		return snap, snap.verify()
	}()
	if err != nil {
		s.log.Warn("local clone of the fleet repository is corrupt; removing it and cloning again", "dir", dir, "err", err)
		_ = os.RemoveAll(dir)
		return nil
	}
	return snap
}

func snapshotOf(repo *git.Repository, ref plumbing.ReferenceName) (*Snapshot, error) {
	r, err := repo.Reference(ref, true)
	if err != nil {
		return nil, fmt.Errorf("ref %s: %w", ref, err)
	}
	c, err := repo.CommitObject(r.Hash())
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", r.Hash(), err)
	}
	t, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("tree of %s: %w", r.Hash(), err)
	}
	return &Snapshot{Commit: c.Hash.String(), Ref: string(ref), When: c.Committer.When, tree: t}, nil
}
