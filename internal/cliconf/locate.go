package cliconf

import (
	"os"
	"strings"
)

// Locate finds and loads the config file named on the command line
// (--config F, --config=F), else in PULL_AGENT_CONFIG, else def when it
// exists. It runs before the flags are parsed, since the file supplies
// their defaults. An empty name (--config "") reads none: nil, nil. A
// file named explicitly must exist.
func Locate(args []string, def string) (*File, error) {
	path, explicit := def, false
	if v, ok := os.LookupEnv(EnvName("config")); ok {
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
	return Load(path)
}
