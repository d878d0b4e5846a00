package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/containerd/errdefs"
	"github.com/docker/cli/cli/command"
	"github.com/docker/cli/cli/flags"
	"github.com/docker/compose/v2/pkg/api"
	"github.com/docker/compose/v2/pkg/compose"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/sirupsen/logrus"
)

// Options bound every call the adapter makes.
type Options struct {
	CallTimeout  time.Duration // one Engine API call; default 30s
	UpTimeout    time.Duration // one Compose up of one decky; default 5m
	BuildTimeout time.Duration // one image build; default 10m
	StopGrace    time.Duration // SIGTERM to SIGKILL when stopping; default 10s
}

// DefaultOptions returns the production deadlines.
func DefaultOptions() Options {
	return Options{CallTimeout: 30 * time.Second, UpTimeout: 5 * time.Minute, BuildTimeout: 10 * time.Minute, StopGrace: 10 * time.Second}
}

// Docker talks to one Docker Engine on behalf of one agent identity.
type Docker struct {
	owner string
	opt   Options
	log   *slog.Logger
	api   client.APIClient

	composeMu     stdsync.Mutex
	compose       api.Compose // set up on first use (composer)
	composeSetups atomic.Int32
}

// New connects to the Engine named by the environment (DOCKER_HOST, or the
// local socket), negotiating the API version: Debian's 20.10 engine speaks
// 1.41, older than the client library.
func New(ctx context.Context, owner string, opt Options, log *slog.Logger) (*Docker, error) {
	if owner == "" {
		return nil, errors.New("engine: empty owner identity")
	}
	def := DefaultOptions()
	if opt.CallTimeout == 0 {
		opt.CallTimeout = def.CallTimeout
	}
	if opt.UpTimeout == 0 {
		opt.UpTimeout = def.UpTimeout
	}
	if opt.BuildTimeout == 0 {
		opt.BuildTimeout = def.BuildTimeout
	}
	if opt.StopGrace == 0 {
		opt.StopGrace = def.StopGrace
	}
	log = log.With("component", "engine")
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("failed to create Docker client: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, opt.CallTimeout)
	defer cancel()
	if _, err := c.Ping(pingCtx); err != nil {
		c.Close()
		return nil, fmt.Errorf("Docker Engine is not reachable: %w", err)
	}
	return &Docker{owner: owner, opt: opt, log: log, api: c}, nil
}

// composer returns the Compose service, set up on first use: a pass with
// nothing to apply (every no-op `once`) needs none, and setting it up
// reads the Docker CLI's configuration and contexts.
func (d *Docker) composer() (api.Compose, error) {
	d.composeMu.Lock()
	defer d.composeMu.Unlock()
	if d.compose != nil {
		return d.compose, nil
	}
	// Compose reports progress on the CLI's streams and warns through the
	// global logrus logger; both are routed to our structured log instead
	// of the terminal.
	out := &logWriter{log: d.log.With("source", "compose")}
	cli, err := command.NewDockerCli(command.WithAPIClient(d.api), command.WithOutputStream(out), command.WithErrorStream(out))
	if err != nil {
		return nil, fmt.Errorf("failed to set up Compose: %w", err)
	}
	if err := cli.Initialize(flags.NewClientOptions()); err != nil {
		return nil, fmt.Errorf("failed to set up Compose: %w", err)
	}
	routeLogrus(d.log)
	d.compose = compose.NewComposeService(cli)
	d.composeSetups.Add(1)
	return d.compose, nil
}

// ComposeSetups is how many times this adapter set up a Compose service
// (0 or 1): a pass that applies nothing makes none.
func (d *Docker) ComposeSetups() int { return int(d.composeSetups.Load()) }

// Owner is the identity written into LabelOwner.
func (d *Docker) Owner() string { return d.owner }

// Close releases the client.
func (d *Docker) Close() error { return d.api.Close() }

func (d *Docker) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.opt.CallTimeout)
}

