package main

import (
	"io"

	"github.com/decnet/pull-agent/internal/cliconf"
)

// flags is a FlagSet whose defaults come from the environment
// (PULL_AGENT_<NAME>) and, for the pass commands, the config file.
type flags = cliconf.Flags

// newFlags is the flag set of a command that reads no config file.
func newFlags(name, usage string, out io.Writer) *flags { return cliconf.Env(name, usage, out) }

// defaultConfig is read when present and no --config or PULL_AGENT_CONFIG
// names another file (cliconf.Locate).
const defaultConfig = "/etc/pull-agent/config.yaml"
