package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	stdsync "sync"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/reaper"
)

// Engine is what applying needs from Docker and Compose (engine.Docker).
type Engine interface {
	ImageID(ctx context.Context, ref string) (string, error)
	Build(ctx context.Context, p *types.Project, services []string) error
	Up(ctx context.Context, p *types.Project, services, recreate []string) error
	Remove(ctx context.Context, ids []string) error
	Inspect(ctx context.Context, id string) (engine.State, error)
	Logs(ctx context.Context, id string, lines int) (string, error)
}

// Materializer writes a build context of the fleet repo to disk
// (fleetsync.Snapshot).
type Materializer interface {
	Materialize(dir, dst string) error
}

// SteadyOptions define "converged": every container of the decky running
// (and healthy, if it has a health check), with no restart, for Samples
// consecutive samples Interval apart, within Timeout.
type SteadyOptions struct {
	Samples  int
	Interval time.Duration
	Timeout  time.Duration
}

// Options tune an Applier; zero fields take the defaults.
type Options struct {
	Parallel   int // deckies applied at once; default 4
	Steady     SteadyOptions
	LogLines   int    // container log lines quoted in a failure; default 20
	ContextDir string // scratch directory for build contexts (required to build)
	AllowPull  bool   // let Compose pull missing image references
	// LANCheck, when set, is part of success: after a decky's containers
	// are steady, each declared TCP port of each service with the check on
	// must accept a connection at the decky's address (see [PortChecker],
	// [DialChecker]). The caller must make the decky's address reachable
	// from the worker (the host helper link's route) before Apply. nil
	// turns the check off.
	LANCheck PortChecker
}

// DefaultOptions returns the production settings.
func DefaultOptions() Options {
	return Options{Parallel: 4, Steady: SteadyOptions{Samples: 3, Interval: time.Second, Timeout: 90 * time.Second}, LogLines: 20}
}

// Status of a lifecycle result.
const (
	Succeeded = "succeeded"
	FailedSt  = "failed"
)

// Result is the outcome of applying one entry.
type Result struct {
	Decky       string
	Action      Action
	Operation   Operation
	Status      string // succeeded or failed
	Error       string
	Hash        string
	StartedAt   time.Time
	CompletedAt time.Time
}

// Applier applies change sets for one fleet (its Compose project name) and
// network. Each decky is applied as a Compose project of its own
// ([DeckyProject]), except a decky already running under another project
// name (an older agent's one shared project): it stays there until all its
// containers are replaced anyway, so an upgrade of the agent recreates
// nothing.
type Applier struct {
	eng        Engine
	opt        Options
	log        *slog.Logger
	project    string
	workingDir string
	network    engine.NetworkSpec
}

// NewApplier returns an Applier.
func NewApplier(eng Engine, project, workingDir string, network engine.NetworkSpec, opt Options, log *slog.Logger) *Applier {
	def := DefaultOptions()
	if opt.Parallel <= 0 {
		opt.Parallel = def.Parallel
	}
	if opt.Steady.Samples <= 0 {
		opt.Steady.Samples = def.Steady.Samples
	}
	if opt.Steady.Interval <= 0 {
		opt.Steady.Interval = def.Steady.Interval
	}
	if opt.Steady.Timeout <= 0 {
		opt.Steady.Timeout = def.Steady.Timeout
	}
	if opt.LogLines <= 0 {
		opt.LogLines = def.LogLines
	}
	return &Applier{eng: eng, opt: opt, log: log.With("component", "apply"), project: project, workingDir: workingDir, network: network}
}

// Apply applies every changing entry of cs and returns one result per
// changing entry, in decky order. Deckies are independent: a failure
// (image, build, Compose, steady state) fails that decky only. Apply
// returns only after every started decky has finished or failed.
func (a *Applier) Apply(ctx context.Context, cs ChangeSet, tree Materializer) []Result {
	var todo []Entry
	for _, e := range cs.Entries {
		if e.Changes() {
			todo = append(todo, e)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	imgErr := a.ensureImages(ctx, todo, cs.Entries, tree)

	results := make([]Result, len(todo))
	sem := make(chan struct{}, a.opt.Parallel)
	var wg stdsync.WaitGroup
	for i, e := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r := Result{Decky: e.Decky, Action: e.Action, Operation: e.Operation, Hash: e.Hash, StartedAt: time.Now().UTC()}
			err := a.applyOne(ctx, e, imgErr)
			r.CompletedAt = time.Now().UTC()
			r.Status = Succeeded
			if err != nil {
				r.Status, r.Error = FailedSt, err.Error()
				a.log.WarnContext(ctx, "decky failed", "decky", e.Decky, "action", e.Action, "err", err)
			} else {
				a.log.InfoContext(ctx, "decky converged", "decky", e.Decky, "action", e.Action, "took", r.CompletedAt.Sub(r.StartedAt).Round(time.Millisecond))
			}
			results[i] = r
		}()
	}
	wg.Wait()
	return results
}

