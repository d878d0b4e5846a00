package master

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Page sizes: every list the API and the page serve is bounded.
const (
	DefaultPageSize = 500
	MaxPageSize     = 1000
)

// ErrBadCursor marks a pagination cursor this master did not issue.
var ErrBadCursor = errors.New("invalid cursor")

func pageSize(n int) int {
	if n <= 0 {
		return DefaultPageSize
	}
	return min(n, MaxPageSize)
}

// HostRow is a host as the API lists it.
type HostRow struct {
	Host           string    `json:"host"`
	HostUUID       string    `json:"host_uuid"`
	AgentVersion   string    `json:"agent_version"`
	Commit         string    `json:"commit"`
	Remote         string    `json:"remote"`
	LastHeartbeat  time.Time `json:"last_heartbeat"`
	AgeSeconds     float64   `json:"age_seconds"`
	Stale          bool      `json:"stale"`
	LastFetchOK    string    `json:"last_fetch_ok,omitempty"`
	LastApply      string    `json:"last_apply,omitempty"`
	PassError      string    `json:"pass_error,omitempty"`
	OutboxDepth    int       `json:"outbox_depth"`
	OutboxRejected int       `json:"outbox_rejected"`
	Identity       string    `json:"identity,omitempty"`
	Events         int       `json:"events"` // lifecycle events ever recorded (retention does not lower it)
	MaxSeq         int64     `json:"max_seq"`
	MissingSeqs    int64     `json:"missing_seqs"`       // gaps in the host's sequence
	SeqConflicts   int64     `json:"seq_conflicts"`      // seqs reused with another event_id
	Verified       string    `json:"verified,omitempty"` // who signed the applied commit, or "none"
	Suspended      bool      `json:"suspended"`          // the agent deliberately applies nothing
	// Decommissioned: the last heartbeat came from an agent that removed
	// everything it owned (decommission: true) and stopped. Such a host
	// is never stale nor behind: it is expected to be silent.
	Decommissioned bool `json:"decommissioned"`
}

// HostQuery pages through hosts by name.
type HostQuery struct {
	After string // hosts after this name
	Limit int    // default DefaultPageSize, at most MaxPageSize
}

// Hosts lists every host with freshness (a host is stale when its last
// heartbeat is older than staleAfter). It pages internally; use HostsPage
// for one bounded page.
func (s *Store) Hosts(ctx context.Context, now time.Time, staleAfter time.Duration) ([]HostRow, error) {
	var all []HostRow
	q := HostQuery{Limit: MaxPageSize}
	for {
		rows, next, err := s.HostsPage(ctx, now, staleAfter, q)
		if err != nil {
			return nil, err
		}
		all = append(all, rows...)
		if next == "" {
			return all, nil
		}
		q.After = next
	}
}

// HostsPage lists one page of hosts in name order; next is the After of
// the following page, empty on the last.
func (s *Store) HostsPage(ctx context.Context, now time.Time, staleAfter time.Duration, hq HostQuery) (rows []HostRow, next string, err error) {
	limit := pageSize(hq.Limit)
	rows, err = s.queryHosts(ctx, now, staleAfter, `WHERE host > ? ORDER BY host LIMIT ?`, hq.After, limit+1)
	if err != nil {
		return nil, "", err
	}
	if len(rows) > limit {
		rows = rows[:limit]
		next = rows[limit-1].Host
	}
	return rows, next, nil
}

// Host returns one host, or ok false when it never reported.
func (s *Store) Host(ctx context.Context, now time.Time, staleAfter time.Duration, host string) (HostRow, bool, error) {
	rows, err := s.queryHosts(ctx, now, staleAfter, `WHERE host = ?`, host)
	if err != nil || len(rows) == 0 {
		return HostRow{}, false, err
	}
	return rows[0], true, nil
}

func (s *Store) queryHosts(ctx context.Context, now time.Time, staleAfter time.Duration, where string, args ...any) ([]HostRow, error) {
	res, err := s.r.QueryContext(ctx, s.q(`
SELECT host, host_uuid, agent_version, commit_sha, remote, last_heartbeat_ns, last_fetch_ok_ns, last_apply_ns,
	pass_error, outbox_depth, outbox_rejected, identity, events_total, max_seq, seq_conflicts, verified, suspended, decommissioned
FROM hosts `+where), args...)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var rows []HostRow
	for res.Next() {
		var r HostRow
		var last, fetch, apply int64
		var suspended, decommissioned int
		if err := res.Scan(&r.Host, &r.HostUUID, &r.AgentVersion, &r.Commit, &r.Remote, &last, &fetch, &apply,
			&r.PassError, &r.OutboxDepth, &r.OutboxRejected, &r.Identity, &r.Events, &r.MaxSeq, &r.SeqConflicts, &r.Verified, &suspended, &decommissioned); err != nil {
			return nil, err
		}
		r.Suspended, r.Decommissioned = suspended == 1, decommissioned == 1
		r.LastHeartbeat = time.Unix(0, last).UTC()
		r.LastFetchOK, r.LastApply = fromNS(fetch), fromNS(apply)
		r.AgeSeconds = now.Sub(r.LastHeartbeat).Seconds()
		r.Stale = now.Sub(r.LastHeartbeat) > staleAfter && !r.Decommissioned
		// Sequences start at 1: every seq up to the highest that never
		// arrived is a gap.
		r.MissingSeqs = max(r.MaxSeq-int64(r.Events), 0)
		rows = append(rows, r)
	}
	return rows, res.Err()
}