// ListContainers returns every container on the Engine, owned or not: the
// agent needs foreign ones too, to avoid their names and addresses.
func (d *Docker) ListContainers(ctx context.Context) ([]Container, error) {
	ctx, cancel := d.call(ctx)
	defer cancel()
	list, err := d.api.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("failed to list containers: %w", err)
	}
	out := make([]Container, 0, len(list))
	for _, s := range list {
		c := Container{
			ID: s.ID, Image: s.Image, Labels: s.Labels, State: s.State, Status: s.Status,
			Created: time.Unix(s.Created, 0), Networks: map[string]netip.Addr{},
		}
		if len(s.Names) > 0 {
			c.Name = strings.TrimPrefix(s.Names[0], "/")
		}
		if s.NetworkSettings != nil {
			for name, ep := range s.NetworkSettings.Networks {
				if ep == nil {
					continue
				}
				a, _ := netip.ParseAddr(ep.IPAddress)
				if !a.IsValid() && ep.IPAMConfig != nil {
					a, _ = netip.ParseAddr(ep.IPAMConfig.IPv4Address)
				}
				c.Networks[name] = a
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// Inspect returns a container's runtime state.
func (d *Docker) Inspect(ctx context.Context, id string) (State, error) {
	ctx, cancel := d.call(ctx)
	defer cancel()
	in, err := d.api.ContainerInspect(ctx, id)
	if err != nil {
		return State{}, fmt.Errorf("failed to inspect container %s: %w", id, err)
	}
	st := State{ID: in.ID, Name: strings.TrimPrefix(in.Name, "/"), RestartCount: in.RestartCount}
	if s := in.State; s != nil {
		st.Status, st.Running, st.Restarting, st.ExitCode, st.Error, st.OOMKilled = s.Status, s.Running, s.Restarting, s.ExitCode, s.Error, s.OOMKilled
		st.StartedAt, _ = time.Parse(time.RFC3339Nano, s.StartedAt)
		if s.Health != nil {
			st.Health = s.Health.Status
		}
	}
	return st, nil
}

// Logs returns the last lines a container wrote (stdout and stderr).
func (d *Docker) Logs(ctx context.Context, id string, lines int) (string, error) {
	ctx, cancel := d.call(ctx)
	defer cancel()
	rc, err := d.api.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(lines)})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, io.LimitReader(rc, 64<<10)); err != nil && !errors.Is(err, io.EOF) {
		return buf.String(), err
	}
	return strings.TrimSpace(buf.String()), nil
}

// ImageID returns the local image ID of ref, or "" when the image is not
// present (nothing is pulled).
func (d *Docker) ImageID(ctx context.Context, ref string) (string, error) {
	ctx, cancel := d.call(ctx)
	defer cancel()
	in, err := d.api.ImageInspect(ctx, ref)
	if errdefs.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("failed to inspect image %s: %w", ref, err)
	}
	return in.ID, nil
}

// Build builds the named services of p through Compose (images tagged with
// each service's image name).
func (d *Docker) Build(ctx context.Context, p *types.Project, services []string) error {
	ctx, cancel := context.WithTimeout(ctx, d.opt.BuildTimeout)
	defer cancel()
	c, err := d.composer()
	if err != nil {
		return err
	}
	return c.Build(ctx, p, api.BuildOptions{Services: services, Progress: "quiet", Quiet: true})
}

// Up converges the services of p through Compose. Services listed in
// recreate are recreated even if Compose sees no divergence; the others
// are created when missing and started when stopped. p holds one decky,
// so Compose never sees (or touches) the others; and p is that decky's own
// Compose project (apply.DeckyProject), so the container listings Compose
// makes during an up (by project label, in create and again in start)
// return that decky's containers alone, not the whole fleet's.
func (d *Docker) Up(ctx context.Context, p *types.Project, services, recreate []string) error {
	ctx, cancel := context.WithTimeout(ctx, d.opt.UpTimeout)
	defer cancel()
	policy := api.RecreateDiverged
	if len(recreate) > 0 {
		policy = api.RecreateForce
		services = recreate
	}
	c, err := d.composer()
	if err != nil {
		return err
	}
	grace := d.opt.StopGrace
	return c.Up(ctx, p, api.UpOptions{
		Create: api.CreateOptions{
			Services:             services,
			Recreate:             policy,
			RecreateDependencies: api.RecreateNever,
			IgnoreOrphans:        true, // the model holds one decky; the others are not orphans
			QuietPull:            true,
			Timeout:              &grace,
		},
		Start: api.StartOptions{Project: p, Services: p.ServiceNames()},
	})
}