func (a *Applier) applyOne(ctx context.Context, e Entry, imgErr map[string]error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if e.Action == Remove {
		return reaper.RemoveDecky(ctx, a.eng, e.observed)
	}
	d := e.spec
	for _, img := range d.Images {
		if err := imgErr[img.Ref]; err != nil {
			return err
		}
	}
	project, move := e.composeProject(a.project)
	if move {
		// The decky lives in an older, shared Compose project and every one
		// of its containers is replaced now anyway (RecreateBase): they are
		// removed first, so that Compose creates the decky in its own
		// project instead of finding their names taken.
		if err := reaper.RemoveDecky(ctx, a.eng, e.observed); err != nil {
			return fmt.Errorf("failed to remove the decky's containers to move it to Compose project %s: %w", project, err)
		}
	} else if len(e.Drop) > 0 {
		drop := map[string]bool{}
		for _, s := range e.Drop {
			drop[s] = true
		}
		var ids []string
		for _, c := range e.observed {
			if c.Labels[engine.LabelRole] == engine.RoleService && drop[c.Labels[engine.LabelServiceName]] {
				ids = append(ids, c.ID)
			}
		}
		if err := a.eng.Remove(ctx, ids); err != nil {
			return fmt.Errorf("failed to remove dropped services: %w", err)
		}
	}
	var recreate, start []string
	if e.RecreateBase {
		recreate = append(recreate, d.Base.Name)
	}
	for _, s := range d.Services {
		for _, want := range e.Services {
			if s.Service == want {
				recreate = append(recreate, s.Name)
			}
		}
	}
	start = append(start, e.Start...)
	if len(recreate) > 0 || len(start) > 0 {
		p := d.Project(project, a.workingDir, a.network)
		if len(recreate) > 0 {
			if err := a.eng.Up(ctx, p, nil, recreate); err != nil {
				return fmt.Errorf("compose up: %w", err)
			}
		}
		if len(start) > 0 {
			if err := a.eng.Up(ctx, p, start, nil); err != nil {
				return fmt.Errorf("compose up: %w", err)
			}
		}
	}
	if err := a.waitSteady(ctx, d); err != nil {
		return err
	}
	return a.checkLAN(ctx, d)
}

// ensureImages builds every missing image the changing deckies need, once
// each, and checks that reference images are present. It returns the
// error of each image that is not usable, by reference. entries are all
// of the pass's entries: an image another Dockerfile builds FROM may
// belong to a decky that does not change.
func (a *Applier) ensureImages(ctx context.Context, todo, entries []Entry, tree Materializer) map[string]error {
	errs := map[string]error{}
	seen := map[string]bool{}
	var imgs []Image
	for _, e := range todo {
		if e.spec == nil {
			continue
		}
		for _, img := range e.spec.Images {
			if !seen[img.Ref] {
				seen[img.Ref] = true
				imgs = append(imgs, img)
			}
		}
	}
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].Ref < imgs[j].Ref })
	b := &builder{a: a, tree: tree, jobs: map[string]Image{}, done: map[string]error{}, busy: map[string]bool{}}
	for _, e := range entries {
		if e.spec == nil {
			continue
		}
		for _, img := range e.spec.Images {
			if img.Build != nil {
				b.jobs[img.Build.Tag] = img
			}
		}
	}
	for _, img := range imgs {
		if img.Build != nil {
			if err := b.ensure(ctx, img); err != nil {
				errs[img.Ref] = err
			}
			continue
		}
		if img.ID != "" {
			continue // ResolveImages found it locally this pass
		}
		id, err := a.eng.ImageID(ctx, img.Ref)
		switch {
		case err != nil:
			errs[img.Ref] = err
		case id == "" && !a.opt.AllowPull:
			errs[img.Ref] = fmt.Errorf("image %s (%s) is not present on this worker and registry pulls are disabled; load it or enable --allow-pull", img.Ref, img.Key)
		}
	}
	return errs
}

