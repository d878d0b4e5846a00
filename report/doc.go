// Package report delivers the agent's lifecycle events and heartbeats to
// the master, and never loses one on the way, nor sets one aside that could
// still be delivered.
//
// # Contract
//
// Every lifecycle event is written to a durable on-disk [Outbox] (atomic
// file per event, fsynced) before any attempt to send it, its text fields
// capped ([Event.Capped]: [MaxErrorBytes] and friends) so that one event can
// never exceed the master's body limit. Each event has a unique ID (the
// master's idempotency key) and a per-host sequence number that only grows.
// [Sender.Flush] drains the outbox in sequence order, together with the
// latest heartbeat, and deletes events only after the master answered 2xx.
//
// What an answer other than 2xx does:
//
//   - 422 (or 400) whose JSON body is a [Refusal] naming events of the
//     posted body by event_id and seq: exactly those events are set aside in
//     rejected/ (kept, with a reason file, counted); the rest go again at
//     once. This is the only way an event leaves the queue undelivered.
//   - 413: the batch is halved until it fits. A single event refused even
//     alone stays queued and is reported ([ErrEventTooLarge]).
//   - anything else (network errors, 3xx, 401, 403, 404, 407, other 4xx,
//     5xx): every event stays queued, in order, and the body is retried with
//     capped exponential backoff and full jitter (Retry-After honoured);
//     after RetryMax retries, or when the next wait would pass the flush's
//     deadline, the next Flush starts over with the oldest event.
//
// # Retries: go-retryablehttp with our policy
//
// The sender's HTTP retry engine is github.com/hashicorp/go-retryablehttp,
// a dependency the design card fixes: it is well kept and made for the
// job, and it owns the mechanics (rewinding the []byte body so every
// attempt sends the same bytes and event IDs, the retry loop, the wait,
// which ends at once when the flush is cancelled). The policy is this
// package's, carried by the client's hooks:
//
//   - CheckRetry classifies each attempt (delivered, per-event verdict,
//     413, retryable, or stop for a cancelled flush or a master whose
//     certificate the agent refuses), records it in the delivery status,
//     and chooses the wait ([Backoff]: capped exponential with full jitter,
//     Retry-After on 429/503 honoured exactly); it stops when RetryMax
//     retries are spent or the wait would end past the flush's deadline.
//   - Backoff returns the wait CheckRetry chose, which the engine sleeps.
//   - PrepareRetry reads the token file again before each retry, so a
//     rotated token is used at once and a lost one stops with [ErrAuth].
//   - The inner http.Client never follows a redirect, and the engine's
//     default logger and error summary are off (slog; the answer's status
//     is kept).
//
// [Sender.Status] (safe for concurrent use) says how delivery goes: last
// error and HTTP status, consecutive failures, whether the credentials are
// refused ([ErrAuth]), last success. It is also stored in the outbox for
// the status command ([Outbox.Delivery]) and sent in the heartbeat.
//
// The wire shape keeps DECNET's heartbeat field names (host_uuid,
// agent_version, status{deployed, deckies, runtime}, lifecycle[{decky_name,
// operation, status, error, completed_at}]) with this agent's extra fields
// beside them; docs/report-protocol.md describes it and the verdict.
//
// # Boundaries
//
// report does not import apply, desired or Docker packages: callers hand it
// plain [Event] and [Heartbeat] values. Its only I/O is the outbox
// directory and HTTP(S) to the master.
package report
