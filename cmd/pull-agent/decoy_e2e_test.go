package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/fleettest"
	"github.com/decnet/pull-agent/master"
)

// Issue 12: decoys safe by construction, and verified from the LAN.

// Linux capability bits (include/uapi/linux/capability.h).
const (
	capNetBindService = 10
	capNetAdmin       = 12
	capNetRaw         = 13
)

// decoyPrivileges returns the CapEff mask and NoNewPrivs flag a decoy
// reported at start (cmd/decoy writes them from /proc/self/status).
func decoyPrivileges(t *testing.T, name string) (capEff uint64, noNewPrivs string) {
	t.Helper()
	c := testDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := c.ContainerLogs(ctx, name, container.LogsOptions{ShowStderr: true, ShowStdout: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out.String(), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "decoy: privileges ")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "CapEff":
				if capEff, err = strconv.ParseUint(v, 16, 64); err != nil {
					t.Fatalf("%s: CapEff %q: %v", name, v, err)
				}
			case "NoNewPrivs":
				noNewPrivs = v
			}
		}
		return capEff, noNewPrivs
	}
	t.Fatalf("%s never reported its privileges; logs:\n%s", name, out.String())
	return 0, ""
}

// TestEndToEndDecoyContainersAreConfined: docker inspect of a service
// container shows every capability dropped but the catalog's (no NET_RAW,
// no NET_ADMIN), no-new-privileges and the limits; the base alone holds
// NET_ADMIN. The kernel agrees: the decoy's own effective capability set
// and no_new_privs flag are what the Engine was asked for.
func TestEndToEndDecoyContainersAreConfined(t *testing.T) {
	w := newWorld(t)
	w.commit("one decky", [][2]string{{"conf", "ssh, http, smtp"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("pass exited %d:\n%s", code, out)
	}
	c := testDocker(t)
	inspect := func(name string) container.InspectResponse {
		t.Helper()
		in, err := c.ContainerInspect(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	// The Engine reports capabilities with their "CAP_" prefix.
	sorted := func(s []string) string {
		out := make([]string, len(s))
		for i, c := range s {
			out[i] = strings.TrimPrefix(c, "CAP_")
		}
		slices.Sort(out)
		return strings.Join(out, ",")
	}

	base := inspect(w.name("conf"))
	bh := base.HostConfig
	if sorted(bh.CapAdd) != "NET_ADMIN" || sorted(bh.CapDrop) != "ALL" {
		t.Errorf("base caps: add %v drop %v, want add NET_ADMIN drop ALL", bh.CapAdd, bh.CapDrop)
	}
	if !slices.Contains(bh.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("base security options %v lack no-new-privileges", bh.SecurityOpt)
	}
	if bh.PidsLimit == nil || *bh.PidsLimit != apply.BaseLimits.Pids || bh.Memory != apply.BaseLimits.MemoryBytes || bh.NanoCPUs != apply.BaseLimits.NanoCPUs {
		t.Errorf("base limits: pids %v memory %d cpus %d, want %+v", bh.PidsLimit, bh.Memory, bh.NanoCPUs, apply.BaseLimits)
	}

	for _, svc := range []struct {
		name string
		caps string // the catalog's cap_add (examples/fleet-repo/fleet.yaml)
		port string
	}{{"ssh", "NET_BIND_SERVICE", "22/tcp"}, {"http", "", "80/tcp"}} {
		name := w.name("conf") + "-" + svc.name
		in := inspect(name)
		h := in.HostConfig
		if sorted(h.CapDrop) != "ALL" || sorted(h.CapAdd) != svc.caps {
			t.Errorf("%s caps: add %v drop %v, want add [%s] drop ALL", name, h.CapAdd, h.CapDrop, svc.caps)
		}
		if !slices.Contains(h.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s security options %v lack no-new-privileges", name, h.SecurityOpt)
		}
		def := apply.DefaultServiceLimits
		if h.PidsLimit == nil || *h.PidsLimit != def.Pids || h.Memory != def.MemoryBytes || h.MemorySwap != def.MemoryBytes || h.NanoCPUs != def.NanoCPUs {
			t.Errorf("%s limits: pids %v memory %d swap %d cpus %d, want %+v", name, h.PidsLimit, h.Memory, h.MemorySwap, h.NanoCPUs, def)
		}
		if len(h.PortBindings) != 0 || h.PublishAllPorts {
			t.Errorf("%s publishes ports on the worker: %v", name, h.PortBindings)
		}
		if got := in.Config.Labels[engine.LabelPorts]; got != svc.port {
			t.Errorf("%s ports label %q, want %q", name, got, svc.port)
		}
		eff, nnp := decoyPrivileges(t, name)
		if eff&(1<<capNetRaw) != 0 || eff&(1<<capNetAdmin) != 0 {
			t.Errorf("%s holds NET_RAW or NET_ADMIN: CapEff %016x", name, eff)
		}
		if want := uint64(0); svc.caps == "NET_BIND_SERVICE" {
			want = 1 << capNetBindService
			if eff != want {
				t.Errorf("%s: CapEff %016x, want only NET_BIND_SERVICE", name, eff)
			}
		} else if eff != want {
			t.Errorf("%s: CapEff %016x, want none", name, eff)
		}
		if nnp != "1" {
			t.Errorf("%s: NoNewPrivs %q, want 1", name, nnp)
		}
	}
	// smtp runs read-only with its own limits (examples/fleet-repo):
	// read_only: true, limits: {pids: 64, memory: 128m, cpus: 0.5}.
	smtp := inspect(w.name("conf") + "-smtp").HostConfig
	if !smtp.ReadonlyRootfs || len(smtp.Tmpfs) != 1 || !strings.Contains(smtp.Tmpfs["/tmp"], "noexec") {
		t.Errorf("smtp: read-only %v tmpfs %v, want a read-only root with a noexec /tmp", smtp.ReadonlyRootfs, smtp.Tmpfs)
	}
	if smtp.PidsLimit == nil || *smtp.PidsLimit != 64 || smtp.Memory != 128<<20 || smtp.NanoCPUs != 500_000_000 {
		t.Errorf("smtp limits: pids %v memory %d cpus %d, want the catalog's 64, 128m, 0.5", smtp.PidsLimit, smtp.Memory, smtp.NanoCPUs)
	}
	if ro := inspect(w.name("conf") + "-ssh").HostConfig; ro.ReadonlyRootfs {
		t.Errorf("ssh runs read-only without read_only: in the catalog")
	}
	// With no capability at all, http still serves port 80 to the LAN.
	ip := w.addr(w.owned()[w.name("conf")])
	if banner, err := w.lan.WaitBanner(ip, 80, "GET / HTTP/1.0\r\n\r\n", 10*time.Second); err != nil || !strings.Contains(banner, "200 OK") {
		t.Errorf("http decoy does not answer from the LAN: %q, %v", banner, err)
	}
}

// TestEndToEndBuildFromAbsentImageFailsAtOnce: a Dockerfile FROM an image
// the worker does not have fails that decky at once, naming the image and
// the Dockerfile line; the other deckies converge; nothing is pulled. The
// "sealed" decky's image has a RUN step that fails when it sees any
// network interface but loopback: it builds only because RUN steps get no
// network.
func TestEndToEndBuildFromAbsentImageFailsAtOnce(t *testing.T) {
	spy := newDockerSpy(t)
	w := newWorld(t)
	absent := "pull-agent-test/absent-" + w.host + ":1"
	fleet := readFile(t, filepath.Join(w.repo.Work, "fleet.yaml"))
	fleet = strings.Replace(fleet, "services:\n", "services:\n  offline:\n    build: services/offline\n    ports: [8080]\n"+
		"  sealed:\n    build: services/sealed\n    ports: [8080]\n", 1)
	fleettest.AddDecoy(t, w.repo, "services/offline")
	fleettest.AddDecoy(t, w.repo, "services/sealed")
	since := time.Now()
	commit := w.commit("a service built FROM an image the worker lacks", [][2]string{{"good", "ssh"}, {"bad", "offline"}, {"sealed", "sealed"}}, map[string]string{
		"fleet.yaml":                  fleet,
		"services/offline/Dockerfile": "FROM " + absent + "\nCOPY decoy /decoy\nENTRYPOINT [\"/decoy\"]\n",
		"services/sealed/Dockerfile": "FROM scratch\nCOPY decoy /decoy\nRUN [\"/decoy\", \"netless\"]\n" +
			"ENV DECOY_PORTS=8080\nENTRYPOINT [\"/decoy\"]\nCMD [\"serve\"]\n" +
			"LABEL test=" + w.host + "\n", // a new image each run: it must really be built
	})
	code, out := w.once()
	if code != 1 {
		t.Fatalf("a pass with a failing decky must exit 1, got %d:\n%s", code, out)
	}
	if got := w.events(commit); !sameStrings(got, []string{"bad deploy failed", "good deploy succeeded", "sealed deploy succeeded"}) {
		rows, _ := w.store.Events(context.Background(), master.EventFilter{Host: w.host, Status: "failed"})
		t.Fatalf("master events = %v; failures: %+v", got, rows)
	}
	rows, err := w.store.Events(context.Background(), master.EventFilter{Host: w.host, Status: "failed"})
	if err != nil || len(rows) != 1 {
		t.Fatalf("failed events = %v, %v", rows, err)
	}
	for _, s := range []string{absent, "services/offline/Dockerfile:1", "not present on this worker"} {
		if !strings.Contains(rows[0].Error, s) {
			t.Errorf("the failure %q does not contain %q", rows[0].Error, s)
		}
	}
	if len(ids(w.owned(), w.name("bad"))) != 0 {
		t.Errorf("the failed decky has containers: %v", names(w.owned()))
	}
	// No pull: the agent never asked the Engine to create an image from a
	// registry, and the Engine itself pulled nothing (a build's own FROM
	// would show there).
	for _, call := range spy.since(0) {
		if strings.Contains(call, "/images/create") || strings.Contains(call, "/distribution/") {
			t.Errorf("the agent asked for a pull: %s", call)
		}
	}
	for _, ev := range imageEvents(t, since) {
		if strings.HasPrefix(ev, "pull ") {
			t.Errorf("the Engine pulled: %s", ev)
		}
	}
}

// imageEvents returns the Engine's image events since then ("pull ref").
func imageEvents(t *testing.T, since time.Time) []string {
	t.Helper()
	c := testDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msgs, errs := c.Events(ctx, events.ListOptions{Since: fmt.Sprint(since.Unix()), Until: fmt.Sprint(time.Now().Add(time.Second).Unix()),
		Filters: filters.NewArgs(filters.Arg("type", string(events.ImageEventType)))})
	var out []string
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return out
			}
			out = append(out, string(m.Action)+" "+m.Actor.ID)
		case err := <-errs:
			if err != nil && ctx.Err() == nil && !strings.Contains(err.Error(), "EOF") {
				t.Fatal(err)
			}
			return out
		}
	}
}

// wrongPortFleet adds a service that declares port 22 but listens on 2222.
func (w *world) wrongPortFleet(t *testing.T) map[string]string {
	fleet := readFile(t, filepath.Join(w.repo.Work, "fleet.yaml"))
	fleet = strings.Replace(fleet, "services:\n", "services:\n  liar:\n    build: services/ssh\n    ports: [22]\n    environment: {DECOY_PORTS: \"2222\"}\n", 1)
	return map[string]string{"fleet.yaml": fleet}
}

// TestEndToEndDialCheckerFromTheWorker runs the real LAN check from the
// worker against running deckies, through the host helper link the agent
// keeps: a declared port that answers passes, port 22 of a decoy that
// listens on 2222 fails naming 22/tcp.
func TestEndToEndDialCheckerFromTheWorker(t *testing.T) {
	w := newWorld(t)
	w.commit("a decky on the wrong port", [][2]string{{"honest", "ssh"}, {"liar", "liar"}}, w.wrongPortFleet(t))
	w.once() // with the LAN check wired the liar fails here; its containers run either way
	cs := w.owned()
	honest, liar := w.addr(cs[w.name("honest")]), w.addr(cs[w.name("liar")])
	if !honest.IsValid() || !liar.IsValid() {
		t.Fatalf("deckies not up: %v", names(cs))
	}
	chk := apply.DialChecker{Timeout: 5 * time.Second, Interval: 100 * time.Millisecond}
	ctx := context.Background()
	if err := chk.CheckPorts(ctx, honest, []desired.Port{{Number: 22, Proto: "tcp"}}); err != nil {
		t.Errorf("honest decky's port 22 from the worker: %v", err)
	}
	if err := chk.CheckPorts(ctx, liar, []desired.Port{{Number: 2222, Proto: "tcp"}}); err != nil {
		t.Errorf("the liar does answer on 2222 from the worker: %v", err)
	}
	err := chk.CheckPorts(ctx, liar, []desired.Port{{Number: 22, Proto: "tcp"}, {Number: 161, Proto: "udp"}})
	if err == nil || !strings.Contains(err.Error(), "22/tcp") || strings.Contains(err.Error(), "161") {
		t.Errorf("liar's port 22: %v, want a failure naming 22/tcp only", err)
	}
	if !strings.Contains(fmt.Sprint(err), liar.String()) {
		t.Errorf("the failure does not name the decky's address %s: %v", liar, err)
	}
	// Bound to the helper link (SO_BINDTODEVICE), as the agent should run
	// it: the probe can only leave through the helper's route.
	bound := chk
	bound.Device = w.helper
	if err := bound.CheckPorts(ctx, honest, []desired.Port{{Number: 22, Proto: "tcp"}}); err != nil {
		t.Errorf("bound to the helper link %s: %v", w.helper, err)
	}
	bound.Device = w.lan.Parent // the macvlan parent cannot reach its own macvlan children
	bound.Timeout = time.Second
	if err := bound.CheckPorts(ctx, honest, []desired.Port{{Number: 22, Proto: "tcp"}}); err == nil {
		t.Errorf("bound to the parent NIC %s the decky answered: the helper link is not what carries the check", w.lan.Parent)
	}
}

// TestEndToEndLANCheckFailsDeclaredPortNotAnswering: a service declaring
// port 22 but listening on 2222 fails its decky, naming 22/tcp and the
// service; the honest decky next to it converges.
func TestEndToEndLANCheckFailsDeclaredPortNotAnswering(t *testing.T) {
	w := newWorld(t)
	commit := w.commit("a decky on the wrong port", [][2]string{{"honest", "ssh"}, {"liar", "liar"}}, w.wrongPortFleet(t))
	code, out := w.once()
	if code != 1 {
		t.Fatalf("a pass with a decky not answering on its declared port must exit 1, got %d:\n%s", code, out)
	}
	if got := w.events(commit); !sameStrings(got, []string{"honest deploy succeeded", "liar deploy failed"}) {
		t.Fatalf("master events = %v", got)
	}
	rows, err := w.store.Events(context.Background(), master.EventFilter{Host: w.host, Status: "failed"})
	if err != nil || len(rows) != 1 {
		t.Fatalf("failed events = %v, %v", rows, err)
	}
	for _, s := range []string{"22/tcp", "service liar"} {
		if !strings.Contains(rows[0].Error, s) {
			t.Errorf("the failure %q does not contain %q", rows[0].Error, s)
		}
	}
}
