package desired

import (
	"io/fs"
	"net/netip"
	"strings"
	"testing"
	"testing/fstest"
)

const baseFleet = `version: 1
defaults:
  distro: debian
  network:
    subnet: 198.51.100.0/24
    gateway: 198.51.100.1
distros:
  debian:
    build: images/base
    command: ["/decoy", "hold"]
services:
  ssh:
    build: services/ssh
    ports: [22]
    cap_add: [NET_BIND_SERVICE]
    config:
      password: {type: password, env: SSH_ROOT_PASSWORD, default: admin}
      banner: {type: string, env: DECOY_BANNER}
  http:
    image: nginx:1.25
    ports: [80, "443/tcp"]
    config:
      server_header: {type: string, env: SERVER_HEADER}
      fake_app: {type: enum, values: [none, wordpress], env: FAKE_APP, default: none}
      nla: {type: bool, env: NLA}
      workers: {type: int, env: WORKERS}
`

const baseHost = `ip_pool: 198.51.100.64/27
deckies:
  - name: web-01
    services: [http, ssh]
    ip: 198.51.100.70
    service_config:
      http: {server_header: "nginx/1.18.0"}
  - name: db-01
    services: [ssh]
`

// repo builds a valid fleet repository; edits replace whole files or, for
// keys of the form "file|old", the first occurrence of old in file.
func repo(edits map[string]string) fstest.MapFS {
	files := map[string]string{
		"fleet.yaml":              baseFleet,
		"hosts/worker-a.yaml":     baseHost,
		"images/base/Dockerfile":  "FROM scratch\n",
		"services/ssh/Dockerfile": "FROM scratch\n",
	}
	m := fstest.MapFS{}
	for k, v := range edits {
		if file, old, ok := strings.Cut(k, "|"); ok {
			files[file] = strings.Replace(files[file], old, v, 1)
			continue
		}
		if strings.HasPrefix(v, "symlink:") {
			m[k] = &fstest.MapFile{Data: []byte(strings.TrimPrefix(v, "symlink:")), Mode: fs.ModeSymlink | 0o777}
			continue
		}
		files[k] = v
	}
	for k, v := range files {
		if _, isLink := m[k]; !isLink {
			m[k] = &fstest.MapFile{Data: []byte(v), Mode: 0o644}
		}
	}
	return m
}

func TestLoadValid(t *testing.T) {
	f, err := Load(repo(nil))
	if err != nil {
		t.Fatalf("valid fleet rejected:\n%v", err)
	}
	h := f.Hosts["worker-a"]
	if h == nil || len(h.Deckies) != 2 {
		t.Fatalf("want host worker-a with 2 deckies, got %+v", h)
	}
	web := h.Deckies[0]
	if web.IP != netip.MustParseAddr("198.51.100.70") || web.Hostname != "web-01" || web.NmapOS != "linux" || web.Distro != "debian" {
		t.Errorf("web-01 decoded wrong: %+v", web)
	}
	if got := web.ServiceConfig["http"]["server_header"].Str; got != "nginx/1.18.0" {
		t.Errorf("server_header = %q", got)
	}
	if got := web.ServiceConfig["http"]["fake_app"].Str; got != "none" {
		t.Errorf("enum default not applied: fake_app = %q", got)
	}
	if got := web.ServiceConfig["ssh"]["password"]; got.Str != "admin" || got.Type != TypePassword {
		t.Errorf("password default not applied: %+v", got)
	}
	if _, set := web.ServiceConfig["http"]["nla"]; set {
		t.Errorf("key without default and value must stay unset")
	}
	if h.Network.Subnet != netip.MustParsePrefix("198.51.100.0/24") || h.Network.Name != DefaultNetworkName || h.Network.Driver != DriverMacvlan {
		t.Errorf("network defaults not merged: %+v", h.Network)
	}
	if h.IPPool.First != netip.MustParseAddr("198.51.100.64") || h.IPPool.Last != netip.MustParseAddr("198.51.100.95") {
		t.Errorf("pool decoded wrong: %+v", h.IPPool)
	}
	if p := f.Services["http"].Ports; len(p) != 2 || p[1] != (Port{443, "tcp"}) {
		t.Errorf("ports decoded wrong: %+v", p)
	}
}

