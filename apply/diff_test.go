package apply

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/engine"
)

// observe turns rendered deckies into the containers that would run them.
func observe(specs ...*DeckySpec) []engine.Container {
	var out []engine.Container
	for _, d := range specs {
		for _, c := range d.Containers() {
			out = append(out, engine.Container{ID: "id-" + c.Name, Name: c.Name, State: "running", Labels: maps.Clone(map[string]string(c.Config.Labels))})
		}
	}
	return out
}

func edit(cs []engine.Container, name string, fn func(*engine.Container)) []engine.Container {
	out := append([]engine.Container(nil), cs...)
	for i := range out {
		if out[i].Name == name {
			out[i].Labels = maps.Clone(out[i].Labels)
			fn(&out[i])
		}
	}
	return out
}

func without(cs []engine.Container, names ...string) []engine.Container {
	var out []engine.Container
	for _, c := range cs {
		drop := false
		for _, n := range names {
			drop = drop || c.Name == n
		}
		if !drop {
			out = append(out, c)
		}
	}
	return out
}

func summary(cs ChangeSet) string {
	var parts []string
	for _, e := range cs.Entries {
		s := fmt.Sprintf("%s:%s", e.Decky, e.Action)
		if e.Operation != "" {
			s += "/" + string(e.Operation)
		}
		if e.RecreateBase {
			s += " base"
		}
		if len(e.Services) > 0 {
			s += " svc=" + strings.Join(e.Services, ",")
		}
		if len(e.Drop) > 0 {
			s += " drop=" + strings.Join(e.Drop, ",")
		}
		if len(e.Start) > 0 {
			s += " start=" + strings.Join(e.Start, ",")
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func TestDiff(t *testing.T) {
	specs := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)
	d1, d2 := specs["d1"], specs["d2"]
	running := observe(d1, d2)
	applied := map[string]string{"d1": d1.Hash, "d2": d2.Hash}
	other := renderFleet(t, fleetYAML, strings.Replace(hostYAML, "server_header: nginx", "server_header: apache", 1), tree1, nil, testNet)["d1"]
	foreign := engine.Container{ID: "f1", Name: "d2-ssh", State: "running", Labels: map[string]string{}}

	tests := []struct {
		name     string
		desired  []*DeckySpec
		failed   map[string]error
		observed []engine.Container
		applied  map[string]string
		quar     func(string, string) bool
		want     string
	}{
		{"nothing runs: create everything", []*DeckySpec{d1, d2}, nil, nil, nil, nil,
			"d1:create/deploy base svc=http,ssh; d2:create/deploy base svc=ssh"},
		{"everything matches: unchanged", []*DeckySpec{d1, d2}, nil, running, applied, nil,
			"d1:unchanged; d2:unchanged"},
		{"one service's config changed: only it is recreated", []*DeckySpec{other, d2}, nil, running, applied, nil,
			"d1:update/mutate svc=http; d2:unchanged"},
		{"base changed: base and all services", []*DeckySpec{d1, d2}, nil,
			edit(running, "d1", func(c *engine.Container) { c.Labels[engine.LabelHash] = "old" }), map[string]string{}, nil,
			"d1:update/mutate base svc=http,ssh; d2:unchanged"},
		{"a service container stopped by hand at an applied state: repair by start", []*DeckySpec{d1, d2}, nil,
			edit(running, "d1-ssh", func(c *engine.Container) { c.State = "exited" }), applied, nil,
			"d1:repair/repair start=d1-ssh; d2:unchanged"},
		{"a stopped base loses its namespace: repair recreates all", []*DeckySpec{d1, d2}, nil,
			edit(running, "d1", func(c *engine.Container) { c.State = "exited" }), applied, nil,
			"d1:repair/repair base svc=http,ssh; d2:unchanged"},
		{"a container removed by hand: repair", []*DeckySpec{d1, d2}, nil, without(running, "d2-ssh"), applied, nil,
			"d1:unchanged; d2:repair/repair svc=ssh"},
		{"a service dropped from the decky", []*DeckySpec{d1, renderFleet(t, fleetYAML, strings.NewReplacer("services: [ssh, http]", "services: [ssh]", "      http: {server_header: nginx}\n", "").Replace(hostYAML), tree1, nil, testNet)["d1"], d2}[1:], nil,
			running, applied, nil, "d1:update/mutate drop=http; d2:unchanged"},
		{"a decky no longer desired is removed", []*DeckySpec{d1}, nil, running, applied, nil,
			"d1:unchanged; d2:remove/teardown"},
		{"a decky that cannot be applied keeps running untouched", []*DeckySpec{d1}, map[string]error{"d2": errors.New("pool exhausted")}, running, applied, nil,
			"d1:unchanged; d2:failed/mutate"},
		{"a foreign container holding a desired name fails that decky only", []*DeckySpec{d1, d2}, nil,
			append(without(observe(d1), "x"), foreign), nil, nil,
			"d1:unchanged; d2:failed/deploy"},
		{"a foreign container claiming one of our Compose services is a clash too", []*DeckySpec{d1, d2}, nil,
			append(observe(d1), engine.Container{ID: "dn", Name: "decnet-d2-1", State: "running",
				Labels: map[string]string{"com.docker.compose.project": "decnet", "com.docker.compose.service": "d2"}}), applied, nil,
			"d1:unchanged; d2:failed/deploy"},
		{"a foreign container claiming a service of a decky's own Compose project is a clash", []*DeckySpec{d1, d2}, nil,
			append(observe(d1), engine.Container{ID: "dn", Name: "decnet_d2-d2-ssh-1", State: "running",
				Labels: map[string]string{"com.docker.compose.project": "decnet_d2", "com.docker.compose.service": "d2-ssh"}}), applied, nil,
			"d1:unchanged; d2:failed/deploy"},
		{"a foreign container in another decky's own project claims nothing of this one", []*DeckySpec{d1, d2}, nil,
			append(observe(d1, d2), engine.Container{ID: "dn", Name: "x-1", State: "running",
				Labels: map[string]string{"com.docker.compose.project": "decnet_d1", "com.docker.compose.service": "d2"}}), applied, nil,
			"d1:unchanged; d2:unchanged"},
		{"foreign containers are never removed", []*DeckySpec{d1}, nil,
			append(observe(d1), engine.Container{ID: "x", Name: "d9", Labels: map[string]string{engine.LabelDecky: "d9", engine.LabelOwner: "someone-else"}}), applied, nil,
			"d1:unchanged"},
		{"a quarantined decky is left alone", []*DeckySpec{d1, d2}, nil, nil, nil,
			func(d, h string) bool { return d == "d2" && h == d2.Hash },
			"d1:create/deploy base svc=http,ssh; d2:quarantined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := Diff(DiffInput{Owner: "w", Project: "decnet", Desired: tt.desired, Failed: tt.failed, Observed: tt.observed, Applied: tt.applied, Quarantined: tt.quar})
			if got := summary(cs); got != tt.want {
				t.Errorf("\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

// TestDiffVerifiesAgainWhatFailedVerification: a decky running exactly as
// desired whose last verification failed at this hash (it did not answer
// on a declared port) is checked again rather than taken as unchanged;
// once verified (applied) or without the hook it is unchanged.
func TestDiffVerifiesAgainWhatFailedVerification(t *testing.T) {
	specs := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)
	d1, d2 := specs["d1"], specs["d2"]
	running := observe(d1, d2)
	failedAt := func(d, h string) bool { return d == "d1" && h == d1.Hash }
	tests := []struct {
		name       string
		applied    map[string]string
		unverified func(string, string) bool
		want       string
	}{
		{"failed its first check: verify again as a deploy", map[string]string{"d2": d2.Hash}, failedAt, "d1:verify/deploy; d2:unchanged"},
		{"an earlier state was verified: verify again as a mutate", map[string]string{"d1": "older", "d2": d2.Hash}, failedAt, "d1:verify/mutate; d2:unchanged"},
		{"verified at this hash: unchanged", map[string]string{"d1": d1.Hash, "d2": d2.Hash}, failedAt, "d1:unchanged; d2:unchanged"},
		{"no hook: unchanged", map[string]string{}, nil, "d1:unchanged; d2:unchanged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := Diff(DiffInput{Owner: "w", Project: "decnet", Desired: []*DeckySpec{d1, d2}, Observed: running, Applied: tt.applied, Unverified: tt.unverified})
			if got := summary(cs); got != tt.want {
				t.Errorf("\n got: %s\nwant: %s", got, tt.want)
			}
			for _, e := range cs.Entries {
				if e.Action == Verify && (e.RecreateBase || len(e.Services)+len(e.Start)+len(e.Drop) > 0) {
					t.Errorf("verify touches containers: %+v", e)
				}
			}
		})
	}
}

// A Verify entry recreates nothing: it only waits for the steady state and
// runs the LAN check again.
func TestApplyVerifyOnlyChecks(t *testing.T) {
	d := lanDecky()
	eng := steadyEngine(d)
	chk := &recordingChecker{closed: map[uint16]bool{22: true}}
	a := NewApplier(eng, "p", "/", engine.NetworkSpec{}, Options{Steady: SteadyOptions{Samples: 1, Interval: time.Millisecond, Timeout: time.Second}, LANCheck: chk}, slog.New(slog.DiscardHandler))
	res := a.Apply(t.Context(), ChangeSet{Entries: []Entry{{Decky: "d", Action: Verify, Operation: OpDeploy, spec: d}}}, nil)
	if len(res) != 1 || res[0].Status != FailedSt || !strings.Contains(res[0].Error, "22/tcp") {
		t.Fatalf("results %+v, want the LAN check failure again", res)
	}
	if len(chk.calls) == 0 {
		t.Error("the LAN check did not run")
	}
}

// TestDiffRepairsDrift: a decky whose containers are exactly as desired
// but that the identity check found drifted on the LAN is repaired as a
// whole (base and every service recreated: the MAC and address live in
// the base); a decky changing anyway, a quarantined one and the others
// are left to their own entry.
func TestDiffRepairsDrift(t *testing.T) {
	specs := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)
	d1, d2 := specs["d1"], specs["d2"]
	drifted := func(names ...string) func(string) bool {
		return func(d string) bool { return slices.Contains(names, d) }
	}
	tests := []struct {
		name     string
		observed []engine.Container
		drifted  func(string) bool
		quar     func(string, string) bool
		want     string
	}{
		{"drifted while as desired: repair, whole decky", observe(d1, d2), drifted("d1"), nil,
			"d1:repair/repair base svc=http,ssh; d2:unchanged"},
		{"no hook: unchanged", observe(d1, d2), nil, nil, "d1:unchanged; d2:unchanged"},
		{"not yet created: a create, not a repair", observe(d2), drifted("d1"), nil,
			"d1:create/deploy base svc=http,ssh; d2:unchanged"},
		{"quarantined stays quarantined", observe(d1, d2), drifted("d1"), func(d, _ string) bool { return d == "d1" },
			"d1:quarantined; d2:unchanged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := Diff(DiffInput{Owner: "w", Project: "decnet", Desired: []*DeckySpec{d1, d2}, Observed: tt.observed, Drifted: tt.drifted, Quarantined: tt.quar})
			if got := summary(cs); got != tt.want {
				t.Errorf("\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}
