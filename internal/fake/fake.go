// Package fake holds the one shared fake of each role the agent works
// through (the container engine, the LAN, the fleet repository), in the
// style of restic's mock.Backend: every method calls its function field
// when set, and otherwise does the safe default, which is also what a
// test usually wants: an in-memory engine whose containers appear when
// brought up and go when removed, a LAN that is always found, a source
// that serves a fixed tree. Every call is recorded, so a test asserts on
// what the code under test did.
//
// It imports no role interface (that would make a cycle with the agent's
// own tests); the agent's tests hold the compile-time checks.
package fake

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	stdsync "sync"
	"testing/fstest"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/relocalize"
	"github.com/decnet/pull-agent/report"
)

// Engine is an in-memory container engine. Up creates (or recreates) the
// named services' containers from the Compose project, running; Remove
// deletes them. Containers carry the labels the project gives them, so
// the diff of the next pass sees what a real Engine would show.
type Engine struct {
	ListFn          func(ctx context.Context) ([]engine.Container, error)
	UpFn            func(ctx context.Context, p *types.Project, services, recreate []string) error
	RemoveFn        func(ctx context.Context, ids []string) error
	BuildFn         func(ctx context.Context, p *types.Project, services []string) error
	ImageIDFn       func(ctx context.Context, ref string) (string, error)
	InspectFn       func(ctx context.Context, id string) (engine.State, error)
	CheckNetworkFn  func(ctx context.Context, name string) error
	EnsureNetworkFn func(ctx context.Context, spec engine.NetworkSpec, specHash string) (engine.NetworkInfo, error)

	mu         stdsync.Mutex
	containers map[string]engine.Container // by ID
	networks   map[string]string           // name -> spec hash
	calls      []string
	seq        int
	events     chan engine.Event
}

// NewEngine returns an empty engine.
func NewEngine() *Engine {
	return &Engine{containers: map[string]engine.Container{}, networks: map[string]string{}, events: make(chan engine.Event, 64)}
}

func (e *Engine) record(format string, args ...any) {
	e.mu.Lock()
	e.calls = append(e.calls, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

// failed marks the last call as failed (it changed nothing).
func (e *Engine) failed(err error) error {
	if err != nil {
		e.mu.Lock()
		e.calls[len(e.calls)-1] += " (failed)"
		e.mu.Unlock()
	}
	return err
}

// Calls returns every call made so far, as "Method arg", with " (failed)"
// appended to the calls that returned an error.
func (e *Engine) Calls() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.calls)
}

// Mutations returns the calls that changed the worker (Up, Remove, Build,
// EnsureNetwork, RemoveNetwork that did not fail).
func (e *Engine) Mutations() []string {
	var out []string
	for _, c := range e.Calls() {
		if strings.HasSuffix(c, " (failed)") {
			continue
		}
		for _, m := range []string{"Up ", "Remove ", "Build ", "EnsureNetwork ", "RemoveNetwork "} {
			if strings.HasPrefix(c, m) {
				out = append(out, c)
			}
		}
	}
	return out
}

// Add puts a container in the engine as if something had created it.
func (e *Engine) Add(c engine.Container) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c.ID == "" {
		e.seq++
		c.ID = fmt.Sprintf("c%04d", e.seq)
	}
	e.containers[c.ID] = c
}

// SetState changes a container's state by name (drift by hand).
func (e *Engine) SetState(name, st string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, c := range e.containers {
		if c.Name == name {
			c.State = st
			e.containers[id] = c
		}
	}
}

// Emit sends an Engine event to whoever watches.
func (e *Engine) Emit(ev engine.Event) { e.events <- ev }

// ListContainers implements the role.
func (e *Engine) ListContainers(ctx context.Context) ([]engine.Container, error) {
	e.record("ListContainers")
	if e.ListFn != nil {
		return e.ListFn(ctx)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]engine.Container, 0, len(e.containers))
	for _, c := range e.containers {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b engine.Container) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Up implements the role: each recreated or started service gets a
// running container built from the project's service config.
func (e *Engine) Up(ctx context.Context, p *types.Project, services, recreate []string) error {
	e.record("Up %s", strings.Join(append(slices.Clone(services), recreate...), ","))
	if e.UpFn != nil {
		return e.failed(e.UpFn(ctx, p, services, recreate))
	}
	return e.failed(e.UpDefault(ctx, p, services, recreate))
}

// UpDefault is Up's default behaviour, for an UpFn that wraps it.
func (e *Engine) UpDefault(ctx context.Context, p *types.Project, services, recreate []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, name := range append(slices.Clone(services), recreate...) {
		svc, ok := p.Services[name]
		if !ok {
			for _, s := range p.Services { // start lists container names
				if s.ContainerName == name {
					svc, ok = s, true
				}
			}
		}
		if !ok {
			return fmt.Errorf("fake engine: no service %s in project", name)
		}
		cname := svc.ContainerName
		if cname == "" {
			cname = name
		}
		for id, c := range e.containers {
			if c.Name == cname {
				delete(e.containers, id)
			}
		}
		e.seq++
		c := engine.Container{ID: fmt.Sprintf("c%04d", e.seq), Name: cname, Image: svc.Image, State: "running",
			Labels: map[string]string{}, Networks: map[string]netip.Addr{}, Created: time.Unix(int64(e.seq), 0)}
		for k, v := range svc.Labels {
			c.Labels[k] = v
		}
		for n, cfg := range svc.Networks {
			if cfg != nil {
				if ip, err := netip.ParseAddr(cfg.Ipv4Address); err == nil {
					c.Networks[p.Networks[n].Name] = ip
				}
			}
		}
		e.containers[c.ID] = c
	}
	return nil
}

