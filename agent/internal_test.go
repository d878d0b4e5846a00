package agent

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/engine"
)

// Every decoy-network address held by a container the agent owns, in any
// state, reaches allocation as held by its decky; foreign containers'
// addresses are reserved instead.
func TestHeldAndForeignAddresses(t *testing.T) {
	ip := netip.MustParseAddr
	own := func(name, decky, state string, addr string) engine.Container {
		c := engine.Container{Name: name, State: state, Labels: map[string]string{engine.LabelOwner: "w", engine.LabelDecky: decky}, Networks: map[string]netip.Addr{}}
		if addr != "" {
			c.Networks["lan"] = ip(addr)
		}
		return c
	}
	cs := []engine.Container{
		own("gone", "gone", "running", "198.51.100.10"),  // a decky on its way out
		own("stuck", "stuck", "exited", "198.51.100.11"), // failed, not running
		own("svc", "stuck", "running", ""),               // a service: no address of its own
		{Name: "theirs", Labels: map[string]string{engine.LabelOwner: "x"}, Networks: map[string]netip.Addr{"lan": ip("198.51.100.12")}},
		{Name: "other-net", Labels: map[string]string{engine.LabelOwner: "w", engine.LabelDecky: "o"}, Networks: map[string]netip.Addr{"elsewhere": ip("198.51.100.13")}},
	}
	held := heldAddresses(cs, "w", "lan")
	if len(held) != 2 || held[ip("198.51.100.10")] != "gone" || held[ip("198.51.100.11")] != "stuck" {
		t.Fatalf("held = %v", held)
	}
	foreign := foreignAddresses(cs, "w", "lan")
	if _, ok := foreign[ip("198.51.100.12")]; len(foreign) != 1 || !ok {
		t.Fatalf("foreign = %v", foreign)
	}
}

// The pass that decommissions is counted as such, not as a pass that
// could not start; every step that ran is timed.
func TestMetricsCountPassesAndSteps(t *testing.T) {
	m := NewMetrics("t")
	a := &Agent{now: time.Now}
	m.Observe(a, &Result{}, &StepError{Step: "decommission", Err: ErrDecommissioned}, time.Second)
	m.Observe(a, &Result{}, &StepError{Step: "fetch", Err: errors.New("unreachable")}, time.Second)
	m.Observe(a, &Result{Skipped: true, Steps: []StepTime{{"fetch", time.Millisecond}}}, nil, time.Millisecond)
	m.Observe(a, &Result{Steps: []StepTime{{"fetch", time.Millisecond}, {"parse", time.Millisecond}}}, nil, 2*time.Millisecond)
	rec := httptest.NewRecorder()
	MetricsHandler(m, http.NotFoundHandler()).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`pull_agent_passes_total{result="decommissioned"} 1`, `pull_agent_passes_total{result="not_started"} 1`,
		// Each step that ran is timed, skipped passes' fetch included.
		`pull_agent_step_duration_seconds_count{step="fetch"} 2`, `pull_agent_step_duration_seconds_count{step="parse"} 1`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestHelperNames: teardown looks for every name the configured helper
// link can have: DECNET's default has an ipvlan variant, a name the
// operator chose has none, and an empty name (disabled) means none.
func TestHelperNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		want []string
	}{
		{DefaultHelper, []string{"decnet_macvlan0", "decnet_ipvlan0"}},
		{"lan-helper0", []string{"lan-helper0"}},
		{"", nil},
	} {
		if got := helperNames(tc.name); !slices.Equal(got, tc.want) {
			t.Errorf("helperNames(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