// Remove stops (SIGTERM, then SIGKILL after StopGrace) and removes the
// given containers, each only after checking it is owned by this agent.
func (d *Docker) Remove(ctx context.Context, ids []string) error {
	var errs []error
	for _, id := range ids {
		if err := d.removeOne(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *Docker) removeOne(ctx context.Context, id string) error {
	ictx, cancel := d.call(ctx)
	in, err := d.api.ContainerInspect(ictx, id)
	cancel()
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to inspect container %s: %w", id, err)
	}
	name := strings.TrimPrefix(in.Name, "/")
	if in.Config == nil || in.Config.Labels[LabelOwner] != d.owner {
		return fmt.Errorf("refusing to remove container %s: %w", name, ErrNotOwned)
	}
	grace := int(d.opt.StopGrace.Seconds())
	sctx, cancel := context.WithTimeout(ctx, d.opt.CallTimeout+d.opt.StopGrace)
	defer cancel()
	if err := d.api.ContainerStop(sctx, id, container.StopOptions{Timeout: &grace}); err != nil && !errdefs.IsNotFound(err) {
		d.log.WarnContext(ctx, "stop failed; removing by force", "container", name, "err", err)
	}
	if err := d.api.ContainerRemove(sctx, id, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("failed to remove container %s: %w", name, err)
	}
	return nil
}

// NetworkInfo is what EnsureNetwork found or made.
type NetworkInfo struct {
	ID       string
	Created  bool
	Replaced bool
}

// EnsureNetwork makes sure the decoy network exists with spec. A network
// of that name that this agent does not own is never changed
// (ErrNotOwned). An owned network whose settings differ is replaced: the
// owned containers still attached are removed first (their deckies are
// recreated on the new network in the same pass, since their hashes cover
// the network settings); a foreign container attached stops the
// replacement.
func (d *Docker) EnsureNetwork(ctx context.Context, spec NetworkSpec, specHash string) (NetworkInfo, error) {
	existing, err := d.findNetwork(ctx, spec.Name)
	if err != nil {
		return NetworkInfo{}, err
	}
	if existing != nil {
		if err := d.ownedNetwork(existing); err != nil {
			return NetworkInfo{}, err
		}
		if existing.Labels[LabelNetworkSpec] == specHash {
			return NetworkInfo{ID: existing.ID}, nil
		}
		d.log.InfoContext(ctx, "network settings changed; replacing the network", "network", spec.Name)
		if err := d.removeNetwork(ctx, existing); err != nil {
			return NetworkInfo{}, err
		}
	}
	cctx, cancel := d.call(ctx)
	defer cancel()
	resp, err := d.api.NetworkCreate(cctx, spec.Name, networkCreateOptions(spec, d.owner, specHash))
	if err != nil {
		return NetworkInfo{}, fmt.Errorf("failed to create Docker network %s (%s on %s, %s): %w", spec.Name, spec.Driver, spec.Parent, spec.Subnet, err)
	}
	return NetworkInfo{ID: resp.ID, Created: existing == nil, Replaced: existing != nil}, nil
}

// networkCreateOptions renders the decoy network: macvlan in bridge mode
// (each decky its own MAC) or ipvlan L2 (all share the parent's MAC, for
// Wi-Fi), with no ip_range: deckies take static addresses anywhere in the
// subnet (DECNET's covering ip_range captured LAN machines, bug N8/N9).
func networkCreateOptions(spec NetworkSpec, owner, specHash string) network.CreateOptions {
	opts := map[string]string{"parent": spec.Parent}
	switch spec.Driver {
	case "ipvlan":
		opts["ipvlan_mode"] = "l2"
	default:
		opts["macvlan_mode"] = "bridge"
	}
	return network.CreateOptions{
		Driver:  spec.Driver,
		Options: opts,
		IPAM: &network.IPAM{Driver: "default", Config: []network.IPAMConfig{{
			Subnet: spec.Subnet.String(), Gateway: spec.Gateway.String(),
		}}},
		Labels: map[string]string{LabelOwner: owner, LabelNetworkSpec: specHash},
	}
}

// CheckNetwork fails with ErrNotOwned when a network of that name exists
// and is not this agent's (it may not exist yet: that is fine).
func (d *Docker) CheckNetwork(ctx context.Context, name string) error {
	n, err := d.findNetwork(ctx, name)
	if err != nil || n == nil {
		return err
	}
	return d.ownedNetwork(n)
}

func (d *Docker) ownedNetwork(n *network.Summary) error {
	if owner := n.Labels[LabelOwner]; owner != d.owner {
		return fmt.Errorf("Docker network %s exists and is %w (owner label %q); remove or rename it, or set network.name in the host file", n.Name, ErrNotOwned, owner)
	}
	return nil
}

// RemoveNetwork removes the named network if this agent owns it.
func (d *Docker) RemoveNetwork(ctx context.Context, name string) error {
	n, err := d.findNetwork(ctx, name)
	if err != nil || n == nil {
		return err
	}
	if n.Labels[LabelOwner] != d.owner {
		return fmt.Errorf("refusing to remove Docker network %s: %w", name, ErrNotOwned)
	}
	return d.removeNetwork(ctx, n)
}

func (d *Docker) findNetwork(ctx context.Context, name string) (*network.Summary, error) {
	ctx, cancel := d.call(ctx)
	defer cancel()
	list, err := d.api.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return nil, fmt.Errorf("failed to list networks: %w", err)
	}
	for i := range list {
		if list[i].Name == name { // the filter matches substrings
			return &list[i], nil
		}
	}
	return nil, nil
}

