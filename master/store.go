package master

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	stdsync "sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL through pgx's database/sql driver
	_ "modernc.org/sqlite"             // pure-Go SQLite: no cgo, static binary

	"github.com/decnet/pull-agent/report"
)

// ErrClosed is returned by Record after Close.
var ErrClosed = errors.New("master store is closed")

// Store is the master's durable record: SQLite (a file path) or
// PostgreSQL (a postgres:// URL), with the same schema and semantics.
//
// Writes go through a small set of writer goroutines on their own
// connections, which commit whatever bodies are waiting in one transaction
// (group commit: one fsync for many reports). Reads use a separate pool,
// so a slow reader never holds the connection a report needs.
type Store struct {
	w, r *sql.DB
	// a serves the reads of the report path (token checks) on connections
	// of its own, so that readers of the API cannot starve reports.
	a   *sql.DB
	pg  bool
	log *slog.Logger

	jobs      chan *job
	wg        stdsync.WaitGroup
	closeOnce stdsync.Once
	mu        stdsync.RWMutex // guards closed against sends on jobs
	closed    bool

	qcache stdsync.Map // query text with ? -> dialect text
	stmts  map[string]*sql.Stmt
}

// Hot statements of the write path, prepared once: parsing them for
// every event cost more than executing them.
//
// The host upsert's WHERE refuses one case: a row that says
// decommissioned, overwritten by a heartbeat that does not. That is a
// re-provisioned worker (a new life of the host name), and the upsert
// then changes no row, which recordOne sees in its RowsAffected and
// archives the old life before upserting again. Every other heartbeat
// pays nothing for it: no extra statement, the predicate is read from
// the row the conflict already found.
const (
	sqlUpsertHost = `
INSERT INTO hosts(host, host_uuid, agent_version, commit_sha, remote, last_heartbeat_ns, last_fetch_ok_ns, last_apply_ns, pass_error, outbox_depth, outbox_rejected, identity, verified, suspended, decommissioned)
VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(host) DO UPDATE SET host_uuid=excluded.host_uuid, agent_version=excluded.agent_version,
	commit_sha=excluded.commit_sha, remote=excluded.remote, last_heartbeat_ns=excluded.last_heartbeat_ns,
	last_fetch_ok_ns=excluded.last_fetch_ok_ns, last_apply_ns=excluded.last_apply_ns, pass_error=excluded.pass_error,
	outbox_depth=excluded.outbox_depth, outbox_rejected=excluded.outbox_rejected, identity=excluded.identity,
	verified=excluded.verified, suspended=excluded.suspended, decommissioned=excluded.decommissioned
WHERE hosts.decommissioned = 0 OR excluded.decommissioned = 1`
	sqlInsertEvent = `
INSERT INTO events(event_id, host, seq, decky, operation, status, error, commit_sha, config_hash, note, started_ns, completed_ns, received_ns)
VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING`
	sqlHostCommit     = `INSERT INTO host_commits(host, commit_sha, first_ns) VALUES(?,?,?) ON CONFLICT DO NOTHING`
	sqlDeckiesChanged = `UPDATE hosts SET deckies_hash = ? WHERE host = ? AND deckies_hash <> ?`
	sqlDeleteDeckies  = `DELETE FROM deckies WHERE host = ?`
	sqlInsertDecky    = `INSERT INTO deckies(host, decky, ip, mac, state, running, services, config_hash, error, updated_ns) VALUES(?,?,?,?,?,?,?,?,?,?)`
)

func (s *Store) prepare(ctx context.Context) error {
	s.stmts = map[string]*sql.Stmt{}
	for _, q := range []string{sqlUpsertHost, sqlHostCommit, sqlInsertEvent, sqlDeckiesChanged, sqlDeleteDeckies, sqlInsertDecky} {
		st, err := s.w.PrepareContext(ctx, s.q(q))
		if err != nil {
			return fmt.Errorf("failed to prepare %q: %w", strings.Fields(q)[0:3], err)
		}
		s.stmts[q] = st
	}
	return nil
}

// exec runs a prepared hot statement inside tx.
func (s *Store) exec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	return tx.StmtContext(ctx, s.stmts[q]).ExecContext(ctx, args...)
}

