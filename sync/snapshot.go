package sync

import (
	"bytes"
	"crypto/sha1" // git's own checksum of packs and indexes, not a security check
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// Snapshot is the content of one fetched commit.
type Snapshot struct {
	Commit  string    // full hex hash
	Remote  string    // redacted URL of the remote that served it
	Ref     string    // the ref it was read from
	When    time.Time // committer time
	Fetched bool      // objects were transferred in this call
	// Incremental says the objects were fetched into the kept clone (only
	// those it lacked), not as a fresh shallow clone. Meaningful only
	// when Fetched.
	Incremental bool
	Signer      string // who signed the commit, when signatures are checked
	// Verified says what was verified: VerifiedNone ("none") when no
	// trust roots are configured, else the signer of the commit, as
	// "ssh:<principals> <SHA256 key fingerprint>" or
	// "openpgp:<primary user id> <key id>". Always set on what Sync
	// returns; empty on Local's snapshot until a Sync has checked it.
	Verified string
	tree     *object.Tree
	commit   *object.Commit
	trustFP  string // trust roots the kept clone was verified under

}

var (
	_ fs.FS         = (*Snapshot)(nil)
	_ fs.ReadDirFS  = (*Snapshot)(nil)
	_ fs.ReadLinkFS = (*Snapshot)(nil)
	_ fs.StatFS     = (*Snapshot)(nil)
)

// maxSymlinkHops bounds symlink chains followed by Open.
const maxSymlinkHops = 8

func (s *Snapshot) entry(name string) (*object.TreeEntry, error) {
	if !fs.ValidPath(name) {
		return nil, fs.ErrInvalid
	}
	if name == "." {
		return &object.TreeEntry{Name: ".", Mode: filemode.Dir, Hash: s.tree.Hash}, nil
	}
	e, err := s.tree.FindEntry(name)
	if err != nil {
		return nil, fs.ErrNotExist
	}
	return e, nil
}

// resolve follows symlinks inside the repository, as Open must.
func (s *Snapshot) resolve(name string) (string, *object.TreeEntry, error) {
	for hop := 0; hop <= maxSymlinkHops; hop++ {
		e, err := s.entry(name)
		if err != nil {
			return "", nil, err
		}
		if e.Mode != filemode.Symlink {
			return name, e, nil
		}
		target, err := s.ReadLink(name)
		if err != nil {
			return "", nil, err
		}
		next := path.Join(path.Dir(name), target)
		if strings.HasPrefix(target, "/") || !fs.ValidPath(next) {
			return "", nil, fs.ErrNotExist // never leave the repository
		}
		name = next
	}
	return "", nil, errors.New("too many levels of symbolic links")
}

// Open implements fs.FS.
func (s *Snapshot) Open(name string) (fs.File, error) {
	real, e, err := s.resolve(name)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	info := entryInfo{name: path.Base(name), e: *e, mtime: s.When}
	if e.Mode == filemode.Dir {
		t, err := s.subtree(real)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &dirFile{info: info, s: s, tree: t, dir: real}, nil
	}
	if e.Mode == filemode.Submodule {
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("is a git submodule, which the fleet repo may not use")}
	}
	blob, err := s.tree.File(real)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	r, err := blob.Reader()
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	info.size = blob.Size
	return &blobFile{info: info, rc: r}, nil
}

func (s *Snapshot) subtree(name string) (*object.Tree, error) {
	if name == "." {
		return s.tree, nil
	}
	return s.tree.Tree(name)
}

// ReadDir implements fs.ReadDirFS; entries are sorted by name.
func (s *Snapshot) ReadDir(name string) ([]fs.DirEntry, error) {
	f, err := s.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, ok := f.(*dirFile)
	if !ok {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errors.New("not a directory")}
	}
	return d.ReadDir(-1)
}

