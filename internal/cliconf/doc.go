// Package cliconf layers a command's configuration: a flag on the command
// line wins over its environment variable (PULL_AGENT_<NAME>), which wins
// over the key of the same name in an optional YAML config file, which
// wins over the built-in default. Every flag names its variable in -h.
//
// The file maps keys one-to-one to flag names (`state-dir: /srv/agent`,
// `repo: [https://a, /mnt/b]`). A key no flag knows, or a value of the
// wrong type, is an error naming the file, line and key.
//
// Both commands of the binary use it: the agent's (New with the file, Env
// for commands without one) and the master's (Env), so every flag of
// pull-agent has the same environment variable rule and help text, and
// the shared --log-level/--log-format (LogOptions).
//
// # Boundaries
//
// It reads the config file and the environment; it knows nothing of the
// agent. Errors are *UsageError.
package cliconf
