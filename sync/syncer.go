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
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// Options configure a Syncer. Zero values are documented per field.
type Options struct {
	// Remotes are tried in order; the first that answers serves the pass.
	// A remote is an https:// (or, without credentials, http://), ssh://
	// or user@host:path URL, a file:// URL or a plain path to a (bare)
	// repository, such as a mirror on a USB disk. A password in a URL's
	// user-info is refused (*CredentialsInURLError), and so is http://
	// with any credential (*InsecureRemoteError).
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
	// applied one (operator override after a deliberate force-push). It
	// is the only thing that lowers the anti-rollback floor.
	AllowRollback bool
	// MaxHistory bounds how deep the clone is made to find the last
	// applied commit and every commit new since it. Default 4096.
	MaxHistory int
}

// Syncer keeps the local clone of the fleet repository. It is not safe for
// concurrent use; the agent runs one pass at a time.
type Syncer struct {
	opt     Options
	log     *slog.Logger
	trust   *verifier
	trustFP string           // fingerprint of the trust roots, VerifiedNone without
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
	fp, err := trustFingerprint(opt.Trust)
	if err != nil {
		return nil, err
	}
	s := &Syncer{opt: opt, log: log.With("component", "sync"), trust: v, trustFP: fp, refused: map[string]error{}, auth: map[string]transport.AuthMethod{}}
	if v == nil {
		s.log.Warn("no trust roots configured: commits of the fleet repository are applied without any signature verification (verified: none)")
	}
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
//
// applied is the last commit applied on this worker. It is the
// anti-rollback floor: a target that does not descend from it is refused
// unless AllowRollback. When applied is "" (no state: deleted, a new state
// directory), the commit of the kept clone is the floor instead, since it
// was fetched and verified by an earlier pass. With trust roots, every
// commit reachable from the target and not from the floor must be signed
// by a trusted key (the target alone when there is no floor). A refusal is
// a *RefusedError.
func (s *Syncer) Sync(ctx context.Context, applied string) (*Snapshot, error) {
	if s.snap == nil {
		s.snap = s.openLocal(checkPacks)
	}
	adv, head, err := s.advertised(ctx)
	if err != nil {
		return nil, err
	}
	defer adv.close()
	remote := adv.url
	target := head
	if s.opt.Pin != "" {
		target = plumbing.NewHash(s.opt.Pin)
	}
	floor := applied
	if floor == "" && s.snap != nil {
		floor = s.snap.Commit
	}
	if s.snap != nil && s.snap.Commit == target.String() && s.keptStillTrusted(ctx) {
		snap := *s.snap
		snap.Remote, snap.Fetched = Redact(remote), false
		return &snap, nil
	}
	key := target.String() + "\x00" + floor
	if err := s.refused[key]; err != nil {
		return nil, err // the same commit again: no need to fetch it to refuse it
	}
	snap, err := s.fetch(ctx, adv, target, floor)
	var re *RefusedError
	if errors.As(err, &re) && !re.retry {
		s.refused[key] = err
	}
	if err != nil {
		return nil, err
	}
	s.snap = snap
	return snap, nil
}

// keptStillTrusted reports whether the kept clone's commit may be served
// without fetching: it was verified under the trust roots configured now.
// After a change of roots (including none -> some) it must be verified
// again, by the fetch path, before anything is applied.
func (s *Syncer) keptStillTrusted(ctx context.Context) bool {
	k := s.snap
	if s.trust == nil {
		if k.trustFP != s.trustFP {
			_ = writeTrustFile(s.cloneDir(), s.trustFP)
			k.trustFP = s.trustFP
		}
		k.Signer, k.Verified = "", VerifiedNone
		return true
	}
	if k.trustFP != s.trustFP {
		s.log.WarnContext(ctx, "the trust roots changed since the kept commit was verified; verifying it again before anything is applied",
			"commit", k.Commit)
		return false
	}
	if k.Verified == "" || k.Verified == VerifiedNone {
		// Opened from disk: name its signer (one signature check, once).
		who, err := s.trust.verify(k.commit)
		if err != nil {
			s.log.WarnContext(ctx, "the kept commit no longer verifies; verifying it again from the remote", "commit", k.Commit, "err", err)
			return false
		}
		k.Signer, k.Verified = who, who
	}
	return true
}

// Local returns the snapshot held on disk without asking any remote, or
// nil when there is none.
func (s *Syncer) Local() *Snapshot {
	if s.snap == nil {
		s.snap = s.openLocal(checkPacks)
	}
	return s.snap
}

// advertised asks each remote in turn for its refs and returns the first
// answer: the ref advertisement only, no objects. The answer keeps its
// session open for a fetch in the same pass; the caller closes it.
func (s *Syncer) advertised(ctx context.Context) (*advertisement, plumbing.Hash, error) {
	var errs []string
	for _, url := range s.opt.Remotes {
		adv, h, err := s.lsRemote(ctx, url)
		if err == nil {
			return adv, h, nil
		}
		msg := s.scrub(err)
		if errors.Is(err, ErrRefNotFound) {
			return nil, plumbing.ZeroHash, fmt.Errorf("%w", err)
		}
		s.log.WarnContext(ctx, "fleet remote did not answer", "remote", Redact(url), "err", msg)
		errs = append(errs, Redact(url)+": "+msg)
	}
	return nil, plumbing.ZeroHash, fmt.Errorf("%w: %s", ErrNoRemote, strings.Join(errs, "; "))
}

func (s *Syncer) proxy() transport.ProxyOptions {
	return transport.ProxyOptions{URL: s.opt.Proxy}
}

// lsRemote reads url's ref advertisement and returns the commit of the
// ref (an annotated tag peeled), with the session it came on.
func (s *Syncer) lsRemote(ctx context.Context, url string) (*advertisement, plumbing.Hash, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	ep, err := transport.NewEndpoint(url)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	ep.CaBundle, ep.Proxy = s.opt.CABundle, s.proxy()
	c, err := client.NewClient(ep)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	sess, err := c.NewUploadPackSession(ep, s.auth[url])
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	adv := &advertisement{url: url, sess: sess, log: s.log}
	ar, err := sess.AdvertisedReferencesContext(ctx)
	if err != nil {
		adv.close()
		return nil, plumbing.ZeroHash, err
	}
	adv.ar = ar
	refs, err := ar.AllReferences()
	if err != nil {
		adv.close()
		return nil, plumbing.ZeroHash, err
	}
	want := s.refName()
	if ref, err := refs.Reference(want); err == nil && ref.Type() == plumbing.HashReference {
		adv.ref = ref.Hash()
	}
	switch peeled, ok := ar.Peeled[want.String()]; {
	case ok && !peeled.IsZero() && !adv.ref.IsZero(): // an annotated tag's commit
		return adv, peeled, nil
	case !adv.ref.IsZero():
		return adv, adv.ref, nil
	}
	adv.close()
	return nil, plumbing.ZeroHash, fmt.Errorf("%w: %s has no %s", ErrRefNotFound, Redact(url), want)
}

// fetch clones the ref into a temporary directory, deep enough to find the
// pinned commit, the floor and every commit new since the floor; checks
// ancestry and signatures, and only then swaps the clone in.
func (s *Syncer) fetch(ctx context.Context, adv *advertisement, target plumbing.Hash, floor string) (*Snapshot, error) {
	url := adv.url
	needHistory := s.opt.Pin != "" || (floor != "" && floor != target.String() && (s.trust != nil || !s.opt.AllowRollback))
	depth := 1
	if needHistory {
		depth = min(16, s.opt.MaxHistory)
	}
	first := depth
	start := time.Now()
	snap, h, err := s.fetchIncremental(ctx, adv, target, floor, depth)
	var re *RefusedError
	switch {
	case err == nil:
		return s.fetched(ctx, snap, h, url, depth, true, start), nil
	case errors.As(err, &re):
		return nil, err // refused on complete evidence: what a fresh clone would say
	case !errors.Is(err, errNoKeptClone):
		s.log.WarnContext(ctx, "could not fetch the new commit into the kept clone; cloning afresh", "commit", target.String(), "err", err)
	}
	adv.close() // the clone opens a session of its own
	for {
		tmp, repo, err := s.cloneInto(ctx, url, depth)
		if err != nil && depth > first {
			// The remote served a shallow clone but not a deeper one: the
			// new commits cannot be established now. A refusal, but not
			// remembered: the remote may serve it on the next pass.
			return nil, &RefusedError{Commit: target.String(), Err: ErrIncompleteHistory, retry: true,
				Reason: fmt.Sprintf("the remote did not serve the %d commits of history needed to establish which commits are new: %s", depth, s.scrub(err))}
		}
		if err != nil {
			return nil, err
		}
		last := depth >= s.opt.MaxHistory
		h, err := s.check(repo, target, floor, last)
		var deeper *needDeeper
		if errors.As(err, &deeper) && !last {
			os.RemoveAll(tmp)
			depth = min(depth*8, s.opt.MaxHistory)
			s.log.DebugContext(ctx, "deepening the clone", "depth", depth, "why", deeper.why)
			continue
		}
		if errors.As(err, &deeper) {
			err = &RefusedError{Commit: target.String(), Err: ErrIncompleteHistory,
				Reason: fmt.Sprintf("%s within the %d newest commits of %s; the history was rewritten or is longer than the agent searches (set --allow-rollback to accept a rewrite)", deeper.why, depth, s.opt.Ref)}
		}
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		if err := writeTrustFile(tmp, s.trustFP); err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		snap, err := s.swapIn(tmp, target, readEvery)
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		return s.fetched(ctx, snap, h, url, depth, false, start), nil
	}
}

// fetched completes and logs the snapshot of a commit just fetched and
// swapped in.
func (s *Syncer) fetched(ctx context.Context, snap *Snapshot, h checked, url string, depth int, incremental bool, start time.Time) *Snapshot {
	snap.Remote, snap.Fetched, snap.Incremental, snap.Signer, snap.Verified = Redact(url), true, incremental, h.signer, h.signer
	if s.trust == nil {
		snap.Verified = VerifiedNone
		s.log.WarnContext(ctx, "fetched a new commit of the fleet repository without signature verification: no trust roots configured",
			"commit", snap.Commit, "new_commits", h.newCommits, "verified", VerifiedNone)
	}
	s.log.InfoContext(ctx, "fetched fleet repository", "remote", Redact(url), "commit", snap.Commit,
		"new_commits", h.newCommits, "verified", snap.Verified, "depth", depth, "incremental", incremental,
		"took", time.Since(start).Round(time.Millisecond))
	return snap
}

// needDeeper is check's answer when the clone does not hold enough
// history to decide; why says what could not be established.
type needDeeper struct{ why string }

func (e *needDeeper) Error() string { return e.why }

type checked struct {
	newCommits int
	signer     string
}

// check decides whether target may be applied after floor, on a clone
// that may be shallow. last says the clone is as deep as it will get.
//
// The commits to verify are exactly those reachable from target and not
// from floor. On a shallow clone that set is computed as V: the walk from
// target that stops at the commits the floor's own walk reached. V is
// exact, or may be too large, but is never too small, once the target's
// walk never ran into the clone's edge: any truly new commit lies on a
// path of new commits from target, which the walk follows. V is too large
// only when the floor's walk ran into the edge (it may miss that the floor
// contains some of V). So: an incomplete target walk means deepen; a
// commit of V that fails verification refuses only when the floor's walk
// was complete, and otherwise means deepen too.
func (s *Syncer) check(repo *git.Repository, target plumbing.Hash, floor string, last bool) (checked, error) {
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
			return res, &needDeeper{fmt.Sprintf("the pinned commit was not found in the history of %s", s.opt.Ref)}
		case !found:
			return res, &RefusedError{Commit: target.String(), Err: ErrNotInHistory, Reason: fmt.Sprintf("the pinned commit is not in the history of %s", s.opt.Ref)}
		}
	}
	toVerify := []plumbing.Hash{target}
	exact := true
	if floor != "" && floor != target.String() && (s.trust != nil || !s.opt.AllowRollback) {
		floorHash := plumbing.NewHash(floor)
		// Commits the floor already contains are not new.
		contained, _, floorComplete := walk(repo, floorHash, plumbing.ZeroHash, nil)
		stop := make(map[plumbing.Hash]bool, len(contained))
		for _, h := range contained {
			stop[h] = true
		}
		visited, found, complete := walk(repo, target, floorHash, stop)
		rollback := false
		switch {
		case found && complete:
			toVerify, exact = visited, floorComplete
		case found && s.trust == nil:
			toVerify = visited // ancestry is proven; the count is only logged
		case found:
			return res, &needDeeper{fmt.Sprintf("the commits new since %s could not all be found", shortHash(floor))}
		case complete:
			rollback = true // the target's whole history was seen: exact
		case last && s.opt.AllowRollback:
			rollback = true
		default:
			return res, &needDeeper{fmt.Sprintf("the last applied commit %s was not found", shortHash(floor))}
		}
		if rollback && !s.opt.AllowRollback {
			return res, &RefusedError{Commit: target.String(), Err: ErrRollback, Reason: fmt.Sprintf("it does not descend from the last applied commit %s (force-push, stale mirror or replayed commit); set --allow-rollback to accept it", shortHash(floor))}
		}
		if rollback {
			s.log.Warn("applying a commit that does not descend from the last applied one, as --allow-rollback says; only it is verified", "commit", target.String(), "applied", floor)
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
				reason = fmt.Sprintf("commit %s (one of the %d new since %s) %s", shortHash(h.String()), len(toVerify), shortHash(floor), strings.TrimPrefix(reason, "it "))
			}
			if !exact {
				return res, &needDeeper{fmt.Sprintf("%s; whether the last applied commit %s already contains it (then it is not new) could not be established", reason, shortHash(floor))}
			}
			return res, &RefusedError{Commit: target.String(), Err: ErrUnverified, Reason: reason}
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
// was complete (it never ran into the shallow clone's edge: a parent whose
// object is not in the clone).
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
// reopened from its final place and verified as how says.
func (s *Syncer) swapIn(tmp string, target plumbing.Hash, how verifyHow) (*Snapshot, error) {
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
	final := s.openLocal(how)
	if final == nil || final.Commit != target.String() {
		return nil, fmt.Errorf("the new clone did not survive the swap into %s", dst)
	}
	return final, nil
}

// appliedRef names, inside the local clone, the commit the snapshot is of.
const appliedRef = plumbing.ReferenceName("refs/pull-agent/target")

// trustFile, inside the local clone's git directory, holds the fingerprint
// of the trust roots its commit was verified under. It moves with the
// clone (swapIn renames the whole directory), so it never describes
// another commit.
const trustFile = "pull-agent-trust"

func writeTrustFile(gitDir, fp string) error {
	return os.WriteFile(filepath.Join(gitDir, trustFile), []byte(fp+"\n"), 0o600)
}

func readTrustFile(gitDir string) string {
	b, err := os.ReadFile(filepath.Join(gitDir, trustFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// verifyHow says how openLocal checks the kept clone's objects.
type verifyHow int

const (
	// readEvery inflates every object of the snapshot (Snapshot.verify):
	// what a clone just fetched gets before it is used.
	readEvery verifyHow = iota
	// checkPacks checks what is stored instead (Snapshot.checkStored):
	// every pack against its own checksum, every object of the snapshot
	// present. It is what reopening a clone verified when it was fetched
	// needs, and it costs a hash of the packs rather than inflating every
	// blob: a no-op `once`, a new process each time, paid that for the
	// decoy binaries of every build context (issue 15).
	checkPacks
)

// openLocal opens the clone on disk and verifies it as how says. A clone
// that is missing objects, half-written or otherwise unreadable is removed
// (and logged), so the next Sync clones afresh.
func (s *Syncer) openLocal(how verifyHow) *Snapshot {
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
		snap.trustFP = readTrustFile(dir)
		if how == checkPacks {
			err = snap.checkStored(dir, st)
		} else {
			_, err = snap.verify()
		}
		return snap, err
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