// builder builds the pass's images from the fleet repository, each at most
// once, dependencies first: a Dockerfile may build FROM an image another
// build context of the same repository produces in this pass.
type builder struct {
	a    *Applier
	tree Materializer
	jobs map[string]Image // by tag: every image this pass can build
	done map[string]error // by tag: built (nil) or failed
	busy map[string]bool  // by tag: being built (cycle detection)
}

func (b *builder) ensure(ctx context.Context, img Image) error {
	tag := img.Build.Tag
	if err, ok := b.done[tag]; ok {
		return err
	}
	if b.busy[tag] {
		return &BuildRefusedError{File: dockerfilePath(img.Build), Image: tag, Reason: "the Dockerfile needs the image it builds (a cycle through FROM or --from)"}
	}
	b.busy[tag] = true
	err := b.buildIfMissing(ctx, img)
	delete(b.busy, tag)
	b.done[tag] = err
	return err
}

func (b *builder) buildIfMissing(ctx context.Context, img Image) error {
	id, err := b.a.eng.ImageID(ctx, img.Ref)
	if err != nil || id != "" {
		return err // an error, or built before (the tag is content-derived)
	}
	return b.a.build(ctx, img, b.tree, b.resolve)
}

// resolve makes sure an image a Dockerfile names is on the worker without
// any network: built from this repository (first, if needed) or present.
func (b *builder) resolve(ctx context.Context, file string, ref imageRef) error {
	if dep, ok := b.jobs[ref.Name]; ok {
		if err := b.ensure(ctx, dep); err != nil {
			return &BuildRefusedError{File: file, Line: ref.Line, Image: ref.Name,
				Reason: fmt.Sprintf("%s names an image built from %s in this repository, which failed: %v", ref.What, dep.Build.Context, err)}
		}
		return nil
	}
	id, err := b.a.eng.ImageID(ctx, ref.Name)
	if err != nil {
		return fmt.Errorf("%s:%d: %s %s: %w", file, ref.Line, ref.What, ref.Name, err)
	}
	if id == "" {
		return &BuildRefusedError{File: file, Line: ref.Line, Image: ref.Name,
			Reason: fmt.Sprintf("%s names an image that is not present on this worker, and builds never pull; load it (docker load) or build it from this repository", ref.What)}
	}
	return nil
}

func dockerfilePath(b *BuildJob) string {
	df := b.Dockerfile
	if df == "" {
		df = "Dockerfile"
	}
	return path.Join(b.Context, df)
}

