package main

import (
	"io"
	"os"
	"strings"

	"github.com/decnet/pull-agent/internal/cliconf"
)

// flags is a FlagSet whose defaults come from the environment
// (PULL_AGENT_<NAME>) and, for the pass commands, the config file.
type flags = cliconf.Flags

func newFlags(name, usage string, out io.Writer) *flags { return cliconf.New(name, usage, out, nil) }

func envName(flagName string) string { return cliconf.EnvName(flagName) }

// defaultConfig is read when present and no --config or PULL_AGENT_CONFIG
// names another file.
const defaultConfig = "/etc/pull-agent/config.yaml"

// configFile finds and loads the config file named on the command line
// (--config F, --config=F), in PULL_AGENT_CONFIG, or the default one when
// it exists. "" (--config "") reads none.
func configFile(args []string) (*cliconf.File, error) {
	path, explicit := defaultConfig, false
	if v, ok := os.LookupEnv(envName("config")); ok {
		path, explicit = v, true
	}
	for i, a := range args {
		if a == "--" {
			break
		}
		if name, v, ok := strings.Cut(strings.TrimLeft(a, "-"), "="); ok && name == "config" && strings.HasPrefix(a, "-") {
			path, explicit = v, true
		} else if (a == "--config" || a == "-config") && i+1 < len(args) {
			path, explicit = args[i+1], true
		}
	}
	if path == "" {
		return nil, nil
	}
	if _, err := os.Stat(path); err != nil && !explicit {
		return nil, nil
	}
	return cliconf.Load(path)
}
