package agent_test

import (
	"os"
	"testing"

	"github.com/decnet/pull-agent/agent"
)

// status reads; it never creates. A state directory emptied by a
// decommission (or never used) stays empty after `pull-agent status`.
func TestReadStatusCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	v, err := agent.ReadStatus(dir, "w")
	if err != nil {
		t.Fatalf("status of an empty state directory: %v", err)
	}
	if v.OutboxDepth != 0 || v.Commit != "" {
		t.Errorf("status of nothing: %+v", v)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("status wrote into the state directory: %v", ents)
	}
}
