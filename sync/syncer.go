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
	// A remote is an https:// (or http://), ssh:// or user@host:path URL, a
	// file:// URL or a plain path to a (bare) repository, such as a mirror
	// on a USB disk.
	Remotes []string
	// Ref is a branch name, or a full ref such as refs/tags/v3.
	// Default "main".
	Ref string
	// Pin, when set, is the commit to apply instead of the ref's head; it
	// must be in the ref's history.
	Pin string
	// Dir holds the local clone; it is created when missing.
	Dir string
	// Timeout bounds each network operation (ls-remote, clone).
	// Default 2 minutes.
	Timeout time.Duration
	// CABundle is extra PEM roots for https remotes.
	CABundle []byte
	// Proxy is an explicit proxy URL for http(s) remotes. Without it the
	// standard HTTPS_PROXY/HTTP_PROXY/NO_PROXY environment applies.
	Proxy string
	// Credentials authenticate to the remotes.
	Credentials Credentials
	// Trust, when it names a keyring or allowed signers, makes every new
	// commit's signature mandatory.
	Trust TrustOptions
	// AllowRollback accepts a commit that does not descend from the last
	// applied one (operator override after a deliberate force-push).
	AllowRollback bool
	// MaxHistory bounds how many commits are searched for the last
	// applied one. Default 4096.
	MaxHistory int
}

// Syncer keeps the local clone of the fleet repository. It is not safe for
// concurrent use; the agent runs one pass at a time.
type Syncer struct {
	opt     Options
	log     *slog.Logger
	trust   *verifier
	snap    *Snapshot        // the clone currently held, nil until opened
	refused map[string]error // target+applied -> refusal, not fetched again
	auth    map[string]transport.AuthMethod
}

// Errors classified by what the pass should do about them.
var (
	// ErrNoRemote: no remote answered; the pass cannot start (retry later).
	ErrNoRemote = errors.New("no fleet remote answered")
	// ErrRefNotFound: the remote answered but has no such ref.
	ErrRefNotFound = errors.New("ref not found on the remote")
)

// New returns a Syncer. It does not touch the network; it removes what a
// clone killed half-way left behind.
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
	if opt.MaxHistory == 0 {
		opt.MaxHistory = 4096
	}
	if opt.Pin != "" && !plumbing.IsHash(opt.Pin) {
		return nil, fmt.Errorf("pinned commit %q is not a full 40-hex commit hash", opt.Pin)
	}
	v, err := loadVerifier(opt.Trust)
	if err != nil {
		return nil, err
	}
	s := &Syncer{opt: opt, log: log.With("component", "sync"), trust: v, refused: map[string]error{}, auth: map[string]transport.AuthMethod{}}
	for _, r := range opt.Remotes {
		a, err := opt.Credentials.authFor(r)
		if err != nil {
			return nil, err
		}
		s.auth[r] = a
	}
	leftovers, _ := filepath.Glob(filepath.Join(opt.Dir, "clone.tmp-*"))
	for _, l := range leftovers {
		s.log.Warn("removing a clone left half-written by an interrupted fetch", "dir", l)
		_ = os.RemoveAll(l)
	}
	_ = os.RemoveAll(filepath.Join(opt.Dir, "clone.old"))
	return s, nil
}

func (s *Syncer) refName() plumbing.ReferenceName {
	if strings.HasPrefix(s.opt.Ref, "refs/") {
		return plumbing.ReferenceName(s.opt.Ref)
	}
	return plumbing.NewBranchReferenceName(s.opt.Ref)
}

func (s *Syncer) cloneDir() string { return filepath.Join(s.opt.Dir, "clone") }

func (s *Syncer) scrub(err error) string {
	return RedactText(err.Error(), s.opt.Credentials.secrets()...)
}

// Sync returns the snapshot of the commit to apply (the ref's head, or the
// pinned commit), fetching only when it differs from the one held locally.
// applied is the last commit applied on this worker ("" for none): a
// target that does not descend from it is refused (anti-rollback) unless
// AllowRollback, and with trust roots every commit after it must be signed
// by a trusted key. A refusal is a *RefusedError.
func (s *Syncer) Sync(ctx context.Context, applied string) (*Snapshot, error) {
	if s.snap == nil {
		s.snap = s.openLocal()
	}
	remote, head, err := s.advertised(ctx)
	if err != nil {
		return nil, err
	}
	target := head
	if s.opt.Pin != "" {
		target = plumbing.NewHash(s.opt.Pin)
	}
	if s.snap != nil && s.snap.Commit == target.String() {
		snap := *s.snap
		snap.Remote, snap.Fetched = Redact(remote), false
		return &snap, nil
	}
	key := target.String() + "\x00" + applied
	if err := s.refused[key]; err != nil {
		return nil, err // the same commit again: no need to fetch it to refuse it
	}
	snap, err := s.fetch(ctx, remote, head, target, applied)
	var re *RefusedError
	if errors.As(err, &re) {
		s.refused[key] = err
	}
	if err != nil {
		return nil, err
	}
	s.snap = snap
	return snap, nil
}