// StoreOptions tune a Store; the zero value is the default.
type StoreOptions struct {
	// Writers is the number of writer goroutines (and write connections).
	// Default 1 for SQLite (it has one writer anyway), 4 for PostgreSQL.
	Writers int
	// ReadConns bounds the read pool; default 4.
	ReadConns int
	// Log receives seq conflicts and migration notes; default discards.
	Log *slog.Logger
}

// OpenStore opens (creating and migrating) the store at dsn: a
// postgres:// or postgresql:// URL, else a SQLite file path.
func OpenStore(ctx context.Context, dsn string) (*Store, error) {
	return OpenStoreWith(ctx, dsn, StoreOptions{})
}

// IsPostgres reports whether dsn names a PostgreSQL database.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// OpenStoreWith is OpenStore with options.
func OpenStoreWith(ctx context.Context, dsn string, opt StoreOptions) (*Store, error) {
	s := &Store{pg: IsPostgres(dsn), log: opt.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if opt.ReadConns <= 0 {
		opt.ReadConns = 4
	}
	var err error
	if s.pg {
		if opt.Writers <= 0 {
			opt.Writers = 4
		}
		if s.w, err = sql.Open("pgx", dsn); err != nil {
			return nil, err
		}
		// Writers plus one for retention and token changes.
		s.w.SetMaxOpenConns(opt.Writers + 1)
		if s.r, err = sql.Open("pgx", dsn); err != nil {
			s.w.Close()
			return nil, err
		}
		if s.a, err = sql.Open("pgx", dsn); err != nil {
			s.closeDBs()
			return nil, err
		}
	} else {
		opt.Writers = 1 // SQLite serialises writers; more would only wait
		// WAL keeps readers off the writer's back; busy_timeout serialises
		// writers of other processes instead of failing them;
		// synchronous=FULL makes a 2xx answer mean "on disk".
		base := "file:" + dsn + "?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)"
		if s.w, err = sql.Open("sqlite", base+"&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)"); err != nil {
			return nil, err
		}
		s.w.SetMaxOpenConns(1)
		if s.r, err = sql.Open("sqlite", base+"&_pragma=query_only(1)"); err != nil {
			s.w.Close()
			return nil, err
		}
		if s.a, err = sql.Open("sqlite", base+"&_pragma=query_only(1)"); err != nil {
			s.closeDBs()
			return nil, err
		}
	}
	s.r.SetMaxOpenConns(opt.ReadConns)
	s.r.SetMaxIdleConns(opt.ReadConns)
	s.a.SetMaxOpenConns(2)
	s.a.SetMaxIdleConns(2)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.w.PingContext(pctx); err != nil {
		s.closeDBs()
		return nil, fmt.Errorf("failed to open the master database %s: %w", redactDSN(dsn), err)
	}
	if err := s.migrate(pctx); err != nil {
		s.closeDBs()
		return nil, fmt.Errorf("%s: %w", redactDSN(dsn), err)
	}
	if err := s.prepare(pctx); err != nil {
		s.closeDBs()
		return nil, err
	}
	s.jobs = make(chan *job, 1024)
	for i := 0; i < opt.Writers; i++ {
		s.wg.Add(1)
		go s.writer()
	}
	return s, nil
}

// redactDSN drops a password from a postgres URL before it is shown.
func redactDSN(dsn string) string {
	if !IsPostgres(dsn) {
		return dsn
	}
	scheme, rest, _ := strings.Cut(dsn, "://")
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		user, _, _ := strings.Cut(rest[:at], ":")
		rest = user + ":xxxxx" + rest[at:]
	}
	if i := strings.Index(rest, "password="); i >= 0 {
		rest = rest[:i] + "password=xxxxx"
	}
	return scheme + "://" + rest
}

func (s *Store) closeDBs() {
	for _, st := range s.stmts {
		st.Close()
	}
	if s.w != nil {
		s.w.Close()
	}
	if s.r != nil {
		s.r.Close()
	}
	if s.a != nil {
		s.a.Close()
	}
}

// Close waits for queued reports to be written, then closes the database.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.jobs)
		s.mu.Unlock()
		s.wg.Wait()
		s.closeDBs()
	})
	return nil
}

// Postgres reports whether the store is PostgreSQL.
func (s *Store) Postgres() bool { return s.pg }

