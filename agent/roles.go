package agent

import (
	"context"
	"io/fs"
	"net/netip"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/relocalize"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// Engine is what a pass calls on the container engine: listing, the decoy
// network, everything applying needs, and the event stream the daemon
// watches for drift. engine.Docker is the production one.
type Engine interface {
	apply.Engine
	ListContainers(ctx context.Context) ([]engine.Container, error)
	// CheckNetwork fails when a network of that name exists and is not
	// this agent's.
	CheckNetwork(ctx context.Context, name string) error
	EnsureNetwork(ctx context.Context, spec engine.NetworkSpec, specHash string) (engine.NetworkInfo, error)
	RemoveNetwork(ctx context.Context, name string) error
	// Events streams changes to owned containers until ctx ends; the
	// error channel yields once when the stream breaks.
	Events(ctx context.Context) (<-chan engine.Event, <-chan error)
}

// LAN is the worker's decoy network: detection, duplicate-address probes
// and the host helper link. [HostLAN] is the production one.
type LAN interface {
	Detect(ctx context.Context, opt hostnet.Options) (relocalize.LAN, error)
	// Probe reports which addresses answer on iface, with a description.
	Probe(ctx context.Context, iface string, addrs []netip.Addr) (map[netip.Addr]string, error)
	EnsureHelper(spec hostnet.HelperSpec) (hostnet.HelperChange, error)
	RemoveHelper(name, owner string) error
}

// Tree is the content of one commit of the fleet repository: readable as
// a file system, with build contexts hashed and written out on demand.
type Tree interface {
	fs.FS
	apply.ContextHasher
	apply.Materializer
}

// Revision is what a [Source] fetched.
type Revision struct {
	Commit  string // full hex hash
	Remote  string // redacted URL that served it
	Fetched bool   // objects were transferred by this call
	// Signer names who signed the commit when a trust policy is set; ""
	// when none is (reported as "none").
	Signer string
	Tree   Tree
}

// Source is the fleet repository. Sync returns the commit to apply, given
// the one applied last (for anti-rollback and to skip unchanged fetches).
// A refusal (untrusted signature, rollback) is a *fleetsync.RefusedError.
type Source interface {
	Sync(ctx context.Context, applied string) (Revision, error)
}

// Reporter delivers the outbox and a heartbeat to the master
// (report.Sender). Nil in [Deps] means no master: events are logged only.
type Reporter interface {
	Flush(ctx context.Context, hb report.Heartbeat) (int, error)
}

// SyncSource adapts a fleetsync.Syncer to [Source].
type SyncSource struct{ Syncer *fleetsync.Syncer }

// Sync implements [Source].
func (s SyncSource) Sync(ctx context.Context, applied string) (Revision, error) {
	snap, err := s.Syncer.Sync(ctx, applied)
	if err != nil {
		return Revision{}, err
	}
	return Revision{Commit: snap.Commit, Remote: snap.Remote, Fetched: snap.Fetched, Signer: snap.Signer, Tree: snap}, nil
}

// HostLAN adapts a hostnet.Detector (and hostnet.Probe) to [LAN].
type HostLAN struct {
	*hostnet.Detector
	ProbeOptions hostnet.ProbeOptions
}

// Probe implements [LAN] with ARP duplicate-address detection.
func (h HostLAN) Probe(ctx context.Context, iface string, addrs []netip.Addr) (map[netip.Addr]string, error) {
	found, err := hostnet.Probe(ctx, iface, addrs, h.ProbeOptions)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Addr]string, len(found))
	for ip, c := range found {
		out[ip] = c.String()
	}
	return out, nil
}

// The production implementations of the roles.
var (
	_ Engine   = (*engine.Docker)(nil)
	_ LAN      = HostLAN{}
	_ Source   = SyncSource{}
	_ Reporter = (*report.Sender)(nil)
)
