package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
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
func (s *Syncer) fetchIncremental(ctx context.Context, url string, target plumbing.Hash, floor string, depth int) (*Snapshot, checked, error) {
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
	if err := s.fetchInto(ctx, st, url, depth); err != nil {
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
	final, err := s.swapIn(tmp, target)
	if err != nil {
		return nil, res, err
	}
	keep = true // renamed into place
	return final, res, nil
}

// fetchInto fetches the ref from url into st at depth, with the same
// authentication, CA bundle and proxy as a clone.
func (s *Syncer) fetchInto(ctx context.Context, st *filesystem.Storage, url string, depth int) error {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	ref := s.refName()
	r := git.NewRemote(st, &config.RemoteConfig{Name: "origin", URLs: []string{url}})
	err := r.FetchContext(ctx, &git.FetchOptions{
		RemoteName:   "origin",
		RefSpecs:     []config.RefSpec{config.RefSpec("+" + ref + ":" + ref)},
		Depth:        depth,
		Auth:         s.auth[url],
		CABundle:     s.opt.CABundle,
		ProxyOptions: s.proxy(),
		Tags:         git.NoTags,
		Force:        true,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("failed to fetch %s into the kept clone: %s", Redact(url), s.scrub(err))
	}
	return nil
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