// allowedCaps is the allowlist as every capability error lists it.
const allowedCaps = "allowed: AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT; NET_RAW with net_raw_reason"

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		edits map[string]string
		want  []string
	}{
		{"unknown top-level key", map[string]string{"fleet.yaml|version: 1\n": "version: 1\nmutate_interval: 30\n"},
			[]string{"fleet.yaml:2: mutate_interval: unknown key (allowed: defaults, distros, services, version)"}},
		{"unsupported format version", map[string]string{"fleet.yaml|version: 1": "version: 2"},
			[]string{"fleet.yaml:1: version: format version 2 is not supported by this agent (it reads version 1)"}},
		{"version missing", map[string]string{"fleet.yaml|version: 1\n": ""},
			[]string{"fleet.yaml:1: version: required key is missing"}},
		{"misspelt decky key", map[string]string{"hosts/worker-a.yaml|    services: [ssh]": "    servces: [ssh]"},
			[]string{
				"hosts/worker-a.yaml:8: deckies[1].services: required key is missing",
				"hosts/worker-a.yaml:9: deckies[1].servces: unknown key (allowed: archetype, distro, hostname, ip, name, nmap_os, service_config, services)",
			}},
		{"uppercase decky name", map[string]string{"hosts/worker-a.yaml|name: db-01": "name: DB_01"},
			[]string{`hosts/worker-a.yaml:8: deckies[1].name: decky name "DB_01" must match ^[a-z0-9][a-z0-9-]{0,62}$`}},
		{"decky name used on two hosts", map[string]string{"hosts/worker-b.yaml": "deckies:\n  - name: db-01\n    services: [ssh]\n"},
			[]string{"hosts/worker-b.yaml:2: deckies[0].name: decky name \"db-01\" is already used at hosts/worker-a.yaml:8; names must be unique across the fleet"}},
		{"no services", map[string]string{"hosts/worker-a.yaml|services: [ssh]": "services: []"},
			[]string{"hosts/worker-a.yaml:9: deckies[1].services: a decky needs at least one service"}},
		{"service not in catalog", map[string]string{"hosts/worker-a.yaml|services: [ssh]": "services: [ssh, rdp]"},
			[]string{`hosts/worker-a.yaml:8: deckies[1].services[1]: service "rdp" is not in the services catalog (known: http, ssh)`}},
		{"unknown service_config key", map[string]string{"hosts/worker-a.yaml|server_header:": "server_hdr:"},
			[]string{`hosts/worker-a.yaml:7: deckies[0].service_config.http.server_hdr: service "http" has no config key "server_hdr" (accepts: fake_app, nla, server_header, workers)`}},
		{"int where a string is declared", map[string]string{"hosts/worker-a.yaml|\"nginx/1.18.0\"": "1.18"},
			[]string{"hosts/worker-a.yaml:7: deckies[0].service_config.http.server_header: expected a string, got a number (1.18); quote it if it is meant as text"}},
		{"quoted false for a bool", map[string]string{"hosts/worker-a.yaml|server_header: \"nginx/1.18.0\"": "nla: \"false\""},
			[]string{"hosts/worker-a.yaml:7: deckies[0].service_config.http.nla: expected true or false, got a string"}},
		{"enum value not allowed", map[string]string{"hosts/worker-a.yaml|server_header: \"nginx/1.18.0\"": "fake_app: drupal"},
			[]string{`hosts/worker-a.yaml:7: deckies[0].service_config.http.fake_app: "drupal" is not one of none, wordpress`}},
		{"string where an int is declared", map[string]string{"hosts/worker-a.yaml|server_header: \"nginx/1.18.0\"": "workers: many"},
			[]string{"hosts/worker-a.yaml:7: deckies[0].service_config.http.workers: expected an integer, got a string"}},
		{"ip outside the subnet", map[string]string{"hosts/worker-a.yaml|198.51.100.70": "203.0.113.70"},
			[]string{"hosts/worker-a.yaml:5: deckies[0].ip: 203.0.113.70 is outside the subnet 198.51.100.0/24"}},
		{"ip is the gateway", map[string]string{"hosts/worker-a.yaml|198.51.100.70": "198.51.100.1"},
			[]string{"hosts/worker-a.yaml:5: deckies[0].ip: 198.51.100.1 is the gateway address"}},
		{"ip is the broadcast address", map[string]string{"hosts/worker-a.yaml|198.51.100.70": "198.51.100.255"},
			[]string{"hosts/worker-a.yaml:5: deckies[0].ip: 198.51.100.255 is the broadcast address of 198.51.100.0/24"}},
		{"ip is the network address", map[string]string{"hosts/worker-a.yaml|198.51.100.70": "198.51.100.0"},
			[]string{"hosts/worker-a.yaml:5: deckies[0].ip: 198.51.100.0 is the network address of 198.51.100.0/24"}},
		{"ip pinned twice", map[string]string{"hosts/worker-a.yaml|    services: [ssh]\n": "    services: [ssh]\n    ip: 198.51.100.70\n"},
			[]string{"hosts/worker-a.yaml:10: deckies[1].ip: 198.51.100.70 is already pinned at hosts/worker-a.yaml:5"}},
		{"ip pinned on two hosts of one subnet", map[string]string{"hosts/worker-b.yaml": "deckies:\n  - name: other\n    services: [ssh]\n    ip: 198.51.100.70\n"},
			[]string{"hosts/worker-b.yaml:4: deckies[0].ip: 198.51.100.70 is already pinned at hosts/worker-a.yaml:5 on the same subnet 198.51.100.0/24"}},
		{"not an address", map[string]string{"hosts/worker-a.yaml|198.51.100.70": "198.51.100.700"},
			[]string{`hosts/worker-a.yaml:5: deckies[0].ip: "198.51.100.700" is not an IPv4 address`}},
		{"build context climbs out", map[string]string{"fleet.yaml|build: services/ssh": "build: ../secrets"},
			[]string{`fleet.yaml:13: services.ssh.build.context: "../secrets" contains ".."; paths must stay inside the repository`}},
		{"build context is absolute", map[string]string{"fleet.yaml|build: services/ssh": "build: /etc"},
			[]string{`fleet.yaml:13: services.ssh.build.context: "/etc" is absolute; paths must be relative to the repository root`}},
		{"symlink in build context leaves the repo", map[string]string{"services/ssh/shadow": "symlink:../../../etc/shadow"},
			[]string{"fleet.yaml:13: services.ssh.build: symlink services/ssh/shadow -> ../../../etc/shadow leaves the repository"}},
		{"absolute symlink in build context", map[string]string{"services/ssh/key": "symlink:/root/.ssh/id_rsa"},
			[]string{"fleet.yaml:13: services.ssh.build: symlink services/ssh/key points to absolute path /root/.ssh/id_rsa, outside the repository"}},
		{"build context missing", map[string]string{"fleet.yaml|build: services/ssh": "build: services/sshd"},
			[]string{`fleet.yaml:13: services.ssh.build: build context "services/sshd" does not exist in the repository`}},
		{"build context without Dockerfile", map[string]string{"services/ssh/Dockerfile": "symlink:../../images/base/Dockerfile"},
			[]string{`fleet.yaml:13: services.ssh.build: build context "services/ssh" has no regular file Dockerfile`}},
		{"image and build both", map[string]string{"fleet.yaml|    image: nginx:1.25\n": "    image: nginx:1.25\n    build: services/ssh\n"},
			[]string{"fleet.yaml:20: services.http: sets both image and build; choose one"}},
		{"bad image reference", map[string]string{"fleet.yaml|nginx:1.25": "Nginx:latest"},
			[]string{`fleet.yaml:20: services.http.image: "Nginx:latest" is not a valid image reference: invalid reference format: repository name (library/Nginx) must be lowercase`}},
		{"invalid YAML", map[string]string{"hosts/worker-a.yaml|  - name: db-01": "  - name: [db-01"},
			[]string{"hosts/worker-a.yaml:8: invalid YAML: did not find expected ',' or ']'"}},
		{"pool outside the subnet", map[string]string{"hosts/worker-a.yaml|198.51.100.64/27": "192.0.2.64/27"},
			[]string{"hosts/worker-a.yaml:1: ip_pool: pool 192.0.2.64/27 is not inside the subnet 198.51.100.0/24"}},
		{"pool with host bits", map[string]string{"hosts/worker-a.yaml|198.51.100.64/27": "198.51.100.65/27"},
			[]string{`hosts/worker-a.yaml:1: ip_pool: "198.51.100.65/27" has host bits set; write 198.51.100.64/27`}},
		{"dangerous capability", map[string]string{"fleet.yaml|[NET_BIND_SERVICE]": "[NET_BIND_SERVICE, SYS_ADMIN]"},
			[]string{`fleet.yaml:15: services.ssh.cap_add[1]: "SYS_ADMIN" is not allowed for a decoy service (` + allowedCaps + `)`}},
		{"duplicate key", map[string]string{"hosts/worker-a.yaml|    ip: 198.51.100.70\n": "    ip: 198.51.100.70\n    ip: 198.51.100.71\n"},
			[]string{"hosts/worker-a.yaml:6: deckies[0].ip: duplicate key (first set on line 5)"}},
		{"config for a service the decky does not run", map[string]string{"hosts/worker-a.yaml|services: [http, ssh]": "services: [ssh]"},
			[]string{`hosts/worker-a.yaml:7: deckies[0].service_config.http: configures service "http", which this decky does not run`}},
		{"required config key missing", map[string]string{"fleet.yaml|env: DECOY_BANNER}": "env: DECOY_BANNER, required: true}"},
			[]string{
				`hosts/worker-a.yaml:3: deckies[0].service_config.ssh.banner: required by service "ssh" but not set`,
				`hosts/worker-a.yaml:8: deckies[1].service_config.ssh.banner: required by service "ssh" but not set`,
			}},
		{"host file with .yml", map[string]string{"hosts/worker-b.yml": "deckies: []\n"},
			[]string{"hosts/worker-b.yml: host files must end in .yaml (this one would be ignored)"}},
		{"unknown nmap_os", map[string]string{"hosts/worker-a.yaml|    services: [ssh]\n": "    services: [ssh]\n    nmap_os: solaris\n"},
			[]string{`hosts/worker-a.yaml:10: deckies[1].nmap_os: nmap_os "solaris" is not one of bsd, cisco, embedded, linux, windows, windows_server`}},
		{"gateway outside the subnet", map[string]string{"fleet.yaml|gateway: 198.51.100.1": "gateway: 192.0.2.1"},
			[]string{"fleet.yaml:6: defaults.network.gateway: gateway 192.0.2.1 is outside the subnet 198.51.100.0/24"}},
		{"unknown distro", map[string]string{"hosts/worker-a.yaml|    services: [ssh]\n": "    services: [ssh]\n    distro: gentoo\n"},
			[]string{`hosts/worker-a.yaml:8: deckies[1].distro: distro "gentoo" is not in the distros catalog (known: debian)`}},
		{"fleet.yaml is a symlink", map[string]string{"fleet.yaml": "symlink:/etc/decnet/fleet.yaml"},
			[]string{"fleet.yaml: is a symlink; it must be a regular file inside the repository"}},
		{"host file name invalid", map[string]string{"hosts/Worker_C.yaml": "deckies: []\n"},
			[]string{`hosts/Worker_C.yaml: host name "Worker_C" must match ^[a-z0-9][a-z0-9-]{0,62}$`}},
		{"several errors in one file are all reported", map[string]string{
			"hosts/worker-a.yaml|198.51.100.70":   "198.51.100.1",
			"hosts/worker-a.yaml|services: [ssh]": "services: [telnet]",
			"hosts/worker-a.yaml|ip_pool":         "ip_pol",
		}, []string{
			"hosts/worker-a.yaml:1: ip_pol: unknown key (allowed: deckies, decommission, host_uuid, ip_pool, network, prune, suspend)",
			"hosts/worker-a.yaml:5: deckies[0].ip: 198.51.100.1 is the gateway address",
			`hosts/worker-a.yaml:8: deckies[1].services[0]: service "telnet" is not in the services catalog (known: http, ssh)`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(repo(tt.edits))
			if err == nil {
				t.Fatalf("want errors %q, got none", tt.want)
			}
			var got []string
			for _, e := range err.(Errors) {
				got = append(got, e.Error())
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors mismatch\n got: %q\nwant: %q", got, tt.want)
			}
		})
	}
}

