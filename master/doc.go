// Package master is the reference master: it records every report agents
// send, durably, and lets operators read them back.
//
// # Contract
//
// POST /swarm/heartbeat takes DECNET's heartbeat body (see
// docs/report-protocol.md). A body is recorded in one SQLite transaction or
// not at all: malformed or oversized bodies get a 4xx and leave no trace.
// Lifecycle events are deduplicated by event_id, so an agent may resend
// freely; per-host sequence numbers let the master notice gaps.
//
// Reads: GET /api/v1/hosts, /api/v1/deckies, /api/v1/lifecycle (filters
// host, decky, status, since, limit), and a server-rendered status page at /.
//
// # Boundaries
//
// The store is SQLite through a pure-Go driver (modernc.org/sqlite), so the
// binary stays static. The package imports report for the wire types only;
// it knows nothing of Docker, git or the fleet format.
package master
