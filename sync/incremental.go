package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// maxIncrementalPacks bounds how many packs the kept clone may hold before
// a new commit is fetched as a fresh shallow clone again. The first clone
// writes one pack and every incremental fetch adds one (the new commit's
// objects and nothing else), and nothing is ever removed from a git object
// store short of a gc, which go-git does not do safely on a shallow
// repository. So without a bound the clone would keep every revision's
// objects forever; with it the clone holds at most this many pushes'
// worth of objects beyond one shallow clone, and a fleet pays one fresh
// clone per this many new commits instead of one per commit.
var maxIncrementalPacks = 32

// errNoKeptClone: there is no kept clone to fetch into (first pass, or it
// was found corrupt and removed); the fresh clone path serves.
var errNoKeptClone = errors.New("no kept clone to fetch into")

// fetchIncremental fetches the ref into a copy of the kept clone (its packs
// hard-linked, the rest copied), so the remote sends only the objects the
// kept clone lacks: the go-git client names the kept clone's commits as
// "haves" and its shallow edge as "shallow", and git upload-pack leaves
// out everything reachable from them. The copy is then checked and
// verified exactly as a fresh clone is (check, snapshot verify) and only
// then swapped in.
//
// What the copy holds is a superset of what a fresh clone of the same
// depth holds, and every object in it is content-addressed (the kept
// objects were verified when they were fetched, the new ones are hashed by
// the pack parser as they are written), so check's decisions on it are
// those a deeper fresh clone would reach. Still, only two outcomes are
// final here: the commit is accepted, or check refuses it on complete
// evidence (a *RefusedError). Everything else (the fetch fails, objects
// are missing or corrupt, the history needed lies beyond the kept clone's
// shallow edge) returns a non-refusal error, and the caller falls back to
// the fresh clone path, which decides as it always has. A hostile remote
// can therefore at most make an agent do the fresh clone it did before.
//
// The copy, not the kept clone itself, is fetched into: a fetch that fails
// or a commit that is refused leaves the kept clone untouched, and the
// swap keeps its crash guarantee (old clone or new, never a mix). Hard
// links are safe because git never rewrites a pack or its index in place.
func (s *Syncer) fetchIncremental(ctx context.Context, adv *advertisement, target plumbing.Hash, floor string, depth int) (*Snapshot, checked, error) {
	var res checked
	if s.snap == nil {
		return nil, res, errNoKeptClone
	}
	src := s.cloneDir()
	packs, err := filepath.Glob(filepath.Join(src, "objects", "pack", "*.pack"))
	if err != nil || len(packs) == 0 {
		return nil, res, fmt.Errorf("the kept clone holds no pack (%v)", err)
	}
	if len(packs) >= maxIncrementalPacks {
		return nil, res, fmt.Errorf("the kept clone holds %d packs (bound %d): cloning afresh to shed old revisions", len(packs), maxIncrementalPacks)
	}
	tmp, err := os.MkdirTemp(s.opt.Dir, "clone.tmp-")
	if err != nil {
		return nil, res, err
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(tmp)
		}
	}()
	if err := linkClone(src, tmp); err != nil {
		return nil, res, fmt.Errorf("failed to copy the kept clone: %w", err)
	}
	st := filesystem.NewStorage(osfs.New(tmp), cache.NewObjectLRUDefault())
	repo, err := git.Open(st, nil)
	if err != nil {
		return nil, res, fmt.Errorf("failed to open the copy of the kept clone: %w", err)
	}
	if err := s.fetchInto(ctx, st, adv, depth); err != nil {
		return nil, res, err
	}
	res, err = s.check(repo, target, floor, false)
	var deeper *needDeeper
	if errors.As(err, &deeper) {
		return nil, res, fmt.Errorf("the kept clone's history is too shallow to decide: %w", err)
	}
	if err != nil {
		return nil, res, err // a *RefusedError is final; anything else falls back
	}
	// Every object of the commit must be there and readable before the
	// kept clone is replaced (swapIn verifies again from the final place).
	snap, err := snapshotAt(repo, target)
	if err != nil {
		return nil, res, err
	}
	if _, err := snap.verify(); err != nil {
		return nil, res, fmt.Errorf("the fetched commit's objects do not all read back: %w", err)
	}
	if err := writeTrustFile(tmp, s.trustFP); err != nil {
		return nil, res, err
	}
	final, err := s.swapIn(tmp, target, checkPacks) // every object was read just above
	if err != nil {
		return nil, res, err
	}
	keep = true // renamed into place
	return final, res, nil
}

// advertisement is a remote's ref advertisement and the session it came
// on. A fetch in the same pass sends its upload-pack request on that
// session instead of asking for the advertisement again (as go-git's
// Fetch would): over HTTP that is one request, one `git http-backend`
// and one `git upload-pack` process fewer on the remote per new commit.
type advertisement struct {
	url  string
	sess transport.UploadPackSession
	ar   *packp.AdvRefs
	ref  plumbing.Hash // the ref's own hash (a tag object for an annotated tag)
	log  *slog.Logger
	used bool // an upload-pack request was sent: the session is spent
}

