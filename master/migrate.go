package master

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// A migration moves the schema from version-1 to version. Each dialect has
// its own text; an empty text means the step changes nothing there.
// Migrations only ever get appended: a released step is never edited.
type migration struct {
	version  int
	what     string
	sqlite   string
	postgres string
}

// SchemaVersion is the schema version this build writes.
var SchemaVersion = migrations[len(migrations)-1].version

var migrations = []migration{
	{
		version: 1,
		what:    "the first schema (before versioning): hosts, events keyed by event_id, deckies",
		// Exactly the schema masters created before migrations were
		// versioned, so that their databases are adopted as version 1.
		sqlite: `
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
);`,
		// PostgreSQL support starts at version 2's layout.
		postgres: ``,
	},
	{
		version: 2,
		what: "times as Unix nanoseconds (sortable, indexable); one event per (host, seq) with reused seqs kept in seq_conflicts; " +
			"per-host counters so listing hosts does not scan events; indexes for time-ordered pages and retention; hashed tokens",
		sqlite: `
CREATE TABLE events_v2 (
	id           INTEGER PRIMARY KEY,
	event_id     TEXT NOT NULL UNIQUE,
	host         TEXT NOT NULL,
	seq          INTEGER NOT NULL,
	decky        TEXT NOT NULL,
	operation    TEXT NOT NULL,
	status       TEXT NOT NULL,
	error        TEXT NOT NULL DEFAULT '',
	commit_sha   TEXT NOT NULL DEFAULT '',
	config_hash  TEXT NOT NULL DEFAULT '',
	note         TEXT NOT NULL DEFAULT '',
	started_ns   INTEGER NOT NULL DEFAULT 0,
	completed_ns INTEGER NOT NULL DEFAULT 0,
	received_ns  INTEGER NOT NULL,
	UNIQUE (host, seq)
);
CREATE TABLE seq_conflicts (
	id                INTEGER PRIMARY KEY,
	host              TEXT NOT NULL,
	seq               INTEGER NOT NULL,
	event_id          TEXT NOT NULL UNIQUE,
	existing_event_id TEXT NOT NULL DEFAULT '',
	event             TEXT NOT NULL DEFAULT '',
	received_ns       INTEGER NOT NULL
);
INSERT OR IGNORE INTO events_v2(event_id, host, seq, decky, operation, status, error, commit_sha, config_hash, note, started_ns, completed_ns, received_ns)
	SELECT event_id, host, seq, decky, operation, status, error, commit_sha, config_hash, note,
		COALESCE(CAST(unixepoch(NULLIF(started_at, ''), 'subsec') * 1e9 AS INTEGER), 0),
		COALESCE(CAST(unixepoch(NULLIF(completed_at, ''), 'subsec') * 1e9 AS INTEGER), 0),
		COALESCE(CAST(unixepoch(received_at, 'subsec') * 1e9 AS INTEGER), 0)
	FROM events ORDER BY received_at, host, seq;
INSERT INTO seq_conflicts(host, seq, event_id, existing_event_id, event, received_ns)
	SELECT e.host, e.seq, e.event_id, COALESCE((SELECT n.event_id FROM events_v2 n WHERE n.host = e.host AND n.seq = e.seq), ''),
		json_object('event_id', e.event_id, 'seq', e.seq, 'decky_name', e.decky, 'operation', e.operation, 'status', e.status, 'error', e.error),
		COALESCE(CAST(unixepoch(e.received_at, 'subsec') * 1e9 AS INTEGER), 0)
	FROM events e WHERE NOT EXISTS (SELECT 1 FROM events_v2 n WHERE n.event_id = e.event_id);
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
CREATE INDEX events_status_time ON events(status, completed_ns);
CREATE INDEX events_time ON events(completed_ns);
CREATE INDEX events_decky ON events(decky, completed_ns);
CREATE INDEX events_received ON events(received_ns);
CREATE INDEX seq_conflicts_host ON seq_conflicts(host, seq);
CREATE INDEX seq_conflicts_received ON seq_conflicts(received_ns);

CREATE TABLE hosts_v2 (
	host              TEXT PRIMARY KEY,
	host_uuid         TEXT NOT NULL DEFAULT '',
	agent_version     TEXT NOT NULL DEFAULT '',
	commit_sha        TEXT NOT NULL DEFAULT '',
	remote            TEXT NOT NULL DEFAULT '',
	last_heartbeat_ns INTEGER NOT NULL,
	last_fetch_ok_ns  INTEGER NOT NULL DEFAULT 0,
	last_apply_ns     INTEGER NOT NULL DEFAULT 0,
	pass_error        TEXT NOT NULL DEFAULT '',
	outbox_depth      INTEGER NOT NULL DEFAULT 0,
	outbox_rejected   INTEGER NOT NULL DEFAULT 0,
	identity          TEXT NOT NULL DEFAULT '',
	events_total      INTEGER NOT NULL DEFAULT 0,
	max_seq           INTEGER NOT NULL DEFAULT 0,
	seq_conflicts     INTEGER NOT NULL DEFAULT 0,
	deckies_hash      TEXT NOT NULL DEFAULT ''
);
INSERT INTO hosts_v2(host, host_uuid, agent_version, commit_sha, remote, last_heartbeat_ns, last_fetch_ok_ns, last_apply_ns,
		pass_error, outbox_depth, outbox_rejected, identity, events_total, max_seq, seq_conflicts)
	SELECT h.host, h.host_uuid, h.agent_version, h.commit_sha, h.remote,
		COALESCE(CAST(unixepoch(h.last_heartbeat, 'subsec') * 1e9 AS INTEGER), 0),
		COALESCE(CAST(unixepoch(NULLIF(h.last_fetch_ok, ''), 'subsec') * 1e9 AS INTEGER), 0),
		COALESCE(CAST(unixepoch(NULLIF(h.last_apply, ''), 'subsec') * 1e9 AS INTEGER), 0),
		h.pass_error, h.outbox_depth, h.outbox_rejected, h.identity,
		(SELECT COUNT(*) FROM events e WHERE e.host = h.host),
		COALESCE((SELECT MAX(seq) FROM events e WHERE e.host = h.host), 0),
		(SELECT COUNT(*) FROM seq_conflicts c WHERE c.host = h.host)
	FROM hosts h;
DROP TABLE hosts;
ALTER TABLE hosts_v2 RENAME TO hosts;

CREATE TABLE deckies_v2 (
	host        TEXT NOT NULL,
	decky       TEXT NOT NULL,
	ip          TEXT NOT NULL DEFAULT '',
	state       TEXT NOT NULL DEFAULT '',
	running     INTEGER NOT NULL DEFAULT 0,
	services    TEXT NOT NULL DEFAULT '',
	config_hash TEXT NOT NULL DEFAULT '',
	error       TEXT NOT NULL DEFAULT '',
	updated_ns  INTEGER NOT NULL,
	PRIMARY KEY (host, decky)
);
INSERT INTO deckies_v2 SELECT host, decky, ip, state, running, services, config_hash, error,
	COALESCE(CAST(unixepoch(updated_at, 'subsec') * 1e9 AS INTEGER), 0) FROM deckies;
DROP TABLE deckies;
ALTER TABLE deckies_v2 RENAME TO deckies;

CREATE TABLE tokens (
	id         TEXT PRIMARY KEY,
	kind       TEXT NOT NULL,
	name       TEXT NOT NULL,
	hash       TEXT NOT NULL,
	created_ns INTEGER NOT NULL,
	revoked_ns INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tokens_name ON tokens(kind, name);`,
		postgres: `
CREATE TABLE events (
	id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	event_id     TEXT NOT NULL UNIQUE,
	host         TEXT NOT NULL,
	seq          BIGINT NOT NULL,
	decky        TEXT NOT NULL,
	operation    TEXT NOT NULL,
	status       TEXT NOT NULL,
	error        TEXT NOT NULL DEFAULT '',
	commit_sha   TEXT NOT NULL DEFAULT '',
	config_hash  TEXT NOT NULL DEFAULT '',
	note         TEXT NOT NULL DEFAULT '',
	started_ns   BIGINT NOT NULL DEFAULT 0,
	completed_ns BIGINT NOT NULL DEFAULT 0,
	received_ns  BIGINT NOT NULL,
	UNIQUE (host, seq)
);
CREATE INDEX events_status_time ON events(status, completed_ns, id);
CREATE INDEX events_time ON events(completed_ns, id);
CREATE INDEX events_decky ON events(decky, completed_ns, id);
CREATE INDEX events_received ON events(received_ns);
CREATE TABLE seq_conflicts (
	id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	host              TEXT NOT NULL,
	seq               BIGINT NOT NULL,
	event_id          TEXT NOT NULL UNIQUE,
	existing_event_id TEXT NOT NULL DEFAULT '',
	event             TEXT NOT NULL DEFAULT '',
	received_ns       BIGINT NOT NULL
);
CREATE INDEX seq_conflicts_host ON seq_conflicts(host, seq);
CREATE INDEX seq_conflicts_received ON seq_conflicts(received_ns);
CREATE TABLE hosts (
	host              TEXT PRIMARY KEY,
	host_uuid         TEXT NOT NULL DEFAULT '',
	agent_version     TEXT NOT NULL DEFAULT '',
	commit_sha        TEXT NOT NULL DEFAULT '',
	remote            TEXT NOT NULL DEFAULT '',
	last_heartbeat_ns BIGINT NOT NULL,
	last_fetch_ok_ns  BIGINT NOT NULL DEFAULT 0,
	last_apply_ns     BIGINT NOT NULL DEFAULT 0,
	pass_error        TEXT NOT NULL DEFAULT '',
	outbox_depth      BIGINT NOT NULL DEFAULT 0,
	outbox_rejected   BIGINT NOT NULL DEFAULT 0,
	identity          TEXT NOT NULL DEFAULT '',
	events_total      BIGINT NOT NULL DEFAULT 0,
	max_seq           BIGINT NOT NULL DEFAULT 0,
	seq_conflicts     BIGINT NOT NULL DEFAULT 0,
	deckies_hash      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE deckies (
	host        TEXT NOT NULL,
	decky       TEXT NOT NULL,
	ip          TEXT NOT NULL DEFAULT '',
	state       TEXT NOT NULL DEFAULT '',
	running     INTEGER NOT NULL DEFAULT 0,
	services    TEXT NOT NULL DEFAULT '',
	config_hash TEXT NOT NULL DEFAULT '',
	error       TEXT NOT NULL DEFAULT '',
	updated_ns  BIGINT NOT NULL,
	PRIMARY KEY (host, decky)
);
CREATE TABLE tokens (
	id         TEXT PRIMARY KEY,
	kind       TEXT NOT NULL,
	name       TEXT NOT NULL,
	hash       TEXT NOT NULL,
	created_ns BIGINT NOT NULL,
	revoked_ns BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tokens_name ON tokens(kind, name);`,
	},
	{
		version: 3,
		what:    "host_commits: when each host first reported each commit applied (rollout progress); deckies.mac",
		sqlite: `
CREATE TABLE host_commits (
	host       TEXT NOT NULL,
	commit_sha TEXT NOT NULL,
	first_ns   INTEGER NOT NULL,
	PRIMARY KEY (host, commit_sha)
);
CREATE INDEX host_commits_commit ON host_commits(commit_sha, first_ns);
CREATE INDEX host_commits_first ON host_commits(first_ns);
INSERT INTO host_commits(host, commit_sha, first_ns) SELECT host, commit_sha, last_heartbeat_ns FROM hosts WHERE commit_sha <> '';
CREATE INDEX hosts_commit ON hosts(commit_sha);
CREATE INDEX deckies_state ON deckies(state, host);
ALTER TABLE deckies ADD COLUMN mac TEXT NOT NULL DEFAULT ''`,
		postgres: `
CREATE TABLE host_commits (
	host       TEXT NOT NULL,
	commit_sha TEXT NOT NULL,
	first_ns   BIGINT NOT NULL,
	PRIMARY KEY (host, commit_sha)
);
CREATE INDEX host_commits_commit ON host_commits(commit_sha, first_ns);
CREATE INDEX host_commits_first ON host_commits(first_ns);
INSERT INTO host_commits(host, commit_sha, first_ns) SELECT host, commit_sha, last_heartbeat_ns FROM hosts WHERE commit_sha <> '';
CREATE INDEX hosts_commit ON hosts(commit_sha);
CREATE INDEX deckies_state ON deckies(state, host);
ALTER TABLE deckies ADD COLUMN mac TEXT NOT NULL DEFAULT ''`,
	},
	{
		version:  4,
		what:     "hosts.verified (who signed the applied commit) and hosts.suspended",
		sqlite:   "ALTER TABLE hosts ADD COLUMN verified TEXT NOT NULL DEFAULT '';\nALTER TABLE hosts ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0",
		postgres: "ALTER TABLE hosts ADD COLUMN verified TEXT NOT NULL DEFAULT '';\nALTER TABLE hosts ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0",
	},
	{
		version:  5,
		what:     "events_host_decky: a decky's latest event (the drifted deckies of the summary)",
		sqlite:   "CREATE INDEX events_host_decky ON events(host, decky, seq)",
		postgres: "CREATE INDEX events_host_decky ON events(host, decky, seq)",
	},
	{
		version:  6,
		what:     "hosts.decommissioned (the worker removed everything it owned and stopped)",
		sqlite:   "ALTER TABLE hosts ADD COLUMN decommissioned INTEGER NOT NULL DEFAULT 0",
		postgres: "ALTER TABLE hosts ADD COLUMN decommissioned INTEGER NOT NULL DEFAULT 0",
	},
}

