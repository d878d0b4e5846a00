package apply

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/decnet/pull-agent/engine"
)

// buildEngine is a fake Engine for the build path: a set of present
// images, and a record of every build asked for. Builds "succeed" by
// adding the tag to the present images, unless failBuild names it.
type buildEngine struct {
	Engine
	mu        stdsync.Mutex
	present   map[string]bool
	failBuild map[string]bool
	builds    []types.ServiceConfig
	inspected []string
}

func (e *buildEngine) ImageID(_ context.Context, ref string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.inspected = append(e.inspected, ref)
	if e.present[ref] {
		return "sha256:" + ref, nil
	}
	return "", nil
}

func (e *buildEngine) Build(_ context.Context, p *types.Project, services []string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	svc := p.Services[services[0]]
	e.builds = append(e.builds, svc)
	if e.failBuild[svc.Image] {
		return errors.New("RUN step failed")
	}
	e.present[svc.Image] = true
	return nil
}

// dirTree materializes build contexts from an in-memory map of
// "context/file" -> content.
type dirTree map[string]string

func (t dirTree) Materialize(dir, dst string) error {
	for p, data := range t {
		rel, ok := strings.CutPrefix(p, dir+"/")
		if !ok {
			continue
		}
		f := filepath.Join(dst, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func buildImage(name, ctxDir string) Image {
	tag := "pull-agent/svc-" + name + ":1"
	return Image{Key: "service/" + name, Ref: tag, Build: &BuildJob{Tag: tag, Context: ctxDir}}
}

func entryWith(imgs ...Image) Entry {
	return Entry{Decky: "d", Action: Create, spec: &DeckySpec{Name: "d", Images: imgs}}
}

func TestBuildsNeverReachANetwork(t *testing.T) {
	absent := buildImage("absent", "services/absent")
	local := buildImage("local", "services/local")
	child := buildImage("child", "services/child")
	parent := buildImage("parent", "services/parent")
	broken := buildImage("broken", "services/broken")
	orphan := buildImage("orphan", "services/orphan")
	tree := dirTree{
		"services/absent/Dockerfile": "FROM scratch AS tools\nFROM registry.example/decoys/absent:1\nCOPY --from=tools / /\n",
		"services/local/Dockerfile":  "FROM debian:bookworm-slim\nRUN apt-get install -y nothing\n",
		"services/child/Dockerfile":  "FROM " + parent.Ref + "\n",
		"services/parent/Dockerfile": "FROM scratch\n",
		"services/broken/Dockerfile": "FROM scratch\n",
		"services/orphan/Dockerfile": "FROM " + broken.Ref + "\n",
	}
	eng := &buildEngine{present: map[string]bool{"debian:bookworm-slim": true}, failBuild: map[string]bool{broken.Ref: true}}
	a := NewApplier(eng, "p", "/", engine.NetworkSpec{}, Options{ContextDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	// parent is needed by child only, and by a decky that does not change.
	todo := []Entry{entryWith(absent), entryWith(local), entryWith(child), entryWith(orphan)}
	all := append(append([]Entry(nil), todo...), Entry{Decky: "u", Action: Unchanged, spec: &DeckySpec{Images: []Image{parent, broken}}})
	errs := a.ensureImages(t.Context(), todo, all, tree)

	// The absent base fails its image at once, naming the image and the
	// Dockerfile line, and the Engine is never asked to build it.
	err := errs[absent.Ref]
	if err == nil || !errors.Is(err, ErrBuildRefused) {
		t.Fatalf("absent base: %v, want a build refusal", err)
	}
	for _, s := range []string{"registry.example/decoys/absent:1", "services/absent/Dockerfile:2", "not present on this worker"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("absent base error %q does not contain %q", err, s)
		}
	}
	// A build FROM another build of this pass fails when that one fails.
	if err := errs[orphan.Ref]; err == nil || !strings.Contains(err.Error(), "services/broken") || !strings.Contains(err.Error(), "RUN step failed") {
		t.Errorf("orphan: %v, want the failed build it depends on", err)
	}
	if errs[local.Ref] != nil || errs[child.Ref] != nil {
		t.Errorf("unexpected errors: %v", errs)
	}
	var order []string
	for _, b := range eng.builds {
		order = append(order, b.Image)
		if b.Build.Network != "none" || b.Build.Pull {
			t.Errorf("%s built with network %q pull %v, want none and no pull", b.Image, b.Build.Network, b.Build.Pull)
		}
	}
	// Sorted order would build child before parent: dependencies go first.
	want := []string{parent.Ref, child.Ref, local.Ref, broken.Ref}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("builds %v, want %v", order, want)
	}
	for _, ref := range eng.inspected {
		if ref == "scratch" || ref == "tools" {
			t.Errorf("asked the Engine about %q, which is not an image", ref)
		}
	}
}

func TestBuildCycleIsRefused(t *testing.T) {
	x, y := buildImage("x", "services/x"), buildImage("y", "services/y")
	tree := dirTree{"services/x/Dockerfile": "FROM " + y.Ref + "\n", "services/y/Dockerfile": "FROM " + x.Ref + "\n"}
	eng := &buildEngine{present: map[string]bool{}}
	a := NewApplier(eng, "p", "/", engine.NetworkSpec{}, Options{ContextDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	todo := []Entry{entryWith(x, y)}
	errs := a.ensureImages(t.Context(), todo, todo, tree)
	if errs[x.Ref] == nil || errs[y.Ref] == nil || !strings.Contains(errs[x.Ref].Error(), "cycle") {
		t.Errorf("errors %v, want a cycle refusal for both", errs)
	}
	if len(eng.builds) != 0 {
		t.Errorf("built %d images", len(eng.builds))
	}
}
