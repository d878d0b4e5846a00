package apply

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/compose/v2/pkg/api"

	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/relocalize"
)

// hashVersion is mixed into every hash; bump it when rendering changes in
// a way that must roll out to running deckies.
const hashVersion = "pull-agent/render/2"

// networkKey is the Compose key of the decoy network in every project.
const networkKey = "decnet_lan"

// RenderInput is everything rendering depends on.
type RenderInput struct {
	Owner      string // agent identity (LabelOwner)
	Project    string // the fleet's Compose project name; each decky gets DeckyProject(Project, decky)
	WorkingDir string // recorded in Compose's working-dir label
	Fleet      *desired.Fleet
	Host       *desired.Host
	Network    engine.NetworkSpec
	Addresses  map[string]relocalize.Assignment
	Images     map[string]Image
	// AllowPull lets Compose pull image references that are not present
	// locally. Off by default: workers may have no registry at all.
	AllowPull bool
}

// DeckySpec is one decky, rendered.
type DeckySpec struct {
	Name     string
	IP       netip.Addr
	MAC      string
	Hash     string // over the base and every service
	Base     ContainerSpec
	Services []ContainerSpec // in service-name order
	Images   []Image         // images the decky needs
	Address  relocalize.Assignment
}

// ContainerSpec is one container of a decky.
type ContainerSpec struct {
	Service string // catalog slug; "" for the base
	Name    string // Compose service key = container name
	Hash    string
	Config  types.ServiceConfig
	// Ports are the service's declared ports (nil for the base). They are
	// never published on the worker: the decky holds its own LAN address.
	// They are carried in LabelPorts (so hashed and visible in status) and
	// probed by the LAN check.
	Ports []desired.Port
	// Check is false when the catalog turns the LAN check off for the
	// service (check: false), for decoys that must stay silent.
	Check bool
}

// Containers returns the base then the services.
func (d *DeckySpec) Containers() []ContainerSpec {
	return append([]ContainerSpec{d.Base}, d.Services...)
}

// Project returns a Compose project named name holding only this decky.
// Applying one decky per project model keeps Compose from treating the
// others as orphans (it never removes them) and lets deckies converge in
// parallel. Every service's Compose project label is set to name: Compose
// finds a project's containers by that label alone, so the two must agree
// (name is [DeckyProject] for a decky created by this version, or the
// project its running containers carry; see [Entry]).
func (d *DeckySpec) Project(name, workingDir string, net engine.NetworkSpec) *types.Project {
	p := &types.Project{
		Name:       name,
		WorkingDir: workingDir,
		Services:   types.Services{},
		Networks:   types.Networks{networkKey: {Name: net.Name, External: true}},
	}
	for _, c := range d.Containers() {
		cfg := c.Config
		labels := make(types.Labels, len(cfg.CustomLabels)+1)
		for k, v := range cfg.CustomLabels {
			labels[k] = v
		}
		labels[api.ProjectLabel] = name
		cfg.CustomLabels = labels
		p.Services[c.Name] = cfg
	}
	return p
}

// DeckyProject returns the Compose project of one decky: the fleet's
// project name (defaults.compose_project), "_", the decky's name. Each
// decky is its own Compose project because Compose lists a project's
// containers (by its project label) several times per up: with one
// project for the whole worker every decky's up listed every decky's
// containers, work growing with the square of the deckies (issue 15).
//
// Both parts match desired.NameRE ([a-z0-9][a-z0-9-]*), so the result is a
// valid Compose project name ([a-z0-9][a-z0-9_-]*), and "_" appears in
// neither part: it never equals the shared name, the build project
// ("<project>-build") or another decky's project, whatever the names. The
// containers keep DECNET's decnet.fleet.* labels for discovery; `docker
// compose -p <project>_<decky> ps` shows one decky.
func DeckyProject(project, decky string) string {
	if project == "" {
		return decky
	}
	return project + "_" + decky
}

// NetworkSpecHash hashes the network settings: it is the network's label
// and part of every base container's hash, so a changed network recreates
// the deckies on it.
func NetworkSpecHash(n engine.NetworkSpec) string {
	return hashJSON(struct {
		V string
		N engine.NetworkSpec
	}{hashVersion, n})
}

func hashJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("apply: cannot hash %T: %v", v, err)) // only plain data is hashed
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Render renders every decky of the host that has an address. Deckies
// that cannot be rendered get an error each; the others are unaffected.
func Render(in RenderInput) ([]*DeckySpec, map[string]error) {
	var out []*DeckySpec
	errs := map[string]error{}
	netHash := NetworkSpecHash(in.Network)
	for _, d := range in.Host.Deckies {
		addr, ok := in.Addresses[d.Name]
		if !ok {
			continue // the allocation error is reported by the caller
		}
		spec, err := renderDecky(in, d, addr, netHash)
		if err != nil {
			errs[d.Name] = err
			continue
		}
		out = append(out, spec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errs
}

// composeLabels are the Compose labels of one container of a decky. The
// project label is the decky's own project; applying sets it again to the
// project the decky is applied under (DeckySpec.Project). None of them is
// hashed (containerHash; Compose's own config hash skips them too), so the
// project a decky lives in never makes it look changed.
func (in RenderInput) composeLabels(decky, service string) types.Labels {
	return types.Labels{
		api.ProjectLabel:     DeckyProject(in.Project, decky),
		api.ServiceLabel:     service,
		api.VersionLabel:     api.ComposeVersion,
		api.WorkingDirLabel:  in.WorkingDir,
		api.ConfigFilesLabel: "",
		api.OneoffLabel:      "False",
	}
}

func (in RenderInput) pullPolicy() string {
	if in.AllowPull {
		return types.PullPolicyMissing
	}
	return types.PullPolicyNever
}

func renderDecky(in RenderInput, d *desired.Decky, addr relocalize.Assignment, netHash string) (*DeckySpec, error) {
	spec := &DeckySpec{Name: d.Name, IP: addr.IP, MAC: addr.MAC, Address: addr}
	dist := in.Fleet.Distros[d.Distro]
	baseImg, ok := in.Images[ImageKey("distro", d.Distro)]
	if dist == nil || !ok {
		return nil, fmt.Errorf("distro %q has no resolved image", d.Distro)
	}
	fam := desired.OSFamilies[d.NmapOS]
	base := types.ServiceConfig{
		Name:          d.Name,
		ContainerName: d.Name,
		Image:         baseImg.Ref,
		PullPolicy:    in.pullPolicy(),
		Hostname:      d.Hostname,
		Command:       types.ShellCommand(dist.Command),
		Restart:       types.RestartPolicyUnlessStopped,
		MacAddress:    addr.MAC,
		Networks:      map[string]*types.ServiceNetworkConfig{networkKey: {Ipv4Address: addr.IP.String()}},
		Sysctls:       types.Mapping(fam.Sysctls()),
		// NET_ADMIN is the base's alone: DECNET's base needs it for the
		// OS-fingerprint work in the decky's own network namespace (the
		// cloak's netfilter rules). Every other capability is dropped.
		CapDrop:     []string{"ALL"},
		CapAdd:      []string{"NET_ADMIN"},
		SecurityOpt: []string{noNewPrivileges},
		Labels: types.Labels{
			engine.LabelOwner: in.Owner,
			engine.LabelRole:  engine.RoleBase,
			engine.LabelDecky: d.Name,
		},
		CustomLabels: in.composeLabels(d.Name, d.Name),
	}
	if d.Archetype != "" {
		base.Labels["decnet.fleet.archetype"] = d.Archetype
	}
	BaseLimits.apply(&base)
	spec.Base = ContainerSpec{Name: d.Name, Config: base}
	spec.Base.Hash = containerHash(base, baseImg, netHash)
	spec.Base.Config.Labels[engine.LabelHash] = spec.Base.Hash
	spec.Images = append(spec.Images, baseImg)

	services := append([]string(nil), d.Services...)
	sort.Strings(services)
	hashes := []string{spec.Base.Hash}
	for _, s := range services {
		svc := in.Fleet.Services[s]
		img, ok := in.Images[ImageKey("service", s)]
		if svc == nil || !ok {
			return nil, fmt.Errorf("service %q has no resolved image", s)
		}
		name := d.Name + "-" + s
		env := types.MappingWithEquals{}
		for k, v := range svc.Environment {
			env[k] = ptr(v)
		}
		for k, v := range d.ServiceConfig[s] {
			env[svc.Config[k].Env] = ptr(v.EnvString())
		}
		env["NODE_NAME"] = ptr(d.Name)
		env["HOSTNAME"] = ptr(d.Hostname)
		caps, err := serviceCaps(svc)
		if err != nil {
			return nil, err
		}
		cfg := types.ServiceConfig{
			Name:          name,
			ContainerName: name,
			Image:         img.Ref,
			PullPolicy:    in.pullPolicy(),
			Environment:   env,
			CapDrop:       []string{"ALL"},
			CapAdd:        caps,
			SecurityOpt:   []string{noNewPrivileges},
			NetworkMode:   "service:" + d.Name,
			DependsOn: types.DependsOnConfig{d.Name: {
				Condition: types.ServiceConditionStarted, Required: true, Restart: true,
			}},
			Restart: types.RestartPolicyUnlessStopped,
			Logging: &types.LoggingConfig{Driver: "json-file", Options: types.Options{"max-size": "10m", "max-file": "5"}},
			Labels: types.Labels{
				engine.LabelOwner:       in.Owner,
				engine.LabelRole:        engine.RoleService,
				engine.LabelDecky:       d.Name,
				engine.LabelService:     "true",
				engine.LabelServiceName: s,
			},
			CustomLabels: in.composeLabels(d.Name, name),
		}
		if len(svc.Command) > 0 {
			cfg.Command = types.ShellCommand(svc.Command)
		}
		serviceLimits(svc).apply(&cfg)
		if serviceReadOnly(svc) {
			cfg.ReadOnly = true
			cfg.Tmpfs = types.StringList{readOnlyTmpfs}
		}
		ports := sortedPorts(svc.Ports)
		if len(ports) > 0 {
			cfg.Labels[engine.LabelPorts] = PortsText(ports)
		}
		c := ContainerSpec{Service: s, Name: name, Config: cfg, Ports: ports, Check: serviceChecked(svc)}
		c.Hash = containerHash(cfg, img, "")
		c.Config.Labels[engine.LabelHash] = c.Hash
		spec.Services = append(spec.Services, c)
		spec.Images = append(spec.Images, img)
		hashes = append(hashes, s+"="+c.Hash)
	}
	spec.Hash = hashJSON(struct {
		V string
		H []string
	}{hashVersion, hashes})
	return spec, nil
}

// containerHash covers the rendered container settings (Compose's own
// labels excluded: they carry no desired state), the image ID of a
// reference image, and for a base the network settings. Map order is
// irrelevant (encoding/json sorts keys) and lists are sorted when order
// has no meaning, so the same desired state always hashes the same.
func containerHash(cfg types.ServiceConfig, img Image, netHash string) string {
	cfg.CustomLabels = nil
	return hashJSON(struct {
		V       string
		Config  types.ServiceConfig
		ImageID string
		Net     string
	}{hashVersion, cfg, img.ID, netHash})
}

func ptr(s string) *string { return &s }

// noNewPrivileges keeps every process of a decky from gaining privileges
// through setuid binaries or file capabilities after it starts.
const noNewPrivileges = "no-new-privileges:true"

// readOnlyTmpfs is the one writable place of a read-only service: a small
// /tmp in memory (counted against the container's memory limit), where
// nothing can be executed.
const readOnlyTmpfs = "/tmp:rw,nosuid,nodev,noexec,size=16m,mode=1777"

// apply sets the limits on a container's configuration. Swap is limited to
// the memory limit (memswap = memory): a container cannot swap its way
// past the limit.
func (l Limits) apply(cfg *types.ServiceConfig) {
	cfg.PidsLimit = l.Pids
	cfg.MemLimit = types.UnitBytes(l.MemoryBytes)
	cfg.MemSwapLimit = types.UnitBytes(l.MemoryBytes)
	// Compose passes cpus on as NanoCPUs = cpus * 1e9.
	cfg.CPUS = float32(float64(l.NanoCPUs) / 1e9)
}

// serviceCaps returns the capabilities a service container gets back after
// dropping them all: exactly the catalog's cap_add. Docker's default set
// (which includes NET_RAW, MKNOD, SETFCAP, DAC_OVERRIDE, ...) is never
// given implicitly: a decoy faces attackers, and what it needs is declared
// in the catalog, where package desired checks it against its allowlist.
// NET_RAW (raw sockets, ARP spoofing of the real LAN the decky is bridged
// onto) needs a reason in the catalog; NET_ADMIN is the base's alone.
// desired refuses both cases already; rendering refuses them again, so a
// catalog that slipped through fails its deckies rather than arm them.
func serviceCaps(svc *desired.Service) ([]string, error) {
	var caps []string
	seen := map[string]bool{}
	for _, c := range svc.CapAdd {
		c = strings.TrimPrefix(strings.ToUpper(c), "CAP_")
		switch {
		case seen[c]:
			continue
		case c == "NET_ADMIN" || c == "ALL":
			return nil, fmt.Errorf("service %q: capability %s is not allowed in a service container (NET_ADMIN is the decky base's alone)", svc.Name, c)
		case c == "NET_RAW" && netRawReason(svc) == "":
			return nil, fmt.Errorf("service %q: capability NET_RAW needs a reason in the catalog", svc.Name)
		}
		seen[c] = true
		caps = append(caps, c)
	}
	sort.Strings(caps)
	return caps, nil
}

// sortedPorts returns the ports in number then protocol order.
func sortedPorts(ps []desired.Port) []desired.Port {
	if len(ps) == 0 {
		return nil
	}
	out := append([]desired.Port(nil), ps...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Number != out[j].Number {
			return out[i].Number < out[j].Number
		}
		return out[i].Proto < out[j].Proto
	})
	return out
}

// PortText is a port as written in reports and errors: "22/tcp".
func PortText(p desired.Port) string { return fmt.Sprintf("%d/%s", p.Number, p.Proto) }

// PortsText is the value of LabelPorts: "22/tcp,53/udp".
func PortsText(ps []desired.Port) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = PortText(p)
	}
	return strings.Join(parts, ",")
}

// ParsePortsLabel reads LabelPorts back (status reporting of running
// containers); malformed entries are skipped.
func ParsePortsLabel(v string) []desired.Port {
	var out []desired.Port
	for _, f := range strings.Split(v, ",") {
		num, proto, ok := strings.Cut(strings.TrimSpace(f), "/")
		n, err := strconv.ParseUint(num, 10, 16)
		if !ok || err != nil || n == 0 || (proto != "tcp" && proto != "udp") {
			continue
		}
		out = append(out, desired.Port{Number: uint16(n), Proto: proto})
	}
	return out
}