// build builds one image from the fleet repository. Before the Engine is
// asked, every image the Dockerfile names is resolved offline (resolve);
// the build itself runs with no network for RUN steps and never pulls.
func (a *Applier) build(ctx context.Context, img Image, tree Materializer, resolve func(context.Context, string, imageRef) error) error {
	if tree == nil || a.opt.ContextDir == "" {
		return fmt.Errorf("cannot build %s: no fleet repository snapshot", img.Ref)
	}
	if err := os.MkdirAll(a.opt.ContextDir, 0o700); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(a.opt.ContextDir, "ctx-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctxDir := filepath.Join(dir, "context")
	if err := tree.Materialize(img.Build.Context, ctxDir); err != nil {
		return err
	}
	file := dockerfilePath(img.Build)
	df := img.Build.Dockerfile
	if df == "" {
		df = "Dockerfile"
	}
	dt, err := os.ReadFile(filepath.Join(ctxDir, filepath.FromSlash(df)))
	if err != nil {
		return fmt.Errorf("cannot build %s: %w", img.Key, err)
	}
	refs, err := dockerfileImages(dt, file, img.Build.Args)
	if err != nil {
		return fmt.Errorf("cannot build %s: %w", img.Key, err)
	}
	for _, r := range refs {
		if err := resolve(ctx, file, r); err != nil {
			return fmt.Errorf("cannot build %s: %w", img.Key, err)
		}
	}
	args := types.MappingWithEquals{}
	for k, v := range img.Build.Args {
		args[k] = ptr(v)
	}
	name := "build"
	p := &types.Project{Name: a.project + "-build", WorkingDir: dir, Services: types.Services{name: {
		Name:  name,
		Image: img.Build.Tag,
		// Network "none": RUN steps get no network. Pull false: base
		// images are never refreshed from a registry (resolved above).
		Build: &types.BuildConfig{Context: ctxDir, Dockerfile: img.Build.Dockerfile, Args: args, Network: "none", Pull: false},
	}}}
	start := time.Now()
	if err := a.eng.Build(ctx, p, []string{name}); err != nil {
		return fmt.Errorf("failed to build %s from %s in the fleet repo: %w", img.Key, img.Build.Context, err)
	}
	a.log.InfoContext(ctx, "built image", "image", img.Build.Tag, "context", img.Build.Context, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

type sample struct {
	restarts int
	started  time.Time
}

// waitSteady polls the decky's containers until every one is running (and
// healthy) without restarting for the configured number of consecutive
// samples. On timeout the error lists each container's state and its last
// log lines, so the report says why.
func (a *Applier) waitSteady(ctx context.Context, d *DeckySpec) error {
	ctx, cancel := context.WithTimeout(ctx, a.opt.Steady.Timeout)
	defer cancel()
	names := []string{}
	for _, c := range d.Containers() {
		names = append(names, c.Name)
	}
	prev := map[string]sample{}
	first := map[string]int{} // restart count when first seen
	good := 0
	var last map[string]engine.State
	for {
		ok := true
		cur := map[string]engine.State{}
		for _, n := range names {
			st, err := a.eng.Inspect(ctx, n)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				ok = false
				cur[n] = engine.State{Name: n, Status: "missing", Error: err.Error()}
				continue
			}
			cur[n] = st
			if _, ok := first[n]; !ok {
				first[n] = st.RestartCount
			}
			p, seen := prev[n]
			if !st.Running || st.Restarting || (st.Health != "" && st.Health != "healthy") ||
				(seen && (p.restarts != st.RestartCount || !p.started.Equal(st.StartedAt))) {
				ok = false
			}
			prev[n] = sample{st.RestartCount, st.StartedAt}
		}
		if ctx.Err() == nil {
			last = cur
		}
		if ok && ctx.Err() == nil {
			good++
			if good >= a.opt.Steady.Samples {
				return nil
			}
		} else {
			good = 0
		}
		select {
		case <-ctx.Done():
			return a.notSteady(d, names, last, first)
		case <-time.After(a.opt.Steady.Interval):
		}
	}
}

func (a *Applier) notSteady(d *DeckySpec, names []string, last map[string]engine.State, first map[string]int) error {
	// The pass context may be over too; logs get a short deadline of their own.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "decky %s did not reach a steady state within %s", d.Name, a.opt.Steady.Timeout)
	for _, n := range names {
		st := last[n]
		// A crash-looping container may look running at the last sample:
		// its restarts during the wait give it away.
		if st.Running && !st.Restarting && (st.Health == "" || st.Health == "healthy") && st.RestartCount == first[n] {
			continue
		}
		fmt.Fprintf(&b, "\n%s: %s", n, describe(st))
		if logs, err := a.eng.Logs(ctx, n, a.opt.LogLines); err == nil && logs != "" {
			fmt.Fprintf(&b, "\n  last log lines:\n    %s", strings.ReplaceAll(logs, "\n", "\n    "))
		}
	}
	return errors.New(b.String())
}

func describe(st engine.State) string {
	if st.Status == "" {
		return "no state observed"
	}
	parts := []string{st.Status}
	if !st.Running || st.Restarting {
		parts = append(parts, fmt.Sprintf("exit code %d", st.ExitCode))
	}
	if st.RestartCount > 0 {
		parts = append(parts, fmt.Sprintf("restarted %d times", st.RestartCount))
	}
	if st.Health != "" {
		parts = append(parts, "health "+st.Health)
	}
	if st.OOMKilled {
		parts = append(parts, "OOM-killed")
	}
	if st.Error != "" {
		parts = append(parts, st.Error)
	}
	return strings.Join(parts, ", ")
}
