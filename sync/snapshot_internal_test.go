package sync

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
)

// A hostile repository can hold tree entries git itself would never write
// ("../x", ".git"). Writing a build context must refuse them, not follow.
func TestMaterializeRefusesUnsafeTreeEntries(t *testing.T) {
	for _, bad := range []string{"../../escaped", ".git", "a/b", ".."} {
		t.Run(bad, func(t *testing.T) {
			st := memory.NewStorage()
			put := func(typ plumbing.ObjectType, enc func(plumbing.EncodedObject) error) plumbing.Hash {
				o := st.NewEncodedObject()
				o.SetType(typ)
				if err := enc(o); err != nil {
					t.Fatal(err)
				}
				h, err := st.SetEncodedObject(o)
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
			blob := put(plumbing.BlobObject, func(o plumbing.EncodedObject) error {
				w, _ := o.Writer()
				_, err := w.Write([]byte("pwned"))
				w.Close()
				return err
			})
			entries := []object.TreeEntry{
				{Name: "Dockerfile", Mode: filemode.Regular, Hash: blob},
				{Name: bad, Mode: filemode.Regular, Hash: blob},
			}
			sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name }) // go-git insists
			ctx := put(plumbing.TreeObject, (&object.Tree{Entries: entries}).Encode)
			root := put(plumbing.TreeObject, (&object.Tree{Entries: []object.TreeEntry{{Name: "ctx", Mode: filemode.Dir, Hash: ctx}}}).Encode)
			tree, err := object.GetTree(st, root)
			if err != nil {
				t.Fatal(err)
			}
			base := t.TempDir()
			dst := filepath.Join(base, "out", "context")
			os.MkdirAll(filepath.Dir(dst), 0o755)
			err = (&Snapshot{tree: tree}).Materialize("ctx", dst)
			if err == nil || !strings.Contains(err.Error(), "not a safe file name") {
				t.Fatalf("want a refusal, got %v", err)
			}
			if _, err := os.Stat(filepath.Join(base, "escaped")); err == nil {
				t.Fatal("a file was written outside the build context")
			}
			if _, err := os.Stat(dst); err == nil {
				t.Fatal("a refused context was left in place")
			}
		})
	}
}

// TestVerifyReadsEachBlobOnce: the same blob at several paths (one decoy
// binary in every service's build context) is read once when a kept clone
// is opened; a missing blob still fails the check.
func TestVerifyReadsEachBlobOnce(t *testing.T) {
	st := memory.NewStorage()
	put := func(typ plumbing.ObjectType, enc func(plumbing.EncodedObject) error) plumbing.Hash {
		o := st.NewEncodedObject()
		o.SetType(typ)
		if err := enc(o); err != nil {
			t.Fatal(err)
		}
		h, err := st.SetEncodedObject(o)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	blob := func(data string) plumbing.Hash {
		return put(plumbing.BlobObject, func(o plumbing.EncodedObject) error {
			w, _ := o.Writer()
			_, err := w.Write([]byte(data))
			w.Close()
			return err
		})
	}
	tree := func(entries ...object.TreeEntry) plumbing.Hash {
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
		return put(plumbing.TreeObject, (&object.Tree{Entries: entries}).Encode)
	}
	bin, conf := blob("a large decoy binary"), blob("port: 22")
	svc := tree(object.TreeEntry{Name: "decoy", Mode: filemode.Executable, Hash: bin}, object.TreeEntry{Name: "Dockerfile", Mode: filemode.Regular, Hash: conf})
	root := tree(object.TreeEntry{Name: "ssh", Mode: filemode.Dir, Hash: svc}, object.TreeEntry{Name: "http", Mode: filemode.Dir, Hash: svc},
		object.TreeEntry{Name: "ftp", Mode: filemode.Dir, Hash: svc}, object.TreeEntry{Name: "fleet.yaml", Mode: filemode.Regular, Hash: conf})
	tr, err := object.GetTree(st, root)
	if err != nil {
		t.Fatal(err)
	}
	n, err := (&Snapshot{tree: tr}).verify()
	if err != nil || n != 2 {
		t.Errorf("verify read %d blobs (err %v) of a tree of 7 files holding 2 distinct blobs, want 2", n, err)
	}

	missing := plumbing.NewHash("0123456789abcdef0123456789abcdef01234567")
	bad := tree(object.TreeEntry{Name: "a", Mode: filemode.Regular, Hash: conf}, object.TreeEntry{Name: "b", Mode: filemode.Regular, Hash: missing})
	tr, err = object.GetTree(st, bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&Snapshot{tree: tr}).verify(); err == nil {
		t.Error("a tree with a missing blob verified")
	}
}

// fileTrailer is what lets a reopened clone skip inflating its objects: a
// pack or index ending in the SHA-1 of its content passes, and any changed
// byte or a cut file fails, naming the file.
func TestFileTrailer(t *testing.T) {
	repo := gittest.New(t, t.TempDir(), "fleet")
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n", "hosts/a.yaml": "deckies: []\n"})
	repo.Commit("first")
	gittest.Git(t, repo.Bare, "repack", "-a", "-d", "-q")
	packs, _ := filepath.Glob(filepath.Join(repo.Bare, "objects", "pack", "*.pack"))
	if len(packs) != 1 {
		t.Fatalf("packs: %v", packs)
	}
	idx := strings.TrimSuffix(packs[0], ".pack") + ".idx"
	sum, _, err := fileTrailer(packs[0])
	if err != nil {
		t.Fatalf("intact pack: %v", err)
	}
	if _, named, err := fileTrailer(idx); err != nil || string(named) != string(sum) {
		t.Fatalf("intact index: %v (names its pack: %v)", err, string(named) == string(sum))
	}
	for _, p := range []string{packs[0], idx} {
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			data []byte
			want string
		}{
			{"a byte flipped", func() []byte { b := append([]byte(nil), orig...); b[len(b)/3] ^= 0x80; return b }(), "checksum mismatch"},
			{"the trailer cut", orig[:len(orig)-1], "checksum mismatch"},
			{"almost empty", orig[:10], "truncated"},
		} {
			bad := filepath.Join(t.TempDir(), filepath.Base(p))
			if err := os.WriteFile(bad, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, _, err := fileTrailer(bad); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), filepath.Base(p)) {
				t.Errorf("%s, %s: err = %v, want %q naming the file", filepath.Base(p), tc.name, err, tc.want)
			}
		}
	}
}