// DeckyRow is one decky's current state on one host.
type DeckyRow struct {
	Host       string `json:"host"`
	Decky      string `json:"decky"`
	IP         string `json:"ip"`
	MAC        string `json:"mac,omitempty"`
	State      string `json:"state"`
	Running    bool   `json:"running"`
	Services   string `json:"services"`
	ConfigHash string `json:"config_hash"`
	Error      string `json:"error,omitempty"`
	UpdatedAt  string `json:"updated_at"`
}

// DeckyQuery selects and pages deckies in (host, decky) order.
type DeckyQuery struct {
	Host     string // only this host's
	Troubled bool   // only deckies not running (failed, degraded, quarantined, absent)
	After    string // a cursor from a previous page
	Limit    int    // default DefaultPageSize, at most MaxPageSize
}

// Deckies lists every decky, optionally of one host.
func (s *Store) Deckies(ctx context.Context, host string) ([]DeckyRow, error) {
	var all []DeckyRow
	q := DeckyQuery{Host: host, Limit: MaxPageSize}
	for {
		rows, next, err := s.DeckiesPage(ctx, q)
		if err != nil {
			return nil, err
		}
		all = append(all, rows...)
		if next == "" {
			return all, nil
		}
		q.After = next
	}
}

type deckyCursor struct {
	Host  string `json:"h"`
	Decky string `json:"d"`
}

// DeckiesPage lists one page of deckies; next is the After of the
// following page, empty on the last.
func (s *Store) DeckiesPage(ctx context.Context, dq DeckyQuery) (rows []DeckyRow, next string, err error) {
	limit := pageSize(dq.Limit)
	var c deckyCursor
	if err := decodeCursor(dq.After, &c); err != nil {
		return nil, "", err
	}
	where, args := []string{"(host > ? OR (host = ? AND decky > ?))"}, []any{c.Host, c.Host, c.Decky}
	if dq.Host != "" {
		where, args = append(where, "host = ?"), append(args, dq.Host)
	}
	if dq.Troubled {
		where = append(where, "state <> 'running'")
	}
	res, err := s.r.QueryContext(ctx, s.q(`SELECT host, decky, ip, mac, state, running, services, config_hash, error, updated_ns FROM deckies
WHERE `+strings.Join(where, " AND ")+` ORDER BY host, decky LIMIT ?`), append(args, limit+1)...)
	if err != nil {
		return nil, "", err
	}
	defer res.Close()
	for res.Next() {
		var r DeckyRow
		var running int
		var updated int64
		if err := res.Scan(&r.Host, &r.Decky, &r.IP, &r.MAC, &r.State, &running, &r.Services, &r.ConfigHash, &r.Error, &updated); err != nil {
			return nil, "", err
		}
		r.Running, r.UpdatedAt = running == 1, fromNS(updated)
		rows = append(rows, r)
	}
	if err := res.Err(); err != nil {
		return nil, "", err
	}
	if len(rows) > limit {
		rows = rows[:limit]
		next = encodeCursor(deckyCursor{rows[limit-1].Host, rows[limit-1].Decky})
	}
	return rows, next, nil
}

// EventRow is a recorded lifecycle event.
type EventRow struct {
	EventID     string `json:"event_id"`
	Host        string `json:"host"`
	Seq         int64  `json:"seq"`
	DeckyName   string `json:"decky_name"`
	Operation   string `json:"operation"`
	Status      string `json:"status"`
	Error       string `json:"error,omitempty"`
	Commit      string `json:"commit,omitempty"`
	ConfigHash  string `json:"config_hash,omitempty"`
	Note        string `json:"note,omitempty"`
	StartedAt   string `json:"started_at,omitempty"`
	CompletedAt string `json:"completed_at,omitempty"`
	ReceivedAt  string `json:"received_at"`

	id, completedNS int64 // cursor keys
}

// EventOrder is the order of a lifecycle listing.
type EventOrder int

const (
	// BySeq lists oldest first by host, then seq: one host's history.
	BySeq EventOrder = iota
	// NewestFirst lists by completion time across hosts, newest first:
	// "what failed lately", wherever.
	NewestFirst
)

// EventFilter selects lifecycle history.
type EventFilter struct {
	Host, Decky, Status string
	Operation           string     // deploy, mutate, teardown, repair
	Since               time.Time  // received at or after
	Order               EventOrder // default BySeq
	After               string     // a cursor from a previous page (same filter and order)
	Limit               int        // default DefaultPageSize, at most MaxPageSize
}

