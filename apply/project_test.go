package apply

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/compose/v2/pkg/api"

	"github.com/decnet/pull-agent/engine"
)

// composeProjectRE is Compose's rule for project names (compose-go's
// loader refuses any other): lowercase letters, digits, "-" and "_",
// starting with a letter or digit.
var composeProjectRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

func TestDeckyProject(t *testing.T) {
	tests := []struct{ project, decky, want string }{
		{"decnet", "d1", "decnet_d1"},
		{"pa-e2e-1a2b3c", "web-01", "pa-e2e-1a2b3c_web-01"},
		{"decnet", "build", "decnet_build"}, // not the build project, decnet-build
		{"", "d1", "d1"},
	}
	for _, tt := range tests {
		got := DeckyProject(tt.project, tt.decky)
		if got != tt.want || !composeProjectRE.MatchString(got) {
			t.Errorf("DeckyProject(%q, %q) = %q, want %q (a valid Compose project name)", tt.project, tt.decky, got, tt.want)
		}
	}
	// "-" is in both alphabets, "_" in neither: deckies of fleets whose
	// project names run into each other still get distinct projects.
	if DeckyProject("decnet", "a-b") == DeckyProject("decnet-a", "b") {
		t.Error("two different (project, decky) pairs share a Compose project")
	}
}

// TestRenderPutsEachDeckyInItsOwnProject: every container of a decky is
// labelled with the decky's own project, and none of it is hashed: the
// project a decky lives in never makes it look changed.
func TestRenderPutsEachDeckyInItsOwnProject(t *testing.T) {
	specs := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)
	for _, d := range specs {
		for _, c := range d.Containers() {
			if got := c.Config.CustomLabels[api.ProjectLabel]; got != "decnet_"+d.Name {
				t.Errorf("%s: project label %q, want decnet_%s", c.Name, got, d.Name)
			}
		}
		p := d.Project("decnet", "/w", testNet)
		if p.Name != "decnet" {
			t.Errorf("project name %q", p.Name)
		}
		for _, c := range d.Containers() {
			if got := p.Services[c.Name].CustomLabels[api.ProjectLabel]; got != "decnet" {
				t.Errorf("%s in project decnet is labelled %q: Compose would not find it", c.Name, got)
			}
			if got := c.Config.CustomLabels[api.ProjectLabel]; got != "decnet_"+d.Name {
				t.Errorf("Project changed the rendering's own labels: %q", got)
			}
			if h := containerHash(p.Services[c.Name], Image{}, ""); h != containerHash(c.Config, Image{}, "") {
				t.Errorf("%s: the project label is part of the hash", c.Name)
			}
		}
	}
}

// projectEngine records what applying asks of the Engine; every container
// is running at once.
type projectEngine struct {
	Engine
	mu    stdsync.Mutex
	calls []string // "remove <ids>" and "up <project> <services>"
	ups   map[string]*types.Project
}

func (e *projectEngine) ImageID(context.Context, string) (string, error) { return "sha256:x", nil }

func (e *projectEngine) Up(_ context.Context, p *types.Project, services, recreate []string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, fmt.Sprintf("up %s %s", p.Name, strings.Join(append(services, recreate...), ",")))
	e.ups[p.Name] = p
	return nil
}

func (e *projectEngine) Remove(_ context.Context, ids []string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(ids) > 0 {
		e.calls = append(e.calls, "remove "+strings.Join(ids, ","))
	}
	return nil
}

func (e *projectEngine) Inspect(_ context.Context, id string) (engine.State, error) {
	return engine.State{Name: id, Status: "running", Running: true, StartedAt: time.Unix(1, 0)}, nil
}

// TestApplyChoosesTheDeckysProject: a new decky is created in its own
// Compose project; a decky running in the older shared project stays
// there while only some of its containers change (an agent upgrade
// touches nothing), and moves to its own project only when all of them
// are replaced anyway, its old containers removed first (services, then
// the base) so that their names are free.
func TestApplyChoosesTheDeckysProject(t *testing.T) {
	specs := renderFleet(t, fleetYAML, hostYAML, tree1, nil, testNet)
	d1 := specs["d1"]
	other := renderFleet(t, fleetYAML, strings.Replace(hostYAML, "server_header: nginx", "server_header: apache", 1), tree1, nil, testNet)["d1"]
	inProject := func(cs []engine.Container, p string) []engine.Container {
		out := slices.Clone(cs)
		for i := range out {
			out[i].Labels = maps.Clone(out[i].Labels)
			out[i].Labels[api.ProjectLabel] = p
		}
		return out
	}
	old := inProject(observe(d1), "decnet") // as an agent before issue 15 left it
	tests := []struct {
		name     string
		desired  *DeckySpec
		observed []engine.Container
		want     []string
		project  string // every service of the project Compose got is labelled so
	}{
		{"a new decky gets its own project", d1, nil,
			[]string{"up decnet_d1 d1,d1-http,d1-ssh"}, "decnet_d1"},
		{"a service change of a decky in the shared project stays there", other, old,
			[]string{"up decnet d1-http"}, "decnet"},
		{"a stopped service of a decky in the shared project is started there", d1,
			edit(old, "d1-ssh", func(c *engine.Container) { c.State = "exited" }),
			[]string{"up decnet d1-ssh"}, "decnet"},
		{"a decky in the shared project whose base is replaced moves, its containers removed first", d1,
			edit(old, "d1", func(c *engine.Container) { c.Labels[engine.LabelHash] = "old" }),
			[]string{"remove id-d1-http,id-d1-ssh", "remove id-d1", "up decnet_d1 d1,d1-http,d1-ssh"}, "decnet_d1"},
		{"a decky in its own project is recreated in place", d1,
			edit(inProject(observe(d1), "decnet_d1"), "d1", func(c *engine.Container) { c.Labels[engine.LabelHash] = "old" }),
			[]string{"up decnet_d1 d1,d1-http,d1-ssh"}, "decnet_d1"},
		{"a decky in the shared project whose base was removed by hand moves", d1, without(old, "d1"),
			[]string{"remove id-d1-http,id-d1-ssh", "up decnet_d1 d1,d1-http,d1-ssh"}, "decnet_d1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := Diff(DiffInput{Owner: "w", Project: "decnet", Desired: []*DeckySpec{tt.desired}, Observed: tt.observed})
			eng := &projectEngine{ups: map[string]*types.Project{}}
			a := NewApplier(eng, "decnet", "/w", testNet, Options{Steady: SteadyOptions{Samples: 1, Interval: time.Millisecond, Timeout: 5 * time.Second}}, slog.New(slog.DiscardHandler))
			res := a.Apply(context.Background(), cs, nil)
			if len(res) != 1 || res[0].Status != Succeeded {
				t.Fatalf("results %+v (plan %s)", res, summary(cs))
			}
			if !slices.Equal(eng.calls, tt.want) {
				t.Errorf("plan %s\n got: %q\nwant: %q", summary(cs), eng.calls, tt.want)
			}
			p := eng.ups[tt.project]
			if p == nil {
				t.Fatalf("Compose got no project %s", tt.project)
			}
			for name, svc := range p.Services {
				if got := svc.CustomLabels[api.ProjectLabel]; got != tt.project {
					t.Errorf("service %s of project %s is labelled %q", name, tt.project, got)
				}
			}
		})
	}
}
