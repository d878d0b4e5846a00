// Package fleettest builds real fleet repositories for tests: the example
// fleet from examples/fleet-repo with the decoy binary compiled into every
// build context, committed to a git repository with a bare origin.
//
// It also holds what the scale benchmarks share: their size (ScaleN, from
// SCALE_N), the LAN that size needs (ScaleLAN) and their deckies
// (Deckies), so that every benchmark measures the same world.
package fleettest