type eventCursor struct {
	Host string `json:"h,omitempty"`
	Seq  int64  `json:"s,omitempty"`
	T    int64  `json:"t,omitempty"`
	ID   int64  `json:"i,omitempty"`
}

// Events lists one page of lifecycle history (see EventsPage).
func (s *Store) Events(ctx context.Context, f EventFilter) ([]EventRow, error) {
	rows, _, err := s.EventsPage(ctx, f)
	return rows, err
}

// EventsPage lists one page of lifecycle history; next is the After of the
// following page, empty on the last. Every order is served by an index, so
// a page costs the same whatever its depth.
func (s *Store) EventsPage(ctx context.Context, f EventFilter) (rows []EventRow, next string, err error) {
	limit := pageSize(f.Limit)
	var c eventCursor
	if err := decodeCursor(f.After, &c); err != nil {
		return nil, "", err
	}
	var where []string
	var args []any
	add := func(cond string, v ...any) { where = append(where, cond); args = append(args, v...) }
	if f.Host != "" {
		add("host = ?", f.Host)
	}
	if f.Decky != "" {
		add("decky = ?", f.Decky)
	}
	if f.Status != "" {
		add("status = ?", f.Status)
	}
	if f.Operation != "" {
		add("operation = ?", f.Operation)
	}
	if !f.Since.IsZero() {
		add("received_ns >= ?", ns(f.Since))
	}
	order := " ORDER BY host, seq"
	if f.Order == NewestFirst {
		order = " ORDER BY completed_ns DESC, id DESC"
		if f.After != "" {
			add("(completed_ns < ? OR (completed_ns = ? AND id < ?))", c.T, c.T, c.ID)
		}
	} else if f.After != "" {
		add("(host > ? OR (host = ? AND seq > ?))", c.Host, c.Host, c.Seq)
	}
	q := `SELECT id, event_id, host, seq, decky, operation, status, error, commit_sha, config_hash, note, started_ns, completed_ns, received_ns FROM events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	res, err := s.r.QueryContext(ctx, s.q(q+order+" LIMIT ?"), append(args, limit+1)...)
	if err != nil {
		return nil, "", err
	}
	defer res.Close()
	for res.Next() {
		var r EventRow
		var started, received int64
		if err := res.Scan(&r.id, &r.EventID, &r.Host, &r.Seq, &r.DeckyName, &r.Operation, &r.Status, &r.Error, &r.Commit, &r.ConfigHash, &r.Note,
			&started, &r.completedNS, &received); err != nil {
			return nil, "", err
		}
		r.StartedAt, r.CompletedAt, r.ReceivedAt = fromNS(started), fromNS(r.completedNS), fromNS(received)
		rows = append(rows, r)
	}
	if err := res.Err(); err != nil {
		return nil, "", err
	}
	if len(rows) > limit {
		rows = rows[:limit]
		last := rows[limit-1]
		if f.Order == NewestFirst {
			next = encodeCursor(eventCursor{T: last.completedNS, ID: last.id})
		} else {
			next = encodeCursor(eventCursor{Host: last.Host, Seq: last.Seq})
		}
	}
	return rows, next, nil
}

// SeqConflict is an event that reused a seq its host had already used for
// another event_id. It is kept aside, never in the history.
type SeqConflict struct {
	Host            string          `json:"host"`
	Seq             int64           `json:"seq"`
	EventID         string          `json:"event_id"`
	ExistingEventID string          `json:"existing_event_id"`
	Event           json.RawMessage `json:"event"`
	ReceivedAt      string          `json:"received_at"`
}

// Conflicts lists seq conflicts, newest first, at most limit (bounded).
func (s *Store) Conflicts(ctx context.Context, host string, limit int) ([]SeqConflict, error) {
	q := `SELECT host, seq, event_id, existing_event_id, event, received_ns FROM seq_conflicts`
	var args []any
	if host != "" {
		q += ` WHERE host = ?`
		args = append(args, host)
	}
	res, err := s.r.QueryContext(ctx, s.q(q+` ORDER BY received_ns DESC, id DESC LIMIT ?`), append(args, pageSize(limit))...)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	var out []SeqConflict
	for res.Next() {
		var c SeqConflict
		var ev string
		var received int64
		if err := res.Scan(&c.Host, &c.Seq, &c.EventID, &c.ExistingEventID, &ev, &received); err != nil {
			return nil, err
		}
		c.Event, c.ReceivedAt = json.RawMessage(ev), fromNS(received)
		if !json.Valid(c.Event) {
			c.Event = nil
		}
		out = append(out, c)
	}
	return out, res.Err()
}

// Cursors are opaque to clients: base64url of a small JSON object.
func encodeCursor(v any) string {
	data, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(data)
}

func decodeCursor(s string, v any) error {
	if s == "" {
		return nil
	}
	data, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(data) > 512 || json.Unmarshal(data, v) != nil {
		return fmt.Errorf("%w %q: use the value of a previous answer's next link", ErrBadCursor, s)
	}
	return nil
}
