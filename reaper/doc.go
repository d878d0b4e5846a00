// Package reaper removes what the agent no longer wants: the containers of
// deckies that left the host's desired set, and on decommission everything
// the agent ever created on the worker.
//
// # Contract
//
// Selection is by label only: a container is a candidate when it carries
// engine.LabelOwner with this agent's identity, whatever its name or
// Compose project. A decky is removed services first, then its base (so no
// service is left holding a dead network namespace), each container
// stopped gracefully before removal. Removal of one decky failing does not
// stop the removal of others.
//
// # Boundaries
//
// reaper selects and removes; it does not decide what is desired (that is
// the caller's set) and must not import apply, report or desired.
package reaper
