// Package agent is one worker's reconcile: the pass, its policy, and the
// daemon loop around it.
//
// # The pass
//
// [Agent.Pass] runs an ordered list of steps over one pass value, each a
// func(ctx, *pass) error: fetch, parse, suspend, decommission, detect LAN,
// allocate, render, diff, identity, prune guard, ensure network, apply,
// record, helper. The first step that refuses stops the pass; the refusal
// is a [*StepError] naming the step, and nothing after it runs (in
// particular, nothing on the worker changes after a refusal before apply).
// A deferred step, as Flux's reconcilers do, always builds the heartbeat
// from whatever the pass reached, delivers it with the outbox, and saves
// the state.
//
// # Decommission
//
// A verified host file with decommission: true ends the agent (see
// decommission.go): owned containers, network and helper link removed,
// final teardown events and a decommissioned heartbeat delivered within
// Config.ReportTimeout (what is undelivered is logged line by line), the
// state directory's contents removed (the directory stays: it is a mount
// under systemd's StateDirectory=), and [ErrDecommissioned] returned by
// Pass and Run, which the command turns into exit 0. No deferred step runs
// after it: nothing may write to the emptied directory. An unverified
// commit is refused ([ErrUnverifiedDecommission]) unless
// Config.AllowUnverifiedDecommission.
//
// # Verified from the LAN
//
// The apply's LAN check (apply.Options.LANCheck) dials each declared TCP
// port from the worker through the host helper link, which is given a
// route to every running and changing decky before apply; a decky that
// failed its last check at its hash is verified again, not taken as
// unchanged (apply.DiffInput.Unverified). On every full pass (once, the
// daemon's resync) the identity step checks each decky running exactly as
// desired as the LAN sees it (apply.CheckIdentity): one ARP round from the
// helper link (an optional [ARPResolver] role of the [LAN]) and its
// declared ports. Each drift is a lifecycle event, operation [OpDrift],
// status failed, listing what differed. One the decky can be put right
// from (another MAC, no ARP answer, a port that stopped answering) is
// repaired in the same pass: the decky is recreated and a repair event
// follows. Another machine answering for the address is reported once
// while it lasts, never fought over. Without a helper link nothing is
// checked from the LAN (a warning says so once).
//
// # Roles
//
// The pass reaches the outside world only through three small interfaces
// defined here, where they are used: [Engine] (the container engine,
// engine.Docker), [LAN] (detection, duplicate-address probes and the host
// helper link, hostnet) and [Source] (the fleet repository, fleetsync). The
// report outbox is the real one (files in a directory). internal/fake holds
// one shared fake of each role, so `go test ./agent` needs neither Docker,
// nor root, nor a network.
//
// # Policy
//
// What a pass remembers and reports is a pure function, [Record]: state,
// results, change set, retry budget and time in, new state and lifecycle
// events out. Quarantine is derived there and only there.
//
// # Boundaries
//
// The agent takes a plain [Config]: no flags, no environment (package main
// maps those). Only cmd/pull-agent imports this package.
package agent
