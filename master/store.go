package master

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite: no cgo, static binary

	"github.com/decnet/pull-agent/report"
)

// Store is the master's durable record.
type Store struct {
	db *sql.DB
}

const schema = `
CREATE TABLE IF NOT EXISTS hosts (
	host            TEXT PRIMARY KEY,
	host_uuid       TEXT NOT NULL DEFAULT '',
	agent_version   TEXT NOT NULL DEFAULT '',
	commit_sha      TEXT NOT NULL DEFAULT '',
	remote          TEXT NOT NULL DEFAULT '',
	last_heartbeat  TEXT NOT NULL,
	last_fetch_ok   TEXT NOT NULL DEFAULT '',
	last_apply      TEXT NOT NULL DEFAULT '',
	pass_error      TEXT NOT NULL DEFAULT '',
	outbox_depth    INTEGER NOT NULL DEFAULT 0,
	outbox_rejected INTEGER NOT NULL DEFAULT 0,
	identity        TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
	event_id     TEXT PRIMARY KEY,
	host         TEXT NOT NULL,
	seq          INTEGER NOT NULL,
	decky        TEXT NOT NULL,
	operation    TEXT NOT NULL,
	status       TEXT NOT NULL,
	error        TEXT NOT NULL DEFAULT '',
	commit_sha   TEXT NOT NULL DEFAULT '',
	config_hash  TEXT NOT NULL DEFAULT '',
	note         TEXT NOT NULL DEFAULT '',
	started_at   TEXT NOT NULL DEFAULT '',
	completed_at TEXT NOT NULL DEFAULT '',
	received_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_host_seq ON events(host, seq);
CREATE INDEX IF NOT EXISTS events_decky ON events(decky);
CREATE INDEX IF NOT EXISTS events_received ON events(received_at);
CREATE TABLE IF NOT EXISTS deckies (
	host        TEXT NOT NULL,
	decky       TEXT NOT NULL,
	ip          TEXT NOT NULL DEFAULT '',
	state       TEXT NOT NULL DEFAULT '',
	running     INTEGER NOT NULL DEFAULT 0,
	services    TEXT NOT NULL DEFAULT '',
	config_hash TEXT NOT NULL DEFAULT '',
	error       TEXT NOT NULL DEFAULT '',
	updated_at  TEXT NOT NULL,
	PRIMARY KEY (host, decky)
);
`