func (d *Docker) removeNetwork(ctx context.Context, n *network.Summary) error {
	ictx, cancel := d.call(ctx)
	full, err := d.api.NetworkInspect(ictx, n.ID, network.InspectOptions{})
	cancel()
	if err != nil {
		return fmt.Errorf("failed to inspect network %s: %w", n.Name, err)
	}
	var ids []string
	for id := range full.Containers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if err := d.Remove(ctx, ids); err != nil {
		return fmt.Errorf("network %s still has containers attached: %w", n.Name, err)
	}
	rctx, cancel := d.call(ctx)
	defer cancel()
	if err := d.api.NetworkRemove(rctx, n.ID); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("failed to remove network %s: %w", n.Name, err)
	}
	return nil
}

// logWriter turns Compose's progress lines into debug log records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			w.log.Debug(line)
		}
	}
	return len(p), nil
}

// routeLogrus sends the Compose library's global logrus output to slog.
// logrus is process-global; the agent has one engine, so the last caller
// wins, which is fine.
func routeLogrus(log *slog.Logger) {
	logrus.SetOutput(io.Discard)
	logrus.StandardLogger().ReplaceHooks(logrus.LevelHooks{})
	logrus.AddHook(&logrusHook{log: log.With("source", "compose")})
}

type logrusHook struct{ log *slog.Logger }

func (h *logrusHook) Levels() []logrus.Level { return logrus.AllLevels }
func (h *logrusHook) Fire(e *logrus.Entry) error {
	// Compose warns that Bake is configured but buildx is missing: expected
	// here (builds go to the Engine's own BuildKit), so keep it at debug.
	h.log.Debug(e.Message, "level", e.Level.String())
	return nil
}

// Event is a change to an owned container.
type Event struct {
	Time   time.Time
	Action string // die, stop, kill, destroy, start, ...
	ID     string
	Name   string
	Decky  string
}

// Events streams the Engine's events about containers this agent owns
// until ctx ends. The error channel yields once if the stream breaks.
func (d *Docker) Events(ctx context.Context) (<-chan Event, <-chan error) {
	out := make(chan Event, 64)
	errc := make(chan error, 1)
	msgs, errs := d.api.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelOwner+"="+d.owner),
	)})
	go func() {
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					errc <- errors.New("event stream closed")
					return
				}
				ev := Event{Time: time.Unix(0, m.TimeNano), Action: string(m.Action), ID: m.Actor.ID,
					Name: m.Actor.Attributes["name"], Decky: m.Actor.Attributes[LabelDecky]}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			case err := <-errs:
				errc <- err
				return
			}
		}
	}()
	return out, errc
}
