package main

import (
	"context"
	"os"
	"testing"
)

// TestMain lets tests run the real program as a separate process (to kill
// it with SIGKILL): with PULL_AGENT_TEST_AS_MAIN=1 the test binary is
// pull-agent.
func TestMain(m *testing.M) {
	if os.Getenv("PULL_AGENT_TEST_AS_MAIN") == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}
