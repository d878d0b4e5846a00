package desired

import (
	"net/netip"

	"gopkg.in/yaml.v3"
	"regexp"
	"sort"
	"sync"
)

// FormatVersion is the only fleet repository format this package reads.
const FormatVersion = 1

// Names of the files Load reads.
const (
	FleetFile = "fleet.yaml"
	HostsDir  = "hosts"
)

// Defaults used when fleet.yaml leaves a field out; they match DECNET's own
// names so that `docker compose -p decnet ps` and DECNET's collector keep
// working on a worker the agent manages.
const (
	DefaultComposeProject = "decnet"
	DefaultNetworkName    = "decnet_lan"
	DefaultDriver         = DriverMacvlan
	Auto                  = "auto"
)

// Network drivers a decky LAN can use.
const (
	DriverMacvlan = "macvlan"
	DriverIPvlan  = "ipvlan" // L2 mode; for Wi-Fi parents that bind one MAC per station
)

// NameRE returns the pattern for decky, host, service, distro and
// archetype names. It is DNS-label-like so every name is a valid container
// name, Compose service key and DECNET API path parameter (DECNET bug
// L7/N3).
var NameRE = lazyRE(`^[a-z0-9][a-z0-9-]{0,62}$`)

// envRE is the pattern for environment variable names in the catalog.
var envRE = lazyRE(`^[A-Za-z_][A-Za-z0-9_]*$`)

// lazyRE compiles pattern on first use. Package-level regexps are
// compiled when the process starts, by every command (version and once
// too); a bounded repeat such as {0,62} costs about half a millisecond
// each, and this package's patterns were 2.5 ms of every start.
func lazyRE(pattern string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(pattern) })
}

// Fleet is a validated fleet repository.
type Fleet struct {
	Version  int
	Defaults Defaults
	Distros  map[string]*Distro
	Services map[string]*Service
	Hosts    map[string]*Host
}

// Defaults are the fleet-wide settings every host inherits.
type Defaults struct {
	ComposeProject string // Compose project holding every decky; default "decnet"
	Distro         string // distro of deckies that name none; empty = must be named
	Network        Network

	distroPos Pos    // where defaults.distro is written
	netPos    netPos // where defaults.network's fields are written
}

// netPos records where a network block's fields are written, so a mistake
// is reported once at its own line: a default's in fleet.yaml, a host
// override's in its host file. Zero Pos = not written there.
type netPos struct {
	subnet, gateway Pos
}

// Network describes the decoy LAN. Zero Subnet/Gateway and Interface "auto"
// mean "detect on the worker".
type Network struct {
	Name      string // Docker network name, default decnet_lan
	Driver    string // macvlan or ipvlan
	Interface string // parent NIC or "auto"
	Subnet    netip.Prefix
	Gateway   netip.Addr
}

// Source says where an image comes from: exactly one of Image or Build.
type Source struct {
	Image string // an image reference, used as is
	Build *Build // a build context inside the repository
}

// Build is a Docker build context inside the fleet repository.
type Build struct {
	Context    string // slash path relative to the repository root, cleaned
	Dockerfile string // relative to Context, default "Dockerfile"
	Args       map[string]string
	Pos        Pos // where build: is written
}

// Distro is an entry of the distro catalog: the image of a decky's base
// (network-namespace holder) container.
type Distro struct {
	Name    string
	Source  Source
	Command []string // default ["sleep", "infinity"], as DECNET runs it
	Pos     Pos
}

// Service is an entry of the service catalog.
type Service struct {
	Name   string
	Source Source
	Ports  []Port
	// CapAdd holds the capabilities the service adds, canonical (upper
	// case, no "CAP_" prefix), each in [ServiceCapabilities] or NET_RAW
	// (then NetRawReason is set).
	CapAdd      []string
	Environment map[string]string
	Command     []string
	Config      map[string]*ConfigKey // service_config keys this service accepts
	// Check is whether the agent probes the service's TCP ports from the
	// LAN once its decky is up; true unless the catalog says check: false
	// (decoys that must stay silent).
	Check bool
	// Limits are the container's resource limits, defaults applied.
	Limits Limits
	// ReadOnly is whether the container's root filesystem is read-only
	// (read_only: true); false by default.
	ReadOnly bool
	// NetRawReason is why the service holds NET_RAW; set exactly when
	// CapAdd holds NET_RAW.
	NetRawReason string
	Pos          Pos
}

