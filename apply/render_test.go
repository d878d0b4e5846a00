package apply

import (
	"net/netip"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/relocalize"
)

const fleetYAML = `version: 1
defaults: {distro: debian}
distros:
  debian: {image: "debian:bookworm-slim", command: [sleep, infinity]}
services:
  ssh:
    image: "decoys/ssh:1"
    ports: [22]
    cap_add: [NET_BIND_SERVICE, SETUID]
    config:
      banner: {type: string, env: DECOY_BANNER}
      password: {type: password, env: SSH_ROOT_PASSWORD, default: admin}
  http:
    build: services/http
    config:
      server_header: {type: string, env: SERVER_HEADER}
`

const hostYAML = `deckies:
  - name: d1
    services: [ssh, http]
    nmap_os: windows
    service_config:
      ssh: {banner: "SSH-2.0-OpenSSH_8.9", password: toor}
      http: {server_header: nginx}
  - name: d2
    services: [ssh]
`

type fakeTree map[string]string

func (t fakeTree) ContextHash(dir string) (string, error) { return t[dir], nil }

var testNet = engine.NetworkSpec{Name: "decnet_lan", Driver: "macvlan", Parent: "eth0",
	Subnet: netip.MustParsePrefix("198.51.100.0/24"), Gateway: netip.MustParseAddr("198.51.100.1")}

