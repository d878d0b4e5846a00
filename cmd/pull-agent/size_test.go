package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The command only parses flags, environment and configuration into
// agent.Config and wires; the pass lives in package agent. This keeps it
// so (issue 13: under 800 lines of non-test code).
func TestCommandStaysThin(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines += bytes.Count(data, []byte("\n"))
	}
	if lines >= 800 {
		t.Fatalf("cmd/pull-agent has %d lines of non-test code; move logic into package agent (limit 800)", lines)
	}
}