// Local returns the snapshot held on disk without asking any remote, or
// nil when there is none.
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
		msg := s.scrub(err)
		if errors.Is(err, ErrRefNotFound) {
			return "", plumbing.ZeroHash, fmt.Errorf("%w", err)
		}
		s.log.WarnContext(ctx, "fleet remote did not answer", "remote", Redact(url), "err", msg)
		errs = append(errs, Redact(url)+": "+msg)
	}
	return "", plumbing.ZeroHash, fmt.Errorf("%w: %s", ErrNoRemote, strings.Join(errs, "; "))
}

func (s *Syncer) proxy() transport.ProxyOptions {
	return transport.ProxyOptions{URL: s.opt.Proxy}
}

func (s *Syncer) lsRemote(ctx context.Context, url string) (plumbing.Hash, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	r := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{url}})
	refs, err := r.ListContext(ctx, &git.ListOptions{Auth: s.auth[url], CABundle: s.opt.CABundle, ProxyOptions: s.proxy(), PeelingOption: git.AppendPeeled})
	if err != nil {
		return plumbing.ZeroHash, err
	}
	want := s.refName()
	var found, peeled plumbing.Hash
	for _, ref := range refs {
		switch ref.Name() {
		case want:
			found = ref.Hash()
		case want + "^{}": // an annotated tag's commit
			peeled = ref.Hash()
		}
	}
	switch {
	case !peeled.IsZero():
		return peeled, nil
	case !found.IsZero():
		return found, nil
	}
	return plumbing.ZeroHash, fmt.Errorf("%w: %s has no %s", ErrRefNotFound, Redact(url), want)
}

// fetch clones the ref into a temporary directory (deep enough to find the
// pinned and the last applied commit), checks ancestry and signatures, and
// only then swaps the clone in.
func (s *Syncer) fetch(ctx context.Context, url string, head, target plumbing.Hash, applied string) (*Snapshot, error) {
	needHistory := s.opt.Pin != "" || (applied != "" && applied != target.String() && (s.trust != nil || !s.opt.AllowRollback))
	depth := 1
	if needHistory {
		depth = 16
	}
	start := time.Now()
	for {
		tmp, repo, err := s.cloneInto(ctx, url, depth)
		if err != nil {
			return nil, err
		}
		h, err := s.check(repo, target, applied, depth)
		if errors.Is(err, errDeeper) && depth < s.opt.MaxHistory {
			os.RemoveAll(tmp)
			depth = min(depth*8, s.opt.MaxHistory)
			s.log.DebugContext(ctx, "deepening the clone to find history", "depth", depth)
			continue
		}
		if errors.Is(err, errDeeper) {
			err = &RefusedError{Commit: target.String(), Reason: fmt.Sprintf("the last applied commit %s is not among the %d newest commits of %s; the history was rewritten or is too long (set --allow-rollback to accept)", shortHash(applied), depth, s.opt.Ref)}
		}
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		snap, err := s.swapIn(tmp, target)
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		snap.Remote, snap.Fetched, snap.Signer = Redact(url), true, h.signer
		s.log.InfoContext(ctx, "fetched fleet repository", "remote", Redact(url), "commit", snap.Commit,
			"new_commits", h.newCommits, "signed_by", h.signer, "took", time.Since(start).Round(time.Millisecond))
		return snap, nil
	}
}

var errDeeper = errors.New("history not deep enough")

type checked struct {
	newCommits int
	signer     string
}

// check decides whether target may be applied after applied.
func (s *Syncer) check(repo *git.Repository, target plumbing.Hash, applied string, depth int) (checked, error) {
	var res checked
	headRef, err := repo.Reference(s.refName(), true)
	if err != nil {
		return res, err
	}
	head, err := peel(repo, headRef.Hash())
	if err != nil {
		return res, err
	}
	if s.opt.Pin != "" {
		_, found, complete := walk(repo, head, target, nil)
		switch {
		case !found && !complete:
			return res, errDeeper
		case !found:
			return res, &RefusedError{Commit: target.String(), Reason: fmt.Sprintf("the pinned commit is not in the history of %s", s.opt.Ref)}
		}
	}
	toVerify := []plumbing.Hash{target}
	if applied != "" && applied != target.String() && (s.trust != nil || !s.opt.AllowRollback) {
		appliedHash := plumbing.NewHash(applied)
		stop := map[plumbing.Hash]bool{}
		if _, err := repo.CommitObject(appliedHash); err == nil {
			// Commits the applied one already contains are not new.
			visited, _, _ := walk(repo, appliedHash, plumbing.ZeroHash, nil)
			for _, h := range visited {
				stop[h] = true
			}
		}
		visited, found, complete := walk(repo, target, appliedHash, stop)
		switch {
		case found:
			toVerify = visited
		case !complete:
			return res, errDeeper
		case s.opt.AllowRollback:
			s.log.Warn("applying a commit that does not descend from the last applied one, as --allow-rollback says", "commit", target.String(), "applied", applied)
		default:
			return res, &RefusedError{Commit: target.String(), Reason: fmt.Sprintf("it does not descend from the last applied commit %s (force-push, stale mirror or replayed commit); set --allow-rollback to accept it", shortHash(applied))}
		}
	}
	res.newCommits = len(toVerify)
	if s.trust == nil {
		return res, nil
	}
	for _, h := range toVerify {
		c, err := repo.CommitObject(h)
		if err != nil {
			return res, err
		}
		who, err := s.trust.verify(c)
		if err != nil {
			reason := err.Error() // "it is not signed", ...
			if h != target {
				reason = fmt.Sprintf("commit %s (one of the %d new since %s) %s", shortHash(h.String()), len(toVerify), shortHash(applied), strings.TrimPrefix(reason, "it "))
			}
			return res, &RefusedError{Commit: target.String(), Reason: reason}
		}
		if h == target {
			res.signer = who
		}
	}
	return res, nil
}