// renderFleet loads a fleet from YAML text and renders host "w".
func renderFleet(t *testing.T, fleet, host string, tree fakeTree, addrs map[string]relocalize.Assignment, net engine.NetworkSpec) map[string]*DeckySpec {
	t.Helper()
	f, err := desired.Load(fstest.MapFS{
		"fleet.yaml":               {Data: []byte(fleet)},
		"hosts/w.yaml":             {Data: []byte(host)},
		"services/http/Dockerfile": {Data: []byte("FROM scratch\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := f.Hosts["w"]
	imgs, err := ResolveImages(t.Context(), f, h, tree, nil)
	if err != nil {
		t.Fatal(err)
	}
	if addrs == nil {
		addrs = map[string]relocalize.Assignment{
			"d1": {IP: netip.MustParseAddr("198.51.100.10"), MAC: relocalize.MAC("w", "d1")},
			"d2": {IP: netip.MustParseAddr("198.51.100.11"), MAC: relocalize.MAC("w", "d2")},
		}
	}
	specs, errs := Render(RenderInput{Owner: "w", Project: "decnet", WorkingDir: "/var/lib/pull-agent",
		Fleet: f, Host: h, Network: net, Addresses: addrs, Images: imgs})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	out := map[string]*DeckySpec{}
	for _, s := range specs {
		out[s.Name] = s
	}
	return out
}

var tree1 = fakeTree{"services/http": "1111"}

func TestRenderShape(t *testing.T) {
	d := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)["d1"]
	b := d.Base.Config
	if b.ContainerName != "d1" || b.Image != "debian:bookworm-slim" || b.Hostname != "d1" || b.MacAddress != relocalize.MAC("w", "d1") {
		t.Errorf("base: %+v", b)
	}
	if n := b.Networks[networkKey]; n == nil || n.Ipv4Address != "198.51.100.10" {
		t.Errorf("base network: %+v", b.Networks)
	}
	if b.Sysctls["net.ipv4.ip_default_ttl"] != "128" || b.Sysctls["net.ipv4.tcp_ecn"] != "0" {
		t.Errorf("windows sysctls not applied: %v", b.Sysctls)
	}
	if strings.Join(b.CapAdd, ",") != "NET_ADMIN" || b.Labels[engine.LabelOwner] != "w" || b.Labels[engine.LabelRole] != engine.RoleBase || b.Labels[engine.LabelDecky] != "d1" {
		t.Errorf("base caps/labels: %v %v", b.CapAdd, b.Labels)
	}
	if len(d.Services) != 2 || d.Services[0].Name != "d1-http" || d.Services[1].Name != "d1-ssh" {
		t.Fatalf("services: %+v", d.Services)
	}
	s := d.Services[1].Config
	if s.NetworkMode != "service:d1" || s.Labels[engine.LabelService] != "true" || s.Labels[engine.LabelServiceName] != "ssh" {
		t.Errorf("service namespace/labels: %q %v", s.NetworkMode, s.Labels)
	}
	if *s.Environment["DECOY_BANNER"] != "SSH-2.0-OpenSSH_8.9" || *s.Environment["SSH_ROOT_PASSWORD"] != "toor" || *s.Environment["NODE_NAME"] != "d1" {
		t.Errorf("service env: %v", s.Environment)
	}
	if strings.Join(s.CapAdd, ",") != "NET_BIND_SERVICE,SETUID" {
		t.Errorf("service caps: %v", s.CapAdd)
	}
	if http := d.Services[0].Config; !strings.HasPrefix(http.Image, "pull-agent/svc-http:") {
		t.Errorf("build context image tag: %q", http.Image)
	}
	if s.Labels[engine.LabelHash] != d.Services[1].Hash || b.Labels[engine.LabelHash] != d.Base.Hash {
		t.Errorf("hash labels do not carry the hashes")
	}
}

func TestHashesFollowNormalizedInputsOnly(t *testing.T) {
	base := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)
	hashes := func(m map[string]*DeckySpec) map[string]string {
		out := map[string]string{}
		for n, d := range m {
			out[n] = d.Hash
			out[n+"/base"] = d.Base.Hash
			for _, s := range d.Services {
				out[n+"/"+s.Service] = s.Hash
			}
		}
		return out
	}
	h0 := hashes(base)
	tests := []struct {
		name    string
		fleet   string
		host    string
		tree    fakeTree
		net     engine.NetworkSpec
		addrs   map[string]relocalize.Assignment
		changed []string // keys of h0 whose hash must change; all others must not
	}{
		{"comments, formatting and key order do not matter",
			"# the fleet\n" + strings.Replace(fleetYAML, "version: 1\n", "version: 1   # v1\n", 1),
			"deckies:\n  - services: [http, ssh]\n    name: d1\n    nmap_os: windows\n    service_config:\n      http:\n        server_header: nginx\n      ssh:\n        password: toor\n        banner: SSH-2.0-OpenSSH_8.9\n  - {name: d2, services: [ssh]}\n",
			tree1, testNet, nil, nil},
		{"one service's config changes only that service",
			fleetYAML, strings.Replace(hostYAML, "server_header: nginx", "server_header: apache", 1),
			tree1, testNet, nil, []string{"d1", "d1/http"}},
		{"a build context's content changes the services built from it",
			fleetYAML, hostYAML, fakeTree{"services/http": "2222"}, testNet, nil, []string{"d1", "d1/http"}},
		{"an address change recreates the base only",
			fleetYAML, hostYAML, tree1, testNet, map[string]relocalize.Assignment{
				"d1": {IP: netip.MustParseAddr("198.51.100.99"), MAC: relocalize.MAC("w", "d1")},
				"d2": {IP: netip.MustParseAddr("198.51.100.11"), MAC: relocalize.MAC("w", "d2")},
			}, []string{"d1", "d1/base"}},
		{"a network change recreates every base",
			fleetYAML, hostYAML, tree1, engine.NetworkSpec{Name: "decnet_lan", Driver: "macvlan", Parent: "eth1", Subnet: testNet.Subnet, Gateway: testNet.Gateway},
			nil, []string{"d1", "d1/base", "d2", "d2/base"}},
		{"nmap_os changes the base's sysctls",
			fleetYAML, strings.Replace(hostYAML, "nmap_os: windows", "nmap_os: bsd", 1), tree1, testNet, nil, []string{"d1", "d1/base"}},
		{"a service's declared ports change that service only",
			strings.Replace(fleetYAML, "ports: [22]", "ports: [22, 2222]", 1), hostYAML, tree1, testNet, nil, []string{"d1", "d1/ssh", "d2", "d2/ssh"}},
		{"a service's capabilities change that service only",
			strings.Replace(fleetYAML, "cap_add: [NET_BIND_SERVICE, SETUID]", "cap_add: [NET_BIND_SERVICE]", 1), hostYAML, tree1, testNet, nil, []string{"d1", "d1/ssh", "d2", "d2/ssh"}},
		{"an unrelated decky's change leaves the other alone",
			fleetYAML, strings.Replace(hostYAML, "services: [ssh]\n", "services: [ssh, http]\n", 1), tree1, testNet, nil, []string{"d2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h1 := hashes(renderFleet(t, tt.fleet, tt.host, tt.tree, tt.addrs, tt.net))
			want := map[string]bool{}
			for _, k := range tt.changed {
				want[k] = true
			}
			for k, v := range h0 {
				if got := h1[k]; (got != v) != want[k] {
					t.Errorf("%s: changed=%v, want changed=%v", k, got != v, want[k])
				}
			}
		})
	}
}

// TestRenderSafeByConstruction shows what every decky container gets
// whatever the catalog says: all capabilities dropped and only the
// declared ones given back (NET_ADMIN to the base alone), no new
// privileges, pids/memory/CPU limits; and the declared ports carried in a
// label, never published.
func TestRenderSafeByConstruction(t *testing.T) {
	d := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)["d1"]
	b := d.Base.Config
	if strings.Join(b.CapDrop, ",") != "ALL" || strings.Join(b.CapAdd, ",") != "NET_ADMIN" {
		t.Errorf("base caps: drop %v add %v, want drop ALL add NET_ADMIN", b.CapDrop, b.CapAdd)
	}
	if strings.Join(b.SecurityOpt, ",") != "no-new-privileges:true" {
		t.Errorf("base security_opt: %v", b.SecurityOpt)
	}
	if b.PidsLimit != BaseLimits.Pids || int64(b.MemLimit) != BaseLimits.MemoryBytes || int64(b.MemSwapLimit) != BaseLimits.MemoryBytes || int64(b.CPUS*1e9) != BaseLimits.NanoCPUs {
		t.Errorf("base limits: pids %d mem %d swap %d cpus %v", b.PidsLimit, b.MemLimit, b.MemSwapLimit, b.CPUS)
	}
	if b.Labels[engine.LabelPorts] != "" || len(b.Ports) != 0 || len(b.Expose) != 0 {
		t.Errorf("base carries ports: %v %v %v", b.Labels[engine.LabelPorts], b.Ports, b.Expose)
	}
	for _, c := range d.Services {
		s := c.Config
		if strings.Join(s.CapDrop, ",") != "ALL" {
			t.Errorf("%s: cap_drop %v, want ALL", c.Name, s.CapDrop)
		}
		for _, cp := range s.CapAdd {
			if cp == "NET_ADMIN" || cp == "NET_RAW" {
				t.Errorf("%s: holds %s", c.Name, cp)
			}
		}
		if strings.Join(s.SecurityOpt, ",") != "no-new-privileges:true" {
			t.Errorf("%s: security_opt %v", c.Name, s.SecurityOpt)
		}
		if s.PidsLimit != 256 || s.MemLimit != 256<<20 || s.MemSwapLimit != 256<<20 || int64(s.CPUS*1e9) != 1_000_000_000 {
			t.Errorf("%s: limits pids %d mem %d swap %d cpus %v, want the catalog defaults", c.Name, s.PidsLimit, s.MemLimit, s.MemSwapLimit, s.CPUS)
		}
		if len(s.Ports) != 0 || len(s.Expose) != 0 {
			t.Errorf("%s: ports published or exposed: %v %v", c.Name, s.Ports, s.Expose)
		}
		if s.ReadOnly || len(s.Tmpfs) != 0 {
			t.Errorf("%s: read-only without read_only: in the catalog", c.Name)
		}
		if !c.Check {
			t.Errorf("%s: LAN check off by default", c.Name)
		}
	}
	ssh := d.Services[1]
	if ssh.Config.Labels[engine.LabelPorts] != "22/tcp" || PortsText(ssh.Ports) != "22/tcp" {
		t.Errorf("ssh ports: label %q, spec %v", ssh.Config.Labels[engine.LabelPorts], ssh.Ports)
	}
	if http := d.Services[0]; http.Config.Labels[engine.LabelPorts] != "" || len(http.Ports) != 0 {
		t.Errorf("http declares no ports but carries %v", http.Ports)
	}
}

func TestRenderRefusesUnsafeCapabilities(t *testing.T) {
	tests := []struct {
		name, caps, want string
	}{
		{"NET_ADMIN in a service", "NET_ADMIN", "NET_ADMIN is the decky base's alone"},
		{"NET_RAW without a reason", "NET_RAW", "NET_RAW needs a reason"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := desired.Load(fstest.MapFS{
				"fleet.yaml": {Data: []byte(fleetYAML)}, "hosts/w.yaml": {Data: []byte(hostYAML)},
				"services/http/Dockerfile": {Data: []byte("FROM scratch\n")},
			})
			if err != nil {
				t.Fatal(err)
			}
			// desired refuses these at load; rendering must refuse them
			// again if a catalog ever slips through.
			f.Services["ssh"].CapAdd = []string{"NET_BIND_SERVICE", tt.caps}
			h := f.Hosts["w"]
			imgs, err := ResolveImages(t.Context(), f, h, tree1, nil)
			if err != nil {
				t.Fatal(err)
			}
			specs, errs := Render(RenderInput{Owner: "w", Project: "decnet", Fleet: f, Host: h, Network: testNet, Images: imgs,
				Addresses: map[string]relocalize.Assignment{
					"d1": {IP: netip.MustParseAddr("198.51.100.10")},
					"d2": {IP: netip.MustParseAddr("198.51.100.11")},
				}})
			if len(specs) != 0 || len(errs) != 2 {
				t.Fatalf("rendered %d deckies, %d errors; want both deckies (they run ssh) refused", len(specs), len(errs))
			}
			for n, err := range errs {
				if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `"ssh"`) {
					t.Errorf("%s: %v, want it to name the service and say %q", n, err, tt.want)
				}
			}
		})
	}
}

