// Package master is the reference master: it records every report agents
// send, durably, and lets operators read them back.
//
// # Contract
//
// POST /swarm/heartbeat takes DECNET's heartbeat body (see
// docs/report-protocol.md). A body is recorded in one transaction or not at
// all: a body too large is a 413, a body malformed as a whole a 400, and a
// body with malformed events a 422 verdict naming them ([RejectedEvent]);
// none leaves a trace. Lifecycle events are deduplicated by event_id, so
// an agent may resend freely; per-host sequence numbers let the master
// notice gaps, and a seq reused with another event_id is kept aside
// ([SeqConflict]).
//
// Authentication is on by default ([Options]): a report needs a verified
// client certificate naming its host, or that host's bearer token; a read
// needs an operator token, a client certificate, or (when allowed) a
// loopback connection. Tokens are stored as SHA-256 hashes ([Store.AddToken]).
//
// Reads: GET /api/v1/hosts, /api/v1/deckies, /api/v1/lifecycle,
// /api/v1/conflicts, the fleet console's views (/api/v1/summary,
// /api/v1/rollouts, /api/v1/rollouts/{commit}/behind, /api/v1/hosts/{host},
// /api/v1/deckies/{host}/{decky}/events) and their server-rendered pages
// at /. Every list is bounded and paginated by cursor.
//
// Rollouts: the master has no git, so a commit is "newer" when the fleet
// first reported it applied later. A fresh worker on another commit is
// behind a commit only if its own commit is older (or it has none) and it
// never applied that commit; otherwise it has moved on ([Rollout]). A
// decky is drifted when its latest event is a failed drift
// ([Store.Drifted]).
//
// # Boundaries
//
// The store ([Store]) is SQLite through a pure-Go driver
// (modernc.org/sqlite), so the binary stays static, or PostgreSQL through
// github.com/jackc/pgx/v5, which several masters may share. Writes go
// through group-commit writer goroutines; reads through their own pool.
// [Command] is `pull-agent master` (serve, and token add|list|revoke); the
// cmd package only delegates to it. The package imports report for the
// wire types only; it knows nothing of Docker, git or the fleet format.
package master
