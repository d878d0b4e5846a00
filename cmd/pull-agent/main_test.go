package main

import (
	"os"
	"testing"
)

// TestMain lets tests run the real program as a separate process (to kill
// it with SIGKILL): with PULL_AGENT_TEST_AS_MAIN=1 the test binary is
// pull-agent.
func TestMain(m *testing.M) {
	if os.Getenv("PULL_AGENT_TEST_AS_MAIN") == "1" {
		os.Exit(mainWithSignals()) // signals handled as by main
	}
	os.Exit(m.Run())
}