// q rewrites ? placeholders to $n for PostgreSQL (no query here has a ?
// inside a literal).
func (s *Store) q(query string) string {
	if !s.pg {
		return query
	}
	if v, ok := s.qcache.Load(query); ok {
		return v.(string)
	}
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	s.qcache.Store(query, b.String())
	return b.String()
}

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) string {
	if n == 0 {
		return ""
	}
	return time.Unix(0, n).UTC().Format(time.RFC3339Nano)
}

// Recorded is what one report changed.
type Recorded struct {
	Added      int           // new lifecycle events
	Duplicates int           // events already recorded (a resend)
	Conflicts  []SeqConflict // events whose seq was already used by another event_id
}

// job is one report waiting for a writer.
type job struct {
	b        *report.Body
	identity string
	now      time.Time
	done     chan jobResult
}

type jobResult struct {
	rec Recorded
	err error
}

// Record stores one report atomically: its heartbeat, its lifecycle
// events (deduplicated by event_id) and its decky table. It returns once
// the report is durable or has failed; a failure leaves no trace of it.
func (s *Store) Record(ctx context.Context, b *report.Body, identity string, now time.Time) (Recorded, error) {
	j := &job{b: b, identity: identity, now: now, done: make(chan jobResult, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return Recorded{}, ErrClosed
	}
	select {
	case s.jobs <- j:
	case <-ctx.Done():
		s.mu.RUnlock()
		return Recorded{}, ctx.Err()
	}
	s.mu.RUnlock()
	select {
	case r := <-j.done:
		return r.rec, r.err
	case <-ctx.Done():
		// The writer may still commit it; a resend is deduplicated.
		return Recorded{}, ctx.Err()
	}
}

// Group commit bounds: enough to amortise an fsync, small enough that one
// transaction never holds the writer for long.
const (
	maxGroupBodies = 64
	maxGroupEvents = 4000
)

func (s *Store) writer() {
	defer s.wg.Done()
	for first := range s.jobs {
		group := []*job{first}
		events := len(first.b.Lifecycle)
	collect:
		for len(group) < maxGroupBodies && events < maxGroupEvents {
			select {
			case j, ok := <-s.jobs:
				if !ok {
					break collect
				}
				group = append(group, j)
				events += len(j.b.Lifecycle)
			default:
				break collect
			}
		}
		s.commitGroup(group)
	}
}

// commitGroup writes a group in one transaction, each report under its own
// savepoint so that one failing report fails alone. Reports are taken in
// host order (stable, so one host's reports keep theirs): every writer of
// every master then locks host rows in the same order, and PostgreSQL
// cannot deadlock between them.
func (s *Store) commitGroup(group []*job) {
	slices.SortStableFunc(group, func(a, b *job) int { return cmp.Compare(a.b.Host, b.b.Host) })
	results := make([]jobResult, len(group))
	err := s.withRetry(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback() //nolint:errcheck // after Commit this is a no-op
		for i, j := range group {
			if len(group) > 1 {
				if _, err := tx.ExecContext(ctx, "SAVEPOINT report"); err != nil {
					return err
				}
			}
			rec, err := s.recordOne(ctx, tx, j)
			results[i] = jobResult{rec, err}
			if len(group) > 1 {
				stmt := "RELEASE SAVEPOINT report"
				if err != nil {
					if retryable(err) {
						return err // the whole group again
					}
					stmt = "ROLLBACK TO SAVEPOINT report"
				}
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return err
				}
			} else if err != nil {
				return err
			}
		}
		return tx.Commit()
	})
	for i, j := range group {
		r := results[i]
		if err != nil {
			r = jobResult{err: err}
		}
		j.done <- r
	}
}

// retryable tells PostgreSQL's deadlock and serialisation failures, which
// succeed when the transaction is simply run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

func (s *Store) withRetry(f func() error) error {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if err = f(); err == nil || !retryable(err) {
			return err
		}
		time.Sleep(time.Duration(attempt+1) * 10 * time.Millisecond)
	}
	return err
}