// Remove implements the role.
func (e *Engine) Remove(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	e.record("Remove %s", strings.Join(ids, ","))
	if e.RemoveFn != nil {
		return e.failed(e.RemoveFn(ctx, ids))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range ids {
		delete(e.containers, id)
	}
	return nil
}

// Build implements the role (a no-op by default).
func (e *Engine) Build(ctx context.Context, p *types.Project, services []string) error {
	e.record("Build %s", strings.Join(services, ","))
	if e.BuildFn != nil {
		return e.BuildFn(ctx, p, services)
	}
	return nil
}

// ImageID implements the role: every image is present by default.
func (e *Engine) ImageID(ctx context.Context, ref string) (string, error) {
	if e.ImageIDFn != nil {
		return e.ImageIDFn(ctx, ref)
	}
	sum := sha256.Sum256([]byte(ref))
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Inspect implements the role: running, never restarted, by default.
func (e *Engine) Inspect(ctx context.Context, id string) (engine.State, error) {
	if e.InspectFn != nil {
		return e.InspectFn(ctx, id)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.containers {
		if c.ID == id || c.Name == id {
			return engine.State{ID: c.ID, Name: c.Name, Status: c.State, Running: c.State == "running", StartedAt: c.Created}, nil
		}
	}
	return engine.State{}, fmt.Errorf("fake engine: no container %s", id)
}

// Logs implements the role.
func (e *Engine) Logs(context.Context, string, int) (string, error) { return "", nil }

// CheckNetwork implements the role: every network is the agent's.
func (e *Engine) CheckNetwork(ctx context.Context, name string) error {
	e.record("CheckNetwork %s", name)
	if e.CheckNetworkFn != nil {
		return e.CheckNetworkFn(ctx, name)
	}
	return nil
}

// EnsureNetwork implements the role. A network whose spec hash changed is
// replaced, and the containers on it go with it, as on a real Engine.
func (e *Engine) EnsureNetwork(ctx context.Context, spec engine.NetworkSpec, specHash string) (engine.NetworkInfo, error) {
	e.record("EnsureNetwork %s", spec.Name)
	if e.EnsureNetworkFn != nil {
		info, err := e.EnsureNetworkFn(ctx, spec, specHash)
		return info, e.failed(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	old, ok := e.networks[spec.Name]
	e.networks[spec.Name] = specHash
	switch {
	case !ok:
		return engine.NetworkInfo{ID: spec.Name, Created: true}, nil
	case old == specHash:
		return engine.NetworkInfo{ID: spec.Name}, nil
	}
	for id, c := range e.containers {
		if _, on := c.Networks[spec.Name]; on {
			delete(e.containers, id)
		}
	}
	return engine.NetworkInfo{ID: spec.Name, Replaced: true}, nil
}

// SetNetworkHash pretends the network exists with another spec.
func (e *Engine) SetNetworkHash(name, hash string) {
	e.mu.Lock()
	e.networks[name] = hash
	e.mu.Unlock()
}

// RemoveNetwork implements the role.
func (e *Engine) RemoveNetwork(_ context.Context, name string) error {
	e.record("RemoveNetwork %s", name)
	e.mu.Lock()
	delete(e.networks, name)
	e.mu.Unlock()
	return nil
}

// Events implements the role: what Emit sends, until ctx ends.
func (e *Engine) Events(ctx context.Context) (<-chan engine.Event, <-chan error) {
	return e.events, make(chan error)
}

// LAN is a detected LAN; probes find nothing by default.
type LAN struct {
	DetectFn func(ctx context.Context, opt hostnet.Options) (relocalize.LAN, error)
	ProbeFn  func(ctx context.Context, iface string, addrs []netip.Addr) (map[netip.Addr]string, error)
	HelperFn func(spec hostnet.HelperSpec) (hostnet.HelperChange, error)

	// The LAN Detect returns by default.
	Default relocalize.LAN

	mu      stdsync.Mutex
	helpers []hostnet.HelperSpec
	probed  []netip.Addr
}

// NewLAN returns 198.51.100.0/24 on eth1, gateway .1, the worker at .2.
func NewLAN() *LAN {
	return &LAN{Default: relocalize.LAN{Interface: "eth1", Subnet: netip.MustParsePrefix("198.51.100.0/24"),
		Gateway: netip.MustParseAddr("198.51.100.1"), HostAddrs: []netip.Addr{netip.MustParseAddr("198.51.100.2")}}}
}

// Detect implements the role.
func (l *LAN) Detect(ctx context.Context, opt hostnet.Options) (relocalize.LAN, error) {
	if l.DetectFn != nil {
		return l.DetectFn(ctx, opt)
	}
	return l.Default, nil
}

// Probe implements the role.
func (l *LAN) Probe(ctx context.Context, iface string, addrs []netip.Addr) (map[netip.Addr]string, error) {
	l.mu.Lock()
	l.probed = append(l.probed, addrs...)
	l.mu.Unlock()
	if l.ProbeFn != nil {
		return l.ProbeFn(ctx, iface, addrs)
	}
	return nil, nil
}

// Probed returns every address probed so far.
func (l *LAN) Probed() []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.probed)
}

// EnsureHelper implements the role.
func (l *LAN) EnsureHelper(spec hostnet.HelperSpec) (hostnet.HelperChange, error) {
	l.mu.Lock()
	l.helpers = append(l.helpers, spec)
	l.mu.Unlock()
	if l.HelperFn != nil {
		return l.HelperFn(spec)
	}
	return hostnet.HelperChange{}, nil
}

// Helpers returns every helper spec asked for.
func (l *LAN) Helpers() []hostnet.HelperSpec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.helpers)
}

// RemoveHelper implements the role.
func (l *LAN) RemoveHelper(string, string) error { return nil }

// Tree is a fleet repository commit held in memory.
type Tree struct{ fstest.MapFS }

// NewTree makes a tree of files (path -> content).
func NewTree(files map[string]string) Tree {
	m := fstest.MapFS{}
	for p, s := range files {
		m[p] = &fstest.MapFile{Data: []byte(s), Mode: 0o644}
	}
	return Tree{m}
}

// ContextHash hashes every file under dir.
func (t Tree) ContextHash(dir string) (string, error) {
	h := sha256.New()
	err := fs.WalkDir(t.MapFS, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(t.MapFS, p)
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
		h.Write(b)
		return err
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// Materialize writes dir's files under dst.
func (t Tree) Materialize(dir, dst string) error {
	return fs.WalkDir(t.MapFS, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel := strings.TrimPrefix(p, path.Clean(dir)+"/")
		b, err := fs.ReadFile(t.MapFS, p)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(rel)), 0o700); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
}

// Source serves commits from memory: the last one Push gave.
type Source struct {
	SyncFn func(ctx context.Context, applied string) (commit string, tree Tree, err error)

	mu      stdsync.Mutex
	commit  string
	tree    Tree
	fetched string // the commit last transferred
	Signer  string
	calls   int
}

// Push makes files the new head commit and returns its hash.
func (s *Source) Push(files map[string]string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := sha256.New()
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for p := range files {
			if !yield(p) {
				return
			}
		}
	}) {
		fmt.Fprintf(h, "%s\x00%s\x00", p, files[p])
	}
	fmt.Fprintf(h, "%s", s.commit) // a parent: the same files twice are two commits
	s.commit, s.tree = hex.EncodeToString(h.Sum(nil))[:40], NewTree(files)
	return s.commit
}