// OpenStore opens (creating) the database at path.
func OpenStore(ctx context.Context, path string) (*Store, error) {
	// WAL keeps readers off the writer's back; busy_timeout serialises
	// concurrent writers instead of failing them; synchronous=FULL makes a
	// 2xx answer mean "on disk".
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1) // one writer; SQLite serialises anyway
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("failed to create schema in %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// Record stores one report atomically. It returns how many lifecycle
// events were new (duplicates by event_id are ignored).
func (s *Store) Record(ctx context.Context, b *report.Body, identity string, now time.Time) (int, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit this is a no-op
	_, err = tx.ExecContext(ctx, `
INSERT INTO hosts(host, host_uuid, agent_version, commit_sha, remote, last_heartbeat, last_fetch_ok, last_apply, pass_error, outbox_depth, outbox_rejected, identity)
VALUES(?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(host) DO UPDATE SET host_uuid=excluded.host_uuid, agent_version=excluded.agent_version,
	commit_sha=excluded.commit_sha, remote=excluded.remote, last_heartbeat=excluded.last_heartbeat,
	last_fetch_ok=excluded.last_fetch_ok, last_apply=excluded.last_apply, pass_error=excluded.pass_error,
	outbox_depth=excluded.outbox_depth, outbox_rejected=excluded.outbox_rejected, identity=excluded.identity`,
		b.Host, b.HostUUID, b.AgentVersion, b.Commit, b.Remote, ts(now), ts(b.LastFetchOK), ts(b.LastApply), b.PassError, b.OutboxDepth, b.OutboxRejects, identity)
	if err != nil {
		return 0, err
	}
	added := 0
	for _, e := range b.Lifecycle {
		res, err := tx.ExecContext(ctx, `
INSERT INTO events(event_id, host, seq, decky, operation, status, error, commit_sha, config_hash, note, started_at, completed_at, received_at)
VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(event_id) DO NOTHING`,
			e.EventID, b.Host, e.Seq, e.DeckyName, e.Operation, e.Status, e.Error, e.Commit, e.ConfigHash, e.Note, ts(e.StartedAt), ts(e.CompletedAt), ts(now))
		if err != nil {
			return 0, err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			added++
		}
	}
	if b.Status.Runtime != nil || b.Status.Deployed {
		// The heartbeat is the host's whole truth: deckies it no longer
		// reports are gone (DECNET never pruned them, bug L6).
		if _, err := tx.ExecContext(ctx, `DELETE FROM deckies WHERE host = ?`, b.Host); err != nil {
			return 0, err
		}
		ips := map[string]string{}
		hashes := map[string]string{}
		for _, d := range b.Status.Deckies {
			ips[d.Name], hashes[d.Name] = d.IP, d.ConfigHash
		}
		for name, rt := range b.Status.Runtime {
			var svcs []string
			for svc, st := range rt.Services {
				svcs = append(svcs, svc+"="+st)
			}
			sortStrings(svcs)
			if _, err := tx.ExecContext(ctx, `
INSERT INTO deckies(host, decky, ip, state, running, services, config_hash, error, updated_at) VALUES(?,?,?,?,?,?,?,?,?)`,
				b.Host, name, ips[name], rt.State, boolInt(rt.Running), strings.Join(svcs, ","), hashes[name], rt.Error, ts(now)); err != nil {
				return 0, err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return added, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
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
	Events         int       `json:"events"`
	MaxSeq         int64     `json:"max_seq"`
	MissingSeqs    int64     `json:"missing_seqs"` // gaps in the host's sequence
}

// Hosts lists hosts with freshness; a host is stale when its last
// heartbeat is older than staleAfter.
func (s *Store) Hosts(ctx context.Context, now time.Time, staleAfter time.Duration) ([]HostRow, error) {
	rows, err := s.db.QueryContext(ctx, `
SELECT h.host, h.host_uuid, h.agent_version, h.commit_sha, h.remote, h.last_heartbeat, h.last_fetch_ok, h.last_apply,
	h.pass_error, h.outbox_depth, h.outbox_rejected, h.identity,
	COUNT(e.event_id), COALESCE(MAX(e.seq), 0)
FROM hosts h LEFT JOIN events e ON e.host = h.host
GROUP BY h.host ORDER BY h.host`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []HostRow
	for rows.Next() {
		var r HostRow
		var last string
		if err := rows.Scan(&r.Host, &r.HostUUID, &r.AgentVersion, &r.Commit, &r.Remote, &last, &r.LastFetchOK, &r.LastApply,
			&r.PassError, &r.OutboxDepth, &r.OutboxRejected, &r.Identity, &r.Events, &r.MaxSeq); err != nil {
			return nil, err
		}
		r.LastHeartbeat, _ = time.Parse(time.RFC3339Nano, last)
		r.AgeSeconds = now.Sub(r.LastHeartbeat).Seconds()
		r.Stale = now.Sub(r.LastHeartbeat) > staleAfter
		if r.Events > 0 {
			// Sequences start at 1; anything below the first seen event or
			// between seen events that never arrived is a gap.
			r.MissingSeqs = r.MaxSeq - int64(r.Events)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeckyRow is one decky's current state on one host.
type DeckyRow struct {
	Host       string `json:"host"`
	Decky      string `json:"decky"`
	IP         string `json:"ip"`
	State      string `json:"state"`
	Running    bool   `json:"running"`
	Services   string `json:"services"`
	ConfigHash string `json:"config_hash"`
	Error      string `json:"error,omitempty"`
	UpdatedAt  string `json:"updated_at"`
}

// Deckies lists deckies, optionally of one host.
func (s *Store) Deckies(ctx context.Context, host string) ([]DeckyRow, error) {
	q := `SELECT host, decky, ip, state, running, services, config_hash, error, updated_at FROM deckies`
	var args []any
	if host != "" {
		q += ` WHERE host = ?`
		args = append(args, host)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY host, decky`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []DeckyRow
	for rows.Next() {
		var r DeckyRow
		var running int
		if err := rows.Scan(&r.Host, &r.Decky, &r.IP, &r.State, &running, &r.Services, &r.ConfigHash, &r.Error, &r.UpdatedAt); err != nil {
			return nil, err
		}
		r.Running = running == 1
		out = append(out, r)
	}
	return out, rows.Err()
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
}

// EventFilter selects lifecycle history.
type EventFilter struct {
	Host, Decky, Status string
	Since               time.Time // received at or after
	Limit               int       // default 1000
}

// Events lists lifecycle history, oldest first by host and sequence.
func (s *Store) Events(ctx context.Context, f EventFilter) ([]EventRow, error) {
	var where []string
	var args []any
	add := func(cond string, v any) { where = append(where, cond); args = append(args, v) }
	if f.Host != "" {
		add("host = ?", f.Host)
	}
	if f.Decky != "" {
		add("decky = ?", f.Decky)
	}
	if f.Status != "" {
		add("status = ?", f.Status)
	}
	if !f.Since.IsZero() {
		add("received_at >= ?", ts(f.Since))
	}
	if f.Limit <= 0 || f.Limit > 10000 {
		f.Limit = 1000
	}
	q := `SELECT event_id, host, seq, decky, operation, status, error, commit_sha, config_hash, note, started_at, completed_at, received_at FROM events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += fmt.Sprintf(" ORDER BY host, seq LIMIT %d", f.Limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []EventRow
	for rows.Next() {
		var r EventRow
		if err := rows.Scan(&r.EventID, &r.Host, &r.Seq, &r.DeckyName, &r.Operation, &r.Status, &r.Error, &r.Commit, &r.ConfigHash, &r.Note, &r.StartedAt, &r.CompletedAt, &r.ReceivedAt); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