func (s *Store) recordOne(ctx context.Context, tx *sql.Tx, j *job) (Recorded, error) {
	b, now := j.b, ns(j.now)
	var rec Recorded
	// First, so that it locks the host's row: reports of one host are
	// written one after the other even by several masters. PostgreSQL
	// locks the row even when the upsert's WHERE refuses the update.
	upsert := func() (int64, error) {
		res, err := s.exec(ctx, tx, sqlUpsertHost,
			b.Host, b.HostUUID, b.AgentVersion, b.Commit, b.Remote, now, ns(b.LastFetchOK), ns(b.LastApply), b.PassError, b.OutboxDepth, b.OutboxRejects, j.identity,
			b.Verified, boolInt(b.Suspended), boolInt(b.Decommissioned))
		if err != nil {
			return 0, fmt.Errorf("failed to record the heartbeat of %s: %w", b.Host, err)
		}
		return res.RowsAffected()
	}
	n, err := upsert()
	if err != nil {
		return rec, err
	}
	if n == 0 {
		// Refused by the upsert's WHERE: the row is a decommissioned life
		// and this heartbeat starts a new one (sqlUpsertHost).
		if err := s.archiveDecommissioned(ctx, tx, b.Host, j.now); err != nil {
			return rec, err
		}
		if n, err = upsert(); err != nil {
			return rec, err
		}
		if n != 1 {
			return rec, fmt.Errorf("failed to record the heartbeat of %s: its host row was not written after archiving", b.Host)
		}
	}
	if b.Commit != "" {
		// Rollout progress: when this host first had this commit applied.
		if _, err := s.exec(ctx, tx, sqlHostCommit, b.Host, b.Commit, now); err != nil {
			return rec, fmt.Errorf("failed to record the commit of %s: %w", b.Host, err)
		}
	}
	var maxSeq int64
	for _, e := range b.Lifecycle {
		res, err := s.exec(ctx, tx, sqlInsertEvent,
			e.EventID, b.Host, int64(e.Seq), e.DeckyName, e.Operation, e.Status, e.Error, e.Commit, e.ConfigHash, e.Note, ns(e.StartedAt), ns(e.CompletedAt), now)
		if err != nil {
			return rec, fmt.Errorf("failed to record event %s: %w", e.EventID, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			rec.Added++
			maxSeq = max(maxSeq, int64(e.Seq))
			continue
		}
		// Not inserted: a resend of the same event, or another event
		// under a seq (or event_id) already taken.
		var existing string
		err = tx.QueryRowContext(ctx, s.q(`SELECT event_id FROM events WHERE host = ? AND seq = ?`), b.Host, int64(e.Seq)).Scan(&existing)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return rec, err
		}
		if existing == e.EventID {
			rec.Duplicates++
			continue
		}
		c, err := s.recordConflict(ctx, tx, b.Host, e, existing, now)
		if err != nil {
			return rec, err
		}
		if c != nil {
			rec.Conflicts = append(rec.Conflicts, *c)
		} else {
			rec.Duplicates++ // the conflict was already recorded
		}
	}
	if rec.Added > 0 || len(rec.Conflicts) > 0 {
		greatest := "max"
		if s.pg {
			greatest = "GREATEST"
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE hosts SET events_total = events_total + ?, max_seq = `+greatest+`(max_seq, ?),
	seq_conflicts = seq_conflicts + ? WHERE host = ?`), rec.Added, maxSeq, len(rec.Conflicts), b.Host); err != nil {
			return rec, err
		}
	}
	if b.Status.Runtime != nil || b.Status.Deployed {
		if err := s.replaceDeckies(ctx, tx, b, now); err != nil {
			return rec, err
		}
	}
	return rec, nil
}

// recordConflict keeps an event whose seq another event_id already holds
// (an agent that lost its state and counts again from 1, or two agents
// under one host name). It returns nil when this conflict was recorded
// before (the agent resent it).
func (s *Store) recordConflict(ctx context.Context, tx *sql.Tx, host string, e report.Event, existing string, now int64) (*SeqConflict, error) {
	data, _ := json.Marshal(e)
	res, err := tx.ExecContext(ctx, s.q(`INSERT INTO seq_conflicts(host, seq, event_id, existing_event_id, event, received_ns) VALUES(?,?,?,?,?,?) ON CONFLICT DO NOTHING`),
		host, int64(e.Seq), e.EventID, existing, string(data), now)
	if err != nil {
		return nil, fmt.Errorf("failed to record a seq conflict: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, nil
	}
	s.log.Warn("seq reused with a different event_id: kept aside in seq_conflicts",
		"host", host, "seq", e.Seq, "event_id", e.EventID, "existing_event_id", existing)
	return &SeqConflict{Host: host, Seq: int64(e.Seq), EventID: e.EventID, ExistingEventID: existing, Event: data, ReceivedAt: fromNS(now)}, nil
}

// replaceDeckies makes the host's decky table the heartbeat's, when it
// changed: most heartbeats repeat the last one, and a hash of it in the
// host row saves rewriting every decky's row each time.
func (s *Store) replaceDeckies(ctx context.Context, tx *sql.Tx, b *report.Body, now int64) error {
	type row struct {
		name, ip, mac  string
		state          string
		running        int
		services, hash string
		err            string
	}
	ips, macs, hashes := map[string]string{}, map[string]string{}, map[string]string{}
	for _, d := range b.Status.Deckies {
		ips[d.Name], macs[d.Name], hashes[d.Name] = d.IP, d.MAC, d.ConfigHash
	}
	var rows []row
	for name, rt := range b.Status.Runtime {
		var svcs []string
		for svc, st := range rt.Services {
			svcs = append(svcs, svc+"="+st)
		}
		slices.Sort(svcs)
		rows = append(rows, row{name, ips[name], macs[name], rt.State, boolInt(rt.Running), strings.Join(svcs, ","), hashes[name], rt.Error})
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(a.name, b.name) })
	h := sha256.New()
	for _, r := range rows {
		fmt.Fprintf(h, "%q %q %q %q %d %q %q %q\n", r.name, r.ip, r.mac, r.state, r.running, r.services, r.hash, r.err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	res, err := s.exec(ctx, tx, sqlDeckiesChanged, sum, b.Host, sum)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil // the same table as last time
	}
	// The heartbeat is the host's whole truth: deckies it no longer
	// reports are gone (DECNET never pruned them, bug L6).
	if _, err := s.exec(ctx, tx, sqlDeleteDeckies, b.Host); err != nil {
		return err
	}
	for _, r := range rows {
		if _, err := s.exec(ctx, tx, sqlInsertDecky, b.Host, r.name, r.ip, r.mac, r.state, r.running, r.services, r.hash, r.err, now); err != nil {
			return err
		}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ArchivedSuffix joins a host name and the time its decommissioned history
// was archived. '~' is not allowed in reported host names, so an archived
// name never collides with a worker's.
const ArchivedSuffix = "~decommissioned-"

// archiveDecommissioned renames the history of a decommissioned host
// (hosts, events, deckies, rollout and conflict rows) to
// host~decommissioned-<time> when the host name reports again without
// being decommissioned: a re-provisioned worker starts its event
// sequence at 1 again, and would otherwise see every event kept aside as
// a seq conflict with its previous life. Nothing is deleted.
//
// It runs only when the host upsert refused to overwrite a decommissioned
// row (rare), so its statements are not prepared.
func (s *Store) archiveDecommissioned(ctx context.Context, tx *sql.Tx, host string, now time.Time) error {
	archived := host + ArchivedSuffix + now.UTC().Format("20060102t150405.000000000z")
	res, err := tx.ExecContext(ctx, s.q(`UPDATE hosts SET host = ? WHERE host = ? AND decommissioned = 1`), archived, host)
	if err != nil {
		return fmt.Errorf("failed to archive the decommissioned history of %s: %w", host, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("failed to archive the decommissioned history of %s: %w", host, err)
	} else if n != 1 {
		// The upsert found this row decommissioned and holds its lock:
		// anything else is a bug, not a race.
		return fmt.Errorf("failed to archive the decommissioned history of %s: %d host rows renamed, want 1", host, n)
	}
	for _, table := range []string{"events", "deckies", "host_commits", "seq_conflicts"} {
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE `+table+` SET host = ? WHERE host = ?`), archived, host); err != nil {
			return fmt.Errorf("failed to archive the decommissioned history of %s (%s): %w", host, table, err)
		}
	}
	s.log.Info("a decommissioned host reports again: its previous history is kept under another name",
		"host", host, "archived_as", archived)
	return nil
}