func TestPortsLabelRoundTrip(t *testing.T) {
	ps := []desired.Port{{Number: 22, Proto: "tcp"}, {Number: 53, Proto: "tcp"}, {Number: 53, Proto: "udp"}}
	txt := PortsText(ps)
	if txt != "22/tcp,53/tcp,53/udp" {
		t.Fatalf("PortsText = %q", txt)
	}
	back := ParsePortsLabel(txt + ",bogus,0/tcp,80/sctp")
	if PortsText(back) != txt {
		t.Errorf("ParsePortsLabel = %v", back)
	}
}

// TestRenderCatalogSafetySettings: the catalog's limits, read_only, check:
// and NET_RAW with a reason reach the rendering, and each changes the
// container's hash (so it rolls out).
func TestRenderCatalogSafetySettings(t *testing.T) {
	fleet := strings.Replace(fleetYAML, "    cap_add: [NET_BIND_SERVICE, SETUID]\n",
		"    cap_add: [NET_BIND_SERVICE, NET_RAW]\n    net_raw_reason: answers ICMP timestamps like the real device\n"+
			"    read_only: true\n    check: false\n    limits: {pids: 64, memory: 128m, cpus: 0.5}\n", 1)
	d := renderFleet(t, fleet, hostYAML, tree1, nil, testNet)["d1"]
	ssh := d.Services[1]
	s := ssh.Config
	if strings.Join(s.CapAdd, ",") != "NET_BIND_SERVICE,NET_RAW" || strings.Join(s.CapDrop, ",") != "ALL" {
		t.Errorf("caps: add %v drop %v", s.CapAdd, s.CapDrop)
	}
	if !s.ReadOnly || len(s.Tmpfs) != 1 || !strings.HasPrefix(s.Tmpfs[0], "/tmp:") || !strings.Contains(s.Tmpfs[0], "noexec") {
		t.Errorf("read_only: %v tmpfs %v", s.ReadOnly, s.Tmpfs)
	}
	if s.PidsLimit != 64 || s.MemLimit != 128<<20 || s.MemSwapLimit != 128<<20 || int64(s.CPUS*1e9) != 500_000_000 {
		t.Errorf("limits: pids %d mem %d swap %d cpus %v", s.PidsLimit, s.MemLimit, s.MemSwapLimit, s.CPUS)
	}
	if ssh.Check {
		t.Errorf("check: false not carried")
	}
	if http := d.Services[0]; http.Config.ReadOnly || http.Config.PidsLimit != 256 || !http.Check {
		t.Errorf("another service took the settings: %+v", http)
	}
	plain := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)["d1"]
	if plain.Services[1].Hash == ssh.Hash || plain.Services[0].Hash != d.Services[0].Hash || plain.Base.Hash != d.Base.Hash {
		t.Errorf("the settings must change the ssh container's hash and nothing else's")
	}
	for _, change := range []string{"read_only: true", "check: false", "limits: {pids: 64, memory: 128m, cpus: 0.5}"} {
		other := renderFleet(t, strings.Replace(fleet, "    "+change+"\n", "", 1), hostYAML, tree1, nil, testNet)["d1"]
		// check: is no container setting: toggling it recreates nothing.
		if changed := other.Services[1].Hash != ssh.Hash; changed != (change != "check: false") {
			t.Errorf("removing %q: hash changed = %v", change, changed)
		}
	}
}
