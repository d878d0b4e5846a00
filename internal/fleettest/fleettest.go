package fleettest

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
)

// ModuleRoot finds the repository root (the directory holding go.mod).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

var (
	decoyMu  stdsync.Mutex
	decoyBin []byte
)

// Decoy compiles cmd/decoy as a static binary (once per test process) and
// returns its bytes.
func Decoy(t testing.TB) []byte {
	t.Helper()
	decoyMu.Lock()
	defer decoyMu.Unlock()
	if decoyBin != nil {
		return decoyBin
	}
	out := filepath.Join(t.TempDir(), "decoy")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/decoy")
	cmd.Dir = ModuleRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the decoy: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	decoyBin = b
	return b
}

// Example creates a git repository (work tree and bare origin under dir)
// holding examples/fleet-repo with the decoy in every build context, minus
// the example's host files, plus the given files. It does not commit.
func Example(t testing.TB, dir string, files map[string]string) *gittest.Repo {
	t.Helper()
	repo := gittest.New(t, dir, "fleet")
	src := filepath.Join(ModuleRoot(t), "examples", "fleet-repo")
	decoy := Decoy(t)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(repo.Work, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if strings.HasPrefix(rel, "hosts"+string(filepath.Separator)) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if d.Name() == "Dockerfile" {
			if err := os.WriteFile(filepath.Join(filepath.Dir(dst), "decoy"), decoy, 0o755); err != nil {
				return err
			}
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	// The example's .gitignore keeps the decoy out of the pull-agent
	// repository; this fleet repository must carry it.
	_ = os.Remove(filepath.Join(repo.Work, ".gitignore"))
	repo.Write(files)
	return repo
}

// AddDecoy copies the decoy binary into a build context directory of the
// repository's work tree.
func AddDecoy(t testing.TB, repo *gittest.Repo, contextDir string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(repo.Work, contextDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo.Work, contextDir, "decoy"), Decoy(t), 0o755); err != nil {
		t.Fatal(err)
	}
}