// migrate brings the schema to SchemaVersion, one transaction per step.
// On PostgreSQL an advisory lock makes masters that start together take
// turns; a step another master applied meanwhile is seen and skipped.
func (s *Store) migrate(ctx context.Context) error {
	for _, m := range migrations {
		if err := s.migrateOne(ctx, m); err != nil {
			return fmt.Errorf("failed to migrate the schema to version %d (%s): %w", m.version, m.what, err)
		}
	}
	return nil
}

func (s *Store) migrateOne(ctx context.Context, m migration) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit this is a no-op
	if s.pg {
		// An arbitrary constant naming "pull-agent master schema".
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7234917)`); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ns BIGINT NOT NULL)`); err != nil {
		return err
	}
	var n int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), m.version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	text := m.sqlite
	if s.pg {
		text = m.postgres
	}
	if strings.TrimSpace(text) != "" {
		if err := execScript(ctx, tx, text); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations(version, applied_ns) VALUES(?, ?)`), m.version, time.Now().UnixNano()); err != nil {
		return err
	}
	return tx.Commit()
}

// execScript runs statements separated by ";" at the end of a line (no
// migration has such a sequence inside a string literal).
func execScript(ctx context.Context, tx *sql.Tx, script string) error {
	for _, stmt := range strings.Split(script, ";\n") {
		stmt = strings.TrimSuffix(strings.TrimSpace(stmt), ";")
		if stmt == "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			first, _, _ := strings.Cut(stmt, "\n")
			return fmt.Errorf("%s: %w", first, err)
		}
	}
	return nil
}