// close ends the session (over ssh, git:// and file, the server waits for
// a request or a flush until then).
func (a *advertisement) close() {
	if a == nil || a.sess == nil {
		return
	}
	if err := a.sess.Close(); err != nil {
		a.log.Debug("closing the fleet remote's session", "remote", Redact(a.url), "err", err)
	}
	a.sess = nil
}

// fetchInto fetches the advertised ref into st at depth on the
// advertisement's session: wants the ref, names st's commits as haves and
// its shallow edge, writes the pack the remote sends into st (the pack
// parser hashes every object as it writes it), records the new shallow
// edge and points the ref at what was fetched.
func (s *Syncer) fetchInto(ctx context.Context, st *filesystem.Storage, adv *advertisement, depth int) (err error) {
	if adv.used || adv.sess == nil {
		return errors.New("the remote's session was already used")
	}
	adv.used = true
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	fail := func(err error) error {
		return fmt.Errorf("failed to fetch %s into the kept clone: %s", Redact(adv.url), s.scrub(err))
	}
	req := packp.NewUploadPackRequestFromCapabilities(adv.ar.Capabilities)
	req.Depth = packp.DepthCommits(depth)
	if err := req.Capabilities.Set(capability.Shallow); err != nil {
		return fail(err)
	}
	if adv.ar.Capabilities.Supports(capability.NoProgress) {
		if err := req.Capabilities.Set(capability.NoProgress); err != nil {
			return fail(err)
		}
	}
	shallows, err := st.Shallow()
	if err != nil {
		return fail(err)
	}
	req.Shallows = shallows
	req.Wants = []plumbing.Hash{adv.ref}
	if req.Haves, err = haves(st, 32); err != nil {
		return fail(err)
	}
	resp, err := adv.sess.UploadPack(ctx, req)
	switch {
	case errors.Is(err, transport.ErrEmptyUploadPackRequest):
		// Nothing to send: check decides on what is here.
	case err != nil:
		return fail(err)
	default:
		defer func() {
			if cerr := resp.Close(); cerr != nil && err == nil {
				err = fail(cerr)
			}
		}()
		if err := st.SetShallow(updatedShallows(shallows, resp.Shallows, resp.Unshallows)); err != nil {
			return fail(err)
		}
		var pack io.Reader = resp
		switch {
		case req.Capabilities.Supports(capability.Sideband64k):
			pack = sideband.NewDemuxer(sideband.Sideband64k, resp)
		case req.Capabilities.Supports(capability.Sideband):
			pack = sideband.NewDemuxer(sideband.Sideband, resp)
		}
		if err := packfile.UpdateObjectStorage(st, pack); err != nil {
			return fail(err)
		}
	}
	return st.SetReference(plumbing.NewHashReference(s.refName(), adv.ref))
}

// haves lists up to max commits present in st, newest first from each
// ref: what the remote may leave out of the pack.
func haves(st *filesystem.Storage, max int) ([]plumbing.Hash, error) {
	refs, err := st.IterReferences()
	if err != nil {
		return nil, err
	}
	seen := map[plumbing.Hash]bool{}
	var queue, out []plumbing.Hash
	_ = refs.ForEach(func(r *plumbing.Reference) error {
		if r.Type() == plumbing.HashReference && !seen[r.Hash()] {
			seen[r.Hash()] = true
			queue = append(queue, r.Hash())
		}
		return nil
	})
	for len(queue) > 0 && len(out) < max {
		h := queue[0]
		queue = queue[1:]
		c, err := object.GetCommit(st, h)
		if err != nil {
			continue // not a commit, or beyond the shallow edge
		}
		out = append(out, h)
		for _, p := range c.ParentHashes {
			if !seen[p] {
				seen[p] = true
				queue = append(queue, p)
			}
		}
	}
	return out, nil
}

// updatedShallows is the shallow edge after a fetch: the old one, less
// what the remote unshallowed (it sent their parents), plus what it
// made shallow.
func updatedShallows(old, add, remove []plumbing.Hash) []plumbing.Hash {
	drop := map[plumbing.Hash]bool{}
	for _, h := range remove {
		drop[h] = true
	}
	var out []plumbing.Hash
	for _, h := range append(slices.Clone(old), add...) {
		if !drop[h] && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// linkClone copies the bare repository src to the existing directory dst:
// pack files and their indexes are hard-linked (immutable once written),
// every other file is copied, so nothing the fetch writes (refs, the
// shallow file, the trust file) can reach src. Anything but directories
// and regular files is refused.
func linkClone(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o700)
		case !d.Type().IsRegular():
			return fmt.Errorf("%s is not a regular file", rel)
		}
		if filepath.Dir(rel) == filepath.Join("objects", "pack") && (strings.HasSuffix(rel, ".pack") || strings.HasSuffix(rel, ".idx")) {
			if err := os.Link(p, to); err == nil {
				return nil
			}
		}
		return copyFile(p, to)
	})
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