func TestParsePool(t *testing.T) {
	tests := []struct {
		in          string
		first, last string
		msg         string
	}{
		{"198.51.100.64/27", "198.51.100.64", "198.51.100.95", ""},
		{"198.51.100.70-198.51.100.90", "198.51.100.70", "198.51.100.90", ""},
		{"198.51.100.90-198.51.100.70", "", "", "ends before it starts"},
		{"2001:db8::/64", "", "", "is not an IPv4 CIDR or range first-last"},
		{"bogus", "", "", "is not an IPv4 CIDR or range first-last"},
	}
	for _, tt := range tests {
		p, msg := ParsePool(tt.in)
		if msg != tt.msg {
			t.Errorf("ParsePool(%q) msg = %q, want %q", tt.in, msg, tt.msg)
			continue
		}
		if msg == "" && (p.First.String() != tt.first || p.Last.String() != tt.last) {
			t.Errorf("ParsePool(%q) = %s..%s, want %s..%s", tt.in, p.First, p.Last, tt.first, tt.last)
		}
	}
}

// FuzzLoad checks that no fleet.yaml or host file, however broken, makes
// Load panic or return both a fleet and an error.
func FuzzLoad(f *testing.F) {
	f.Add(baseFleet, baseHost)
	f.Add("version: 1\nservices: {a: {image: x}}\n", "deckies: [{name: a, services: [a], ip: 1.2.3.4}]")
	f.Add("a: &a [*a, *a]\n", "<<: {deckies: []}")
	// Hostile and edge cases of issue 9: bombs, self-merges, bytes the
	// YAML reader refuses, unknown anchors, deep nesting, capabilities,
	// limits and the host-level switches.
	f.Add(baseFleet, "network:\n  <<: "+mergeBomb("name", "x", 10, 5)+"\n"+baseHost)
	f.Add(baseFleet, hostileHost(20, 0))
	f.Add(baseFleet, "network: &n {<<: *n}\ndeckies: []\n")
	f.Add(baseFleet, "deckies:\n  - name: a\xff\n")
	f.Add(baseFleet, "deckies: [\x07]\n")
	f.Add(baseFleet, "deckies: *nope\n")
	f.Add(baseFleet, "deckies: "+strings.Repeat("[", 10001))
	f.Add(baseFleet, "deckies: "+strings.Repeat("- ", 300)+"x\n")
	f.Add(strings.Replace(baseFleet, "[NET_BIND_SERVICE]", "[NET_RAW, net_bind_service, FOO, CAP_SYS_ADMIN]", 1), baseHost)
	f.Add(strings.Replace(baseFleet, "    ports: [22]\n", "    ports: [22]\n    check: false\n    read_only: true\n    limits: {pids: 64, memory: 64m, cpus: \"0.5\"}\n    cap_add: [NET_RAW]\n    net_raw_reason: icmp\n", 1), baseHost)
	f.Add(baseFleet, "prune: {max: all}\nsuspend: true\ndecommission: true\ndeckies: []\n")
	f.Add(baseFleet, "deckies:\n  - {name: web, services: [ssh]}\n  - {name: web-ssh, services: [http]}\n")
	f.Fuzz(func(t *testing.T, fleet, host string) {
		fl, err := Load(fstest.MapFS{
			"fleet.yaml":          {Data: []byte(fleet)},
			"hosts/worker-a.yaml": {Data: []byte(host)},
		})
		if (fl == nil) == (err == nil) {
			t.Fatalf("Load returned fleet=%v err=%v", fl != nil, err)
		}
		if err != nil {
			es := err.(Errors)
			for _, e := range es {
				if e.File == "" || e.Msg == "" {
					t.Fatalf("error without file or message: %#v", e)
				}
				if strings.HasPrefix(e.Msg, "invalid YAML") && e.Line == 0 {
					t.Fatalf("YAML error without a line: %v", e)
				}
				if (strings.Contains(e.Msg, "beyond its budget") || strings.Contains(e.Msg, "nest more than")) && len(es) != 1 {
					t.Fatalf("a budget error must come alone:\n%v", err)
				}
			}
		}
	})
}