// Calls counts Sync calls.
func (s *Source) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// Sync returns the head commit; Fetched is set the first time a commit is
// served (as a real clone transfers objects only when the head moved).
func (s *Source) Sync(ctx context.Context, applied string) (commit, remote, signer string, fetched bool, tree Tree, err error) {
	s.mu.Lock()
	s.calls++
	fn := s.SyncFn
	s.mu.Unlock()
	if fn != nil {
		commit, tree, err = fn(ctx, applied)
		return commit, "fake://fleet", s.Signer, true, tree, err
	}
	if err := ctx.Err(); err != nil {
		return "", "", "", false, Tree{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.commit == "" {
		return "", "", "", false, Tree{}, fmt.Errorf("fake source: nothing pushed")
	}
	fetched = s.fetched != s.commit
	s.fetched = s.commit
	return s.commit, "fake://fleet", s.Signer, fetched, s.tree, nil
}

// Reporter is a master that accepts everything: Flush takes the outbox's
// pending events (acknowledging them) and keeps them with the heartbeat.
type Reporter struct {
	Outbox  *report.Outbox
	FlushFn func(ctx context.Context, hb report.Heartbeat) (int, error)

	mu         stdsync.Mutex
	events     []report.Event
	heartbeats []report.Heartbeat
}

// Flush implements the role.
func (r *Reporter) Flush(ctx context.Context, hb report.Heartbeat) (int, error) {
	if r.FlushFn != nil {
		return r.FlushFn(ctx, hb)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.heartbeats = append(r.heartbeats, hb)
	if r.Outbox == nil {
		return 0, nil
	}
	es, err := r.Outbox.Pending(1000)
	if err != nil {
		return 0, err
	}
	r.events = append(r.events, es...)
	return len(es), r.Outbox.Ack(es)
}

// Events returns every event delivered so far.
func (r *Reporter) Events() []report.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// Heartbeats returns every heartbeat delivered so far.
func (r *Reporter) Heartbeats() []report.Heartbeat {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.heartbeats)
}
