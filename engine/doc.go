// Package engine is the agent's only door to the Docker Engine: a thin
// adapter over the Docker client and the Compose library (in-process,
// github.com/docker/compose/v2/pkg/compose), plus the labels that mark what
// the agent owns.
//
// # Contract
//
// Every method takes a context and applies its own deadline on top of it
// (Options), so no Docker or Compose call can hang a pass. Mutating
// methods act only on containers and networks carrying [LabelOwner] with
// this agent's identity; anything else is refused with [ErrNotOwned].
//
// # Boundaries
//
// engine knows Docker, not the fleet format: it does not import desired,
// relocalize, apply or report. Packages apply and reaper declare the
// (small) interfaces they need and this package's *Docker satisfies them.
package engine
