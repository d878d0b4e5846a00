package desired

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestLoadCapabilities(t *testing.T) {
	const at = "fleet.yaml:15: services.ssh.cap_add[0]: "
	tests := []struct {
		name string
		caps string // the cap_add list of ssh
		also string // more keys of ssh
		want string // the one error; "" = valid
		got  []string
	}{
		{name: "allowed", caps: "[NET_BIND_SERVICE, SETUID, SETGID, CHOWN, SYS_CHROOT, AUDIT_WRITE]", got: []string{"NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN", "SYS_CHROOT", "AUDIT_WRITE"}},
		{name: "CAP_ prefix is accepted and dropped", caps: "[CAP_NET_BIND_SERVICE, CAP_KILL]", got: []string{"NET_BIND_SERVICE", "KILL"}},
		{name: "unknown", caps: "[FOO]", want: at + `"FOO" is not a Linux capability (` + allowedCaps + ")"},
		{name: "typo", caps: "[NET_BIND_SERVICES]", want: at + `"NET_BIND_SERVICES" is not a Linux capability; did you mean NET_BIND_SERVICE? (` + allowedCaps + ")"},
		{name: "lower case", caps: "[net_bind_service]", want: at + `"net_bind_service" is not how capability names are written: write "NET_BIND_SERVICE" (upper case)`},
		{name: "ALL", caps: "[ALL]", want: at + `"ALL" would give a decoy every capability; list the ones it needs (` + allowedCaps + ")"},
		{name: "AUDIT_CONTROL is not namespaced", caps: "[AUDIT_CONTROL]", want: at + `"AUDIT_CONTROL" is not allowed for a decoy service (` + allowedCaps + ")"},
		{name: "SYS_PACCT", caps: "[SYS_PACCT]", want: at + `"SYS_PACCT" is not allowed for a decoy service (` + allowedCaps + ")"},
		{name: "SYS_RESOURCE", caps: "[SYS_RESOURCE]", want: at + `"SYS_RESOURCE" is not allowed for a decoy service (` + allowedCaps + ")"},
		{name: "IPC_LOCK", caps: "[IPC_LOCK]", want: at + `"IPC_LOCK" is not allowed for a decoy service (` + allowedCaps + ")"},
		{name: "MKNOD", caps: "[MKNOD]", want: at + `"MKNOD" is not allowed for a decoy service (` + allowedCaps + ")"},
		{name: "SYS_ADMIN with prefix", caps: "[CAP_SYS_ADMIN]", want: at + `"CAP_SYS_ADMIN" is not allowed for a decoy service (` + allowedCaps + ")"},
		{name: "SYS_PTRACE", caps: "[SYS_PTRACE]", want: at + `"SYS_PTRACE" is not allowed for a decoy service (` + allowedCaps + ")"},
		{name: "NET_ADMIN is the base's", caps: "[NET_ADMIN]", want: at + `"NET_ADMIN" belongs to the decky's base container alone; a service may not have it (` + allowedCaps + ")"},
		{name: "NET_RAW without a reason", caps: "[NET_RAW]", want: at + `NET_RAW lets a decoy on the LAN forge packets (ARP spoofing); a service gets it only with net_raw_reason: "<why it needs raw sockets>"`},
		{name: "NET_RAW with a reason", caps: "[NET_RAW]", also: "    net_raw_reason: \"answers ICMP like the real appliance\"\n", got: []string{"NET_RAW"}},
		{name: "blank reason", caps: "[NET_RAW]", also: "    net_raw_reason: \"  \"\n", want: "fleet.yaml:16: services.ssh.net_raw_reason: must say why the service needs raw sockets"},
		{name: "reason without NET_RAW", caps: "[KILL]", also: "    net_raw_reason: ping\n", want: "fleet.yaml:16: services.ssh.net_raw_reason: is set but cap_add has no NET_RAW"},
		{name: "listed twice", caps: "[KILL, CAP_KILL]", want: "fleet.yaml:15: services.ssh.cap_add[1]: capability KILL is listed twice"},
		{name: "not a string", caps: "[1]", want: at + "expected a string, got an integer (1); quote it if it is meant as text"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Load(repo(map[string]string{"fleet.yaml|    cap_add: [NET_BIND_SERVICE]\n": "    cap_add: " + tt.caps + "\n" + tt.also}))
			if tt.want != "" {
				if err == nil || err.Error() != tt.want {
					t.Fatalf("got  %v\nwant %s", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := f.Services["ssh"]; !reflect.DeepEqual(s.CapAdd, tt.got) || (slicesContains(tt.got, CapNetRaw) != (s.NetRawReason != "")) {
				t.Fatalf("CapAdd = %v reason %q, want %v", s.CapAdd, s.NetRawReason, tt.got)
			}
		})
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestServiceCapabilitiesAreLinuxCapabilities(t *testing.T) {
	for _, c := range ServiceCapabilities() {
		if name, msg := checkCap(c); name != c || msg != "" {
			t.Errorf("%s: %q %q", c, name, msg)
		}
	}
	if slicesContains(ServiceCapabilities(), CapNetRaw) || slicesContains(ServiceCapabilities(), CapNetAdmin) {
		t.Errorf("NET_RAW and NET_ADMIN must not be in the plain allowlist")
	}
}

func TestLoadServiceFields(t *testing.T) {
	const key = "fleet.yaml|    ports: [22]\n"
	tests := []struct {
		name     string
		add      string // keys added to ssh
		want     string // the one error; "" = valid
		check    bool
		readOnly bool
		limits   Limits
	}{
		{name: "defaults", check: true, limits: Limits{Pids: 256, MemoryBytes: 256 << 20, NanoCPUs: 1e9}},
		{name: "check false", add: "    check: false\n", check: false, limits: DefaultLimits()},
		{name: "read-only root", add: "    read_only: true\n", check: true, readOnly: true, limits: DefaultLimits()},
		{name: "all limits", add: "    limits: {pids: 64, memory: 512m, cpus: 0.5}\n", check: true, limits: Limits{Pids: 64, MemoryBytes: 512 << 20, NanoCPUs: 5e8}},
		{name: "cpus quoted, memory in g", add: "    limits: {memory: 2G, cpus: \"1.25\"}\n", check: true, limits: Limits{Pids: 256, MemoryBytes: 2 << 30, NanoCPUs: 1_250_000_000}},
		{name: "cpus integer", add: "    limits: {cpus: 2, memory: 65536k}\n", check: true, limits: Limits{Pids: 256, MemoryBytes: 64 << 20, NanoCPUs: 2e9}},
		{name: "check quoted", add: "    check: \"false\"\n", want: "fleet.yaml:15: services.ssh.check: expected true or false, got a string"},
		{name: "read_only as yes", add: "    read_only: 1\n", want: "fleet.yaml:15: services.ssh.read_only: expected true or false, got an integer (1)"},
		{name: "unknown limit", add: "    limits: {pid: 5}\n", want: "fleet.yaml:15: services.ssh.limits.pid: unknown key (allowed: cpus, memory, pids)"},
		{name: "pids too low", add: "    limits: {pids: 2}\n", want: "fleet.yaml:15: services.ssh.limits.pids: 2 is not between 8 and 65536"},
		{name: "pids as text", add: "    limits: {pids: \"64\"}\n", want: "fleet.yaml:15: services.ssh.limits.pids: expected an integer, got a string"},
		{name: "memory without unit", add: "    limits: {memory: 268435456}\n", want: `fleet.yaml:15: services.ssh.limits.memory: 268435456 needs a unit: write a string such as "256m" (k, m or g, binary)`},
		{name: "memory with MB", add: "    limits: {memory: 256MB}\n", want: `fleet.yaml:15: services.ssh.limits.memory: "256MB" is not a size: write an integer and a unit k, m or g (binary), such as "256m"`},
		{name: "memory fractional", add: "    limits: {memory: 1.5g}\n", want: `fleet.yaml:15: services.ssh.limits.memory: "1.5g" is not a size: write an integer and a unit k, m or g (binary), such as "256m"`},
		{name: "memory too small", add: "    limits: {memory: 4m}\n", want: `fleet.yaml:15: services.ssh.limits.memory: "4m" is not between 8m and 64g`},
		{name: "memory too large", add: "    limits: {memory: 65g}\n", want: `fleet.yaml:15: services.ssh.limits.memory: "65g" is not between 8m and 64g`},
		{name: "cpus too small", add: "    limits: {cpus: 0.001}\n", want: `fleet.yaml:15: services.ssh.limits.cpus: "0.001" is not between 0.01 and 64 CPUs`},
		{name: "cpus too many digits", add: "    limits: {cpus: 0.0000000001}\n", want: `fleet.yaml:15: services.ssh.limits.cpus: "0.0000000001" is not a decimal number of CPUs such as 0.5 or 2`},
		{name: "cpus exponent", add: "    limits: {cpus: 1e3}\n", want: `fleet.yaml:15: services.ssh.limits.cpus: "1e3" is not a decimal number of CPUs such as 0.5 or 2`},
		{name: "cpus negative", add: "    limits: {cpus: -1}\n", want: `fleet.yaml:15: services.ssh.limits.cpus: "-1" is not a decimal number of CPUs such as 0.5 or 2`},
		{name: "cpus boolean", add: "    limits: {cpus: true}\n", want: `fleet.yaml:15: services.ssh.limits.cpus: expected a number of CPUs such as 0.5, got a boolean (true)`},
		{name: "limits a list", add: "    limits: [1]\n", want: "fleet.yaml:15: services.ssh.limits: expected a mapping, got a list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Load(repo(map[string]string{key: "    ports: [22]\n" + tt.add}))
			if tt.want != "" {
				if err == nil || err.Error() != tt.want {
					t.Fatalf("got  %v\nwant %s", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := f.Services["ssh"]
			if s.Check != tt.check || s.ReadOnly != tt.readOnly || s.Limits != tt.limits {
				t.Fatalf("check=%v read_only=%v limits=%+v; want %v %v %+v", s.Check, s.ReadOnly, s.Limits, tt.check, tt.readOnly, tt.limits)
			}
			if h := f.Services["http"]; !h.Check || h.ReadOnly || h.Limits != DefaultLimits() {
				t.Errorf("http must keep the defaults: %+v", h)
			}
		})
	}
}

func TestLoadHostFields(t *testing.T) {
	tests := []struct {
		name  string
		host  string
		want  string // the one error; "" = valid
		prune Prune
		decom bool
		susp  bool
	}{
		{name: "none", host: baseHost},
		{name: "prune max", host: "prune: {max: 30}\n" + baseHost, prune: Prune{Max: 30, Set: true, Pos: Pos{"hosts/worker-a.yaml", 1}}},
		{name: "prune all", host: "prune:\n  max: all\n" + baseHost, prune: Prune{All: true, Set: true, Pos: Pos{"hosts/worker-a.yaml", 2}}},
		{name: "empty host with prune all", host: "prune: {max: all}\ndeckies: []\n", prune: Prune{All: true, Set: true, Pos: Pos{"hosts/worker-a.yaml", 1}}},
		{name: "empty host without prune stays valid", host: "deckies: []\n"},
		{name: "suspend", host: "suspend: true\n" + baseHost, susp: true},
		{name: "decommission without deckies", host: "decommission: true\n", decom: true},
		{name: "decommission with empty deckies", host: "decommission: true\ndeckies: []\n", decom: true},
		{name: "decommission false", host: "decommission: false\n" + baseHost},
		{name: "prune max zero", host: "prune: {max: 0}\n" + baseHost, want: `hosts/worker-a.yaml:1: prune.max: 0 is not a number of deckies (1 or more) or "all"`},
		{name: "prune max word", host: "prune: {max: everything}\n" + baseHost, want: `hosts/worker-a.yaml:1: prune.max: "everything" is not a number of deckies or "all"`},
		{name: "prune max float", host: "prune: {max: 0.5}\n" + baseHost, want: "hosts/worker-a.yaml:1: prune.max: expected an integer, got a number (0.5)"},
		{name: "prune without max", host: "prune: {}\n" + baseHost, want: "hosts/worker-a.yaml:1: prune.max: required key is missing"},
		{name: "prune as a word", host: "prune: all\n" + baseHost, want: "hosts/worker-a.yaml:1: prune: expected a mapping, got a string"},
		{name: "prune unknown key", host: "prune: {max: 3, min: 1}\n" + baseHost, want: "hosts/worker-a.yaml:1: prune.min: unknown key (allowed: max)"},
		{name: "suspend quoted", host: "suspend: \"true\"\n" + baseHost, want: "hosts/worker-a.yaml:1: suspend: expected true or false, got a string"},
		{name: "decommission with deckies", host: "decommission: true\n" + baseHost, want: "hosts/worker-a.yaml:3: deckies: a host with decommission: true runs no deckies; remove them (or the decommission)"},
		{name: "decommission and suspend", host: "decommission: true\nsuspend: true\n", want: "hosts/worker-a.yaml:2: suspend: decommission: true and suspend: true contradict each other; keep one"},
		{name: "not a mapping", host: "- name: a\n", want: "hosts/worker-a.yaml:1: expected a mapping, got a list"},
		{name: "no deckies key", host: "suspend: true\n", want: "hosts/worker-a.yaml:1: deckies: required key is missing (deckies: [] with prune: {max: all} removes every decky)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Load(repo(map[string]string{"hosts/worker-a.yaml": tt.host}))
			if tt.want != "" {
				if err == nil || err.Error() != tt.want {
					t.Fatalf("got  %v\nwant %s", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			h := f.Hosts["worker-a"]
			if h.Prune != tt.prune || h.Decommission != tt.decom || h.Suspend != tt.susp {
				t.Fatalf("prune=%+v decommission=%v suspend=%v; want %+v %v %v", h.Prune, h.Decommission, h.Suspend, tt.prune, tt.decom, tt.susp)
			}
			if tt.susp && h.SuspendPos != (Pos{"hosts/worker-a.yaml", 1}) || tt.decom && h.DecommissionPos != (Pos{"hosts/worker-a.yaml", 1}) {
				t.Errorf("positions: suspend %v decommission %v", h.SuspendPos, h.DecommissionPos)
			}
		})
	}
}

func TestPruneAllows(t *testing.T) {
	tests := []struct {
		prune           Prune
		running, remove int
		want            bool
	}{
		{Prune{}, 20, 0, true},
		{Prune{}, 20, 10, true},
		{Prune{}, 20, 11, false}, // more than 10
		{Prune{}, 30, 11, false}, // more than 10, although under half
		{Prune{}, 10, 5, true},   // half
		{Prune{}, 10, 6, false},  // more than half
		{Prune{}, 1, 1, false},   // the last decky: deckies: [] needs the override
		{Prune{}, 3, 1, true},    // a third
		{Prune{Set: true, Max: 30}, 40, 30, true},
		{Prune{Set: true, Max: 30}, 40, 31, false},
		{Prune{Set: true, Max: 3}, 4, 3, true}, // the override replaces the half rule
		{Prune{Set: true, All: true}, 100, 100, true},
		{Prune{Set: true, All: true}, 1, 1, true},
	}
	for _, tt := range tests {
		if got := tt.prune.Allows(tt.running, tt.remove); got != tt.want {
			t.Errorf("%+v.Allows(%d, %d) = %v, want %v", tt.prune, tt.running, tt.remove, got, tt.want)
		}
	}
}

func TestParseMemoryAndCPUs(t *testing.T) {
	for in, want := range map[string]int64{"8m": 8 << 20, "256m": 256 << 20, "1g": 1 << 30, "64g": 64 << 30, "8192k": 8 << 20, "512M": 512 << 20} {
		if got, msg := ParseMemory(in); got != want || msg != "" {
			t.Errorf("ParseMemory(%q) = %d %q, want %d", in, got, msg, want)
		}
	}
	for _, in := range []string{"", "256", "256mb", "0m", "-1m", " 256m", "1.5g", "99999999999999g"} {
		if _, msg := ParseMemory(in); msg == "" {
			t.Errorf("ParseMemory(%q) accepted", in)
		}
	}
	for in, want := range map[string]int64{"0.01": 1e7, "0.5": 5e8, "1": 1e9, "1.000000001": 1_000_000_001, "64": 64e9} {
		if got, msg := ParseCPUs(in); got != want || msg != "" {
			t.Errorf("ParseCPUs(%q) = %d %q, want %d", in, got, msg, want)
		}
	}
	for _, in := range []string{"", "0", "0.009", "64.5", ".5", "1.", "1e9", "NaN", "1,5"} {
		if _, msg := ParseCPUs(in); msg == "" {
			t.Errorf("ParseCPUs(%q) accepted", in)
		}
	}
}

// TestExampleRepository keeps examples/fleet-repo valid, and shows the new
// fields there decode.
func TestExampleRepository(t *testing.T) {
	f, err := Load(os.DirFS("../examples/fleet-repo"))
	if err != nil {
		t.Fatalf("examples/fleet-repo does not validate:\n%v", err)
	}
	if len(f.Hosts) != 2 || len(f.Hosts["worker-a"].Deckies) != 4 {
		t.Fatalf("example fleet decoded wrong: %d hosts", len(f.Hosts))
	}
	if s := f.Services["smtp"]; !s.ReadOnly || s.Limits != (Limits{Pids: 64, MemoryBytes: 128 << 20, NanoCPUs: 5e8}) || !s.Check {
		t.Errorf("smtp's read_only and limits decoded wrong: %+v", s)
	}
	if s := f.Services["ssh"]; s.ReadOnly || s.Limits != DefaultLimits() {
		t.Errorf("ssh must have the defaults: %+v", s)
	}
	for name, s := range f.Services {
		if s.Limits.Pids == 0 || s.Limits.MemoryBytes == 0 || s.Limits.NanoCPUs == 0 {
			t.Errorf("service %s has no limits: %+v", name, s.Limits)
		}
		if strings.Contains(strings.Join(s.CapAdd, ","), CapNetRaw) && s.NetRawReason == "" {
			t.Errorf("service %s holds NET_RAW without a reason", name)
		}
	}
}