// Stat implements fs.StatFS (following symlinks).
func (s *Snapshot) Stat(name string) (fs.FileInfo, error) {
	f, err := s.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

// Lstat implements fs.ReadLinkFS.
func (s *Snapshot) Lstat(name string) (fs.FileInfo, error) {
	e, err := s.entry(name)
	if err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	info := entryInfo{name: path.Base(name), e: *e, mtime: s.When}
	if e.Mode.IsFile() || e.Mode == filemode.Symlink {
		if b, err := s.tree.File(name); err == nil {
			info.size = b.Size
		}
	}
	return info, nil
}

// ReadLink implements fs.ReadLinkFS.
func (s *Snapshot) ReadLink(name string) (string, error) {
	e, err := s.entry(name)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	if e.Mode != filemode.Symlink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: errors.New("not a symlink")}
	}
	b, err := s.tree.File(name)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	r, err := b.Reader()
	if err != nil {
		return "", err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, 4096))
	return string(data), err
}

// ContextHash returns the git tree hash of a directory: a content hash
// covering every file's name, mode and bytes, free to compute. Images
// built from the directory are tagged with it, so a context is rebuilt
// exactly when its content changes.
func (s *Snapshot) ContextHash(dir string) (string, error) {
	e, err := s.entry(dir)
	if err != nil {
		return "", fmt.Errorf("build context %s: %w", dir, err)
	}
	if e.Mode != filemode.Dir {
		return "", fmt.Errorf("build context %s is not a directory", dir)
	}
	return e.Hash.String(), nil
}

// Materialize writes the directory dir of the snapshot below dst (which
// must not exist), for a Docker build. Entry names that could escape dst
// are refused even though git itself would never write them.
func (s *Snapshot) Materialize(dir, dst string) error {
	t, err := s.tree.Tree(dir)
	if dir == "." {
		t, err = s.tree, nil
	}
	if err != nil {
		return fmt.Errorf("build context %s: %w", dir, err)
	}
	tmp := dst + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := writeTree(t, tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("failed to write build context %s: %w", dir, err)
	}
	return os.Rename(tmp, dst)
}

func safeName(n string) bool {
	return n != "" && n != "." && n != ".." && n != ".git" && !strings.ContainsAny(n, "/\\\x00")
}

func writeTree(t *object.Tree, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for _, e := range t.Entries {
		if !safeName(e.Name) {
			return fmt.Errorf("tree entry %q is not a safe file name", e.Name)
		}
		p := filepath.Join(dst, e.Name)
		switch e.Mode {
		case filemode.Dir:
			sub, err := t.Tree(e.Name)
			if err != nil {
				return err
			}
			if err := writeTree(sub, p); err != nil {
				return err
			}
		case filemode.Symlink:
			target, err := blobText(t, e.Name)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, p); err != nil {
				return err
			}
		case filemode.Regular, filemode.Executable, filemode.Deprecated:
			mode := os.FileMode(0o644)
			if e.Mode == filemode.Executable {
				mode = 0o755
			}
			if err := writeBlob(t, e.Name, p, mode); err != nil {
				return err
			}
		default:
			return fmt.Errorf("tree entry %q has unsupported mode %s", e.Name, e.Mode)
		}
	}
	return nil
}

func blobText(t *object.Tree, name string) (string, error) {
	f, err := t.File(name)
	if err != nil {
		return "", err
	}
	return f.Contents()
}

