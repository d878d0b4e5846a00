package apply

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/decnet/pull-agent/engine"
)

// scriptedEngine answers Inspect from a per-container script of states;
// the last state repeats. Other methods are not used by waitSteady.
type scriptedEngine struct {
	Engine
	script map[string][]engine.State
	logs   string
}

func (s *scriptedEngine) Inspect(_ context.Context, id string) (engine.State, error) {
	seq := s.script[id]
	if len(seq) == 0 {
		return engine.State{}, errors.New("no such container")
	}
	st := seq[0]
	if len(seq) > 1 {
		s.script[id] = seq[1:]
	}
	return st, nil
}

func (s *scriptedEngine) Logs(context.Context, string, int) (string, error) { return s.logs, nil }

func running(restarts int, health string) engine.State {
	return engine.State{Status: "running", Running: true, RestartCount: restarts, Health: health, StartedAt: time.Unix(int64(restarts), 0)}
}

func TestSteadyState(t *testing.T) {
	d := &DeckySpec{Name: "d", Base: ContainerSpec{Name: "d", Config: types.ServiceConfig{}}, Services: []ContainerSpec{{Name: "d-web", Service: "web"}}}
	tests := []struct {
		name   string
		web    []engine.State
		ok     bool
		errHas []string
	}{
		{"running with no health check", []engine.State{running(0, "")}, true, nil},
		{"healthy only after starting", []engine.State{running(0, "starting"), running(0, "starting"), running(0, "healthy")}, true, nil},
		{"never healthy", []engine.State{running(0, "unhealthy")}, false, []string{"d-web: running", "health unhealthy", "boom"}},
		{"crash loop that looks running at each sample", crashLoop(1000), false, []string{"d-web: running, restarted"}},
		{"exited", []engine.State{{Status: "exited", ExitCode: 3}}, false, []string{"d-web: exited, exit code 3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := &scriptedEngine{script: map[string][]engine.State{"d": {running(0, "")}, "d-web": tt.web}, logs: "boom"}
			// A converging decky gets a generous deadline (it returns as soon
			// as it is steady, so this costs nothing but keeps a loaded
			// machine from failing it); a failing one waits out a short one.
			timeout := 50 * time.Millisecond
			if tt.ok {
				timeout = 10 * time.Second
			}
			a := NewApplier(eng, "p", "/", engine.NetworkSpec{}, Options{Steady: SteadyOptions{Samples: 3, Interval: time.Millisecond, Timeout: timeout}}, slog.New(slog.DiscardHandler))
			err := a.waitSteady(context.Background(), d)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			for _, want := range tt.errHas {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%s", want, err)
				}
			}
			if err != nil && strings.Contains(err.Error(), "\nd: ") {
				t.Errorf("the steady base was listed as a culprit:\n%s", err)
			}
		})
	}
}

// crashLoop is a container seen running at every sample, but restarted
// in between each time.
func crashLoop(n int) []engine.State {
	out := make([]engine.State, n)
	for i := range out {
		out[i] = running(i+1, "")
	}
	return out
}
