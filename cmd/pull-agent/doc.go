// Command pull-agent is a pull-based GitOps agent for DECNET honeypot
// workers: it pulls a fleet git repository, takes this worker's deckies
// from it, relocalizes them onto the local LAN, converges the containers
// through Compose and reports per-decky results to a master. It also
// holds the reference master (`pull-agent master`).
//
// # Boundaries
//
// This package is the only one that wires the others together: flags and
// environment, one pass (sync → desired → relocalize → apply → reaper →
// report), the daemon loop with its Docker event watcher, metrics, and the
// exit codes. Logic belongs in the packages it calls; `run` is the whole
// program and is tested in-process.
//
// Run `pull-agent help` for the subcommands.
package main