func writeBlob(t *object.Tree, name, p string, mode os.FileMode) error {
	f, err := t.File(name)
	if err != nil {
		return err
	}
	r, err := f.Reader()
	if err != nil {
		return err
	}
	defer r.Close()
	out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// verify reads every object of the snapshot once, so that a clone with
// missing or corrupt objects is caught before anything is applied from it.
// A blob found at several paths (the same decoy binary in every service's
// build context) is read once: it is one object. Every `once` is a new
// process that opens, and so verifies, the kept clone, so this is paid by
// each no-op `once`. It returns the number of blobs read.
func (s *Snapshot) verify() (int, error) {
	iter := s.tree.Files()
	defer iter.Close()
	seen := map[plumbing.Hash]bool{}
	err := iter.ForEach(func(f *object.File) error {
		if seen[f.Hash] {
			return nil
		}
		seen[f.Hash] = true
		r, err := f.Reader()
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		defer r.Close()
		if _, err := io.Copy(io.Discard, r); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		return nil
	})
	return len(seen), err
}

// objectStore is what checkStored asks of the clone's object store.
type objectStore interface {
	HasEncodedObject(plumbing.Hash) error
}

// checkStored checks a kept clone without inflating its blobs: every pack
// and its index must match their own SHA-1 trailers (and the index must
// name its pack's), and every object of the snapshot's tree must be
// present. A flipped or missing byte in a pack, a damaged index or a
// missing object is caught as verify catches it, at the cost of hashing
// the packs rather than inflating every blob. Loose objects carry no
// checksum of their own, so a clone holding any is read in full instead
// (fetches and clones write packs only).
func (s *Snapshot) checkStored(gitDir string, st objectStore) error {
	loose, err := filepath.Glob(filepath.Join(gitDir, "objects", "[0-9a-f][0-9a-f]", "*"))
	if err != nil {
		return err
	}
	if len(loose) > 0 {
		_, err := s.verify()
		return err
	}
	packs, err := filepath.Glob(filepath.Join(gitDir, "objects", "pack", "*.pack"))
	if err != nil {
		return err
	}
	for _, p := range packs {
		sum, _, err := fileTrailer(p)
		if err != nil {
			return err
		}
		idx := strings.TrimSuffix(p, ".pack") + ".idx"
		_, named, err := fileTrailer(idx)
		if err != nil {
			return err
		}
		if !bytes.Equal(named, sum) {
			return fmt.Errorf("%s does not index %s", filepath.Base(idx), filepath.Base(p))
		}
	}
	w := object.NewTreeWalker(s.tree, true, nil)
	defer w.Close()
	for {
		name, e, err := w.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if e.Mode == filemode.Dir || e.Mode == filemode.Submodule {
			continue
		}
		if err := st.HasEncodedObject(e.Hash); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
}

// fileTrailer checks that a pack or index file ends with the SHA-1 of
// everything before it, and returns that checksum and the 20 bytes before
// it (an index's copy of its pack's checksum).
func fileTrailer(p string) (sum, before []byte, err error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	const n = sha1.Size
	if fi.Size() < 2*n {
		return nil, nil, fmt.Errorf("%s: truncated (%d bytes)", filepath.Base(p), fi.Size())
	}
	h := sha1.New()
	if _, err := io.Copy(h, io.LimitReader(f, fi.Size()-2*n)); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
	}
	tail := make([]byte, 2*n)
	if _, err := io.ReadFull(f, tail); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
	}
	h.Write(tail[:n])
	if !bytes.Equal(h.Sum(nil), tail[n:]) {
		return nil, nil, fmt.Errorf("%s: checksum mismatch (the file is damaged)", filepath.Base(p))
	}
	return tail[n:], tail[:n], nil
}

type entryInfo struct {
	name  string
	e     object.TreeEntry
	size  int64
	mtime time.Time
}

func (i entryInfo) Name() string { return i.name }
func (i entryInfo) Size() int64  { return i.size }
func (i entryInfo) Mode() fs.FileMode {
	switch i.e.Mode {
	case filemode.Dir:
		return fs.ModeDir | 0o755
	case filemode.Symlink:
		return fs.ModeSymlink | 0o777
	case filemode.Executable:
		return 0o755
	default:
		return 0o644
	}
}
func (i entryInfo) ModTime() time.Time { return i.mtime }
func (i entryInfo) IsDir() bool        { return i.e.Mode == filemode.Dir }
func (i entryInfo) Sys() any           { return nil }

type blobFile struct {
	info entryInfo
	rc   io.ReadCloser
}

func (f *blobFile) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *blobFile) Read(p []byte) (int, error) { return f.rc.Read(p) }
func (f *blobFile) Close() error               { return f.rc.Close() }

type dirFile struct {
	info entryInfo
	s    *Snapshot
	tree *object.Tree
	dir  string
	read int
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.dir, Err: errors.New("is a directory")}
}
func (d *dirFile) Close() error { return nil }

func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	entries := d.tree.Entries[d.read:]
	if n > 0 && len(entries) > n {
		entries = entries[:n]
	}
	out := make([]fs.DirEntry, 0, len(entries))
	for _, e := range entries {
		info := entryInfo{name: e.Name, e: e, mtime: d.s.When}
		out = append(out, fs.FileInfoToDirEntry(info))
	}
	d.read += len(entries)
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	if n > 0 && len(out) == 0 {
		return nil, io.EOF
	}
	return out, nil
}
