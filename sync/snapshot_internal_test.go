package sync

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

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