// Port is a declared listening port of a service.
type Port struct {
	Number uint16
	Proto  string // tcp or udp
}

// ConfigType is the type of a service_config key.
type ConfigType string

// The service_config value types.
const (
	TypeString   ConfigType = "string"
	TypePassword ConfigType = "password" // a string that reports and logs redact
	TypeInt      ConfigType = "int"
	TypeBool     ConfigType = "bool"
	TypeEnum     ConfigType = "enum"
)

// ConfigKey declares one service_config key of a catalog service.
type ConfigKey struct {
	Name     string
	Type     ConfigType
	Env      string   // environment variable the value is passed in
	Values   []string // allowed values of an enum
	Default  *Value   // used when a decky sets no value; nil = variable unset
	Required bool
}

// Value is a typed service_config value, already checked against its key.
type Value struct {
	Type ConfigType
	Str  string // string, password and enum values; int/bool in canonical text
	Int  int64
	Bool bool
}

// EnvString renders the value as the environment variable text.
func (v Value) EnvString() string { return v.Str }

// Host is one worker's desired state.
type Host struct {
	Name     string // from the file name hosts/<name>.yaml; the agent's --host
	File     string
	HostUUID string // optional DECNET SwarmHost.uuid, echoed in reports
	Network  Network
	IPPool   *Pool
	Deckies  []*Decky
	// Prune is the host's committed override of the agent's prune guard
	// (prune: {max: N} or {max: all}); zero = not set, the default guard.
	Prune Prune
	// Decommission (decommission: true) tells the agent to remove
	// everything it owns on the worker, report, delete its state and stop.
	// A decommissioned host lists no deckies.
	Decommission    bool
	DecommissionPos Pos // where decommission: is written; zero when absent
	// Suspend (suspend: true) tells the agent to keep fetching, verifying
	// and reporting, and to apply nothing.
	Suspend    bool
	SuspendPos Pos // where suspend: is written; zero when absent

	netPos  netPos
	poolPos Pos
}

// The agent's default prune guard: without an override, one pass removes
// at most DefaultPruneMax deckies and at most half of the deckies the
// worker runs.
const DefaultPruneMax = 10

// Prune is a host file's prune override.
type Prune struct {
	Max int  // the most deckies one pass may remove; set when !All
	All bool // max: all: any number, including every decky
	Set bool // the host file has a prune block
	Pos Pos  // where prune: is written
}

// Allows reports whether one pass may remove remove of the running
// deckies under this override, or under the default guard when none is
// set (at most DefaultPruneMax, and at most half of running). Removing
// every decky of a worker, as `deckies: []` asks, always needs the
// override (unless nothing runs).
func (p Prune) Allows(running, remove int) bool {
	switch {
	case remove <= 0:
		return true
	case p.Set && p.All:
		return true
	case p.Set:
		return remove <= p.Max
	}
	return remove <= DefaultPruneMax && 2*remove <= running
}

// Pool is an inclusive IPv4 address range the worker allocates decky
// addresses from; written as a CIDR or "first-last" in the host file.
type Pool struct {
	First, Last netip.Addr
	Text        string // as written, for messages
}

// Contains reports whether a is inside the pool.
func (p *Pool) Contains(a netip.Addr) bool {
	return a.Is4() && p.First.Compare(a) <= 0 && a.Compare(p.Last) <= 0
}

// Decky is one desired decoy machine.
type Decky struct {
	Name          string
	Services      []string
	IP            netip.Addr // pinned address; zero = allocate
	Hostname      string
	Archetype     string
	Distro        string
	NmapOS        string
	ServiceConfig map[string]map[string]Value // service -> key -> value, defaults applied
	Pos           Pos                         // where the decky starts
	IPPos         Pos                         // where ip: is written

	// service_config is checked against the catalog once fleet.yaml is
	// known; until then the raw node is kept.
	rawConfig      *yaml.Node
	rawConfigField string
	file           string
}

// HostNames returns the hosts of the fleet in name order.
func (f *Fleet) HostNames() []string {
	names := make([]string, 0, len(f.Hosts))
	for n := range f.Hosts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var (
	dockerNameRE = lazyRE(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
	// ifaceRE follows the kernel's rules: at most 15 bytes, no '/', ':' or space.
	ifaceRE     = lazyRE(`^[a-zA-Z0-9_.@-]{1,15}$`)
	configKeyRE = lazyRE(`^[a-z][a-z0-9_]{0,62}$`)
	hostnameRE  = lazyRE(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
)