// walk searches breadth-first from `from` through parents for `want`,
// not expanding commits in stop. It returns the commits visited (want and
// stop commits excluded), whether want was found, and whether the search
// was complete (it never ran into the shallow clone's edge).
func walk(repo *git.Repository, from, want plumbing.Hash, stop map[plumbing.Hash]bool) ([]plumbing.Hash, bool, bool) {
	seen := map[plumbing.Hash]bool{from: true}
	queue := []plumbing.Hash{from}
	var visited []plumbing.Hash
	found, complete := false, true
	for len(queue) > 0 {
		h := queue[0]
		queue = queue[1:]
		if h == want {
			found = true
			continue
		}
		if stop[h] {
			continue
		}
		c, err := repo.CommitObject(h)
		if err != nil {
			complete = false // beyond the shallow edge
			continue
		}
		visited = append(visited, h)
		for _, p := range c.ParentHashes {
			if !seen[p] {
				seen[p] = true
				queue = append(queue, p)
			}
		}
	}
	return visited, found, complete
}

// peel resolves an annotated tag to its commit.
func peel(repo *git.Repository, h plumbing.Hash) (plumbing.Hash, error) {
	if t, err := repo.TagObject(h); err == nil {
		c, err := t.Commit()
		if err != nil {
			return plumbing.ZeroHash, err
		}
		return c.Hash, nil
	}
	return h, nil
}

// cloneInto makes a shallow single-ref clone in a new temporary directory.
func (s *Syncer) cloneInto(ctx context.Context, url string, depth int) (string, *git.Repository, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	if err := os.MkdirAll(s.opt.Dir, 0o700); err != nil {
		return "", nil, err
	}
	tmp, err := os.MkdirTemp(s.opt.Dir, "clone.tmp-")
	if err != nil {
		return "", nil, err
	}
	st := filesystem.NewStorage(osfs.New(tmp), cache.NewObjectLRUDefault())
	repo, err := git.CloneContext(ctx, st, nil, &git.CloneOptions{
		URL:           url,
		Auth:          s.auth[url],
		CABundle:      s.opt.CABundle,
		ProxyOptions:  s.proxy(),
		ReferenceName: s.refName(),
		SingleBranch:  true,
		Depth:         depth,
		Tags:          git.NoTags,
		NoCheckout:    true,
	})
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, fmt.Errorf("failed to clone %s: %s", Redact(url), s.scrub(err))
	}
	return tmp, repo, nil
}

// swapIn replaces the current clone by tmp. A crash at any point leaves
// either the old clone or the new one in place, never a mix; the new one is
// reopened from its final place and fully verified.
func (s *Syncer) swapIn(tmp string, target plumbing.Hash) (*Snapshot, error) {
	// Point HEAD at the commit to apply, so reopening needs no ref logic.
	st := filesystem.NewStorage(osfs.New(tmp), cache.NewObjectLRUDefault())
	if err := st.SetReference(plumbing.NewHashReference(appliedRef, target)); err != nil {
		return nil, err
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
	final := s.openLocal()
	if final == nil || final.Commit != target.String() {
		return nil, fmt.Errorf("the new clone did not survive the swap into %s", dst)
	}
	return final, nil
}

// appliedRef names, inside the local clone, the commit the snapshot is of.
const appliedRef = plumbing.ReferenceName("refs/pull-agent/target")

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
		ref, err := repo.Reference(appliedRef, true)
		if err != nil {
			return nil, fmt.Errorf("ref %s: %w", appliedRef, err)
		}
		snap, err := snapshotAt(repo, ref.Hash())
		if err != nil {
			return nil, err
		}
		snap.Ref = s.opt.Ref
		return snap, snap.verify()
	}()
	if err != nil {
		s.log.Warn("local clone of the fleet repository is corrupt; removing it and cloning again", "dir", dir, "err", err)
		_ = os.RemoveAll(dir)
		return nil
	}
	return snap
}

func snapshotAt(repo *git.Repository, h plumbing.Hash) (*Snapshot, error) {
	c, err := repo.CommitObject(h)
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", h, err)
	}
	t, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("tree of %s: %w", h, err)
	}
	return &Snapshot{Commit: c.Hash.String(), When: c.Committer.When, tree: t, commit: c}, nil
}
