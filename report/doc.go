// Package report delivers the agent's lifecycle events and heartbeats to
// the master, and never loses one on the way.
//
// # Contract
//
// Every lifecycle event is written to a durable on-disk [Outbox] (atomic
// file per event, fsynced) before any attempt to send it. Each event has a
// unique ID (the master's idempotency key) and a per-host sequence number
// that only grows. [Sender.Flush] drains the outbox in sequence order,
// together with the latest heartbeat, and deletes events only after the
// master answered 2xx. Network errors, 5xx, 408 and 429 are retried with
// exponential backoff and jitter (Retry-After honoured); other 4xx answers
// set the batch aside as rejected (kept on disk, counted, never resent
// blindly) so one bad event cannot block the queue forever.
//
// The wire shape keeps DECNET's heartbeat field names (host_uuid,
// agent_version, status{deployed, deckies, runtime}, lifecycle[{decky_name,
// operation, status, error, completed_at}]) with this agent's extra fields
// beside them; docs/report-protocol.md describes it.
//
// # Boundaries
//
// report does not import apply, desired or Docker packages: callers hand it
// plain [Event] and [Heartbeat] values.
package report
