package master

import (
	"context"
	"slices"
	"time"
)

// FleetSummary answers "how is the fleet?" in a few counters; every one is
// an aggregate over an index, never a list.
type FleetSummary struct {
	Workers struct {
		Fresh int `json:"fresh"`
		// Decommissioned workers (see [HostRow].Decommissioned): out of
		// the fleet, counted neither Fresh nor Stale.
		Decommissioned int `json:"decommissioned"`
		Stale          int `json:"stale"`
		NeverSeen      int `json:"never_seen"` // agent tokens whose host never reported
	} `json:"workers"`
	Deckies map[string]int `json:"deckies"` // by state: running, degraded, failed, absent, quarantined
	// Drifted counts deckies whose latest lifecycle event is a drift the
	// agent could not repair (operation "drift", status "failed").
	Drifted      int    `json:"drifted"`
	NewestCommit string `json:"newest_commit,omitempty"`
	// Applied is how many workers report NewestCommit as applied now.
	Applied int `json:"applied"`
}

// Summary computes the fleet summary at now.
func (s *Store) Summary(ctx context.Context, now time.Time, staleAfter time.Duration) (FleetSummary, error) {
	var f FleetSummary
	f.Deckies = map[string]int{}
	cut := now.Add(-staleAfter).UnixNano()
	if err := s.r.QueryRowContext(ctx, s.q(`SELECT COALESCE(SUM(CASE WHEN last_heartbeat_ns >= ? AND decommissioned = 0 THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN last_heartbeat_ns < ? AND decommissioned = 0 THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(decommissioned), 0) FROM hosts`), cut, cut).Scan(&f.Workers.Fresh, &f.Workers.Stale, &f.Workers.Decommissioned); err != nil {
		return f, err
	}
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM tokens t WHERE t.kind = 'agent' AND t.revoked_ns = 0
	AND NOT EXISTS (SELECT 1 FROM hosts h WHERE h.host = t.name)`).Scan(&f.Workers.NeverSeen); err != nil {
		return f, err
	}
	rows, err := s.r.QueryContext(ctx, `SELECT state, COUNT(*) FROM deckies GROUP BY state`)
	if err != nil {
		return f, err
	}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			rows.Close()
			return f, err
		}
		f.Deckies[st] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return f, err
	}
	if f.Drifted, err = s.Drifted(ctx, ""); err != nil {
		return f, err
	}
	// The newest commit is the one the fleet first reported last (the
	// order of [Rollout]), not the one a late worker applied last.
	err = s.r.QueryRowContext(ctx, `SELECT commit_sha FROM host_commits GROUP BY commit_sha ORDER BY MIN(first_ns) DESC LIMIT 1`).Scan(&f.NewestCommit)
	if err != nil && f.NewestCommit == "" {
		return f, nil // nothing reported a commit yet
	}
	err = s.r.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM hosts WHERE commit_sha = ?`), f.NewestCommit).Scan(&f.Applied)
	return f, err
}

// driftedSQL selects the latest events (by the host's seq) that are an
// unrepaired drift, of deckies the host still reports. It starts from the
// failed drifts (few) and looks for a later event of the same decky
// through events_host_decky.
const driftedSQL = `FROM events e JOIN deckies d ON d.host = e.host AND d.decky = e.decky
WHERE e.operation = 'drift' AND e.status = 'failed'
AND NOT EXISTS (SELECT 1 FROM events l WHERE l.host = e.host AND l.decky = e.decky AND l.seq > e.seq)`

// Drifted counts the deckies, of one host or all (host ""), whose latest
// lifecycle event is a drift that was not repaired.
func (s *Store) Drifted(ctx context.Context, host string) (n int, err error) {
	if host == "" {
		err = s.r.QueryRowContext(ctx, `SELECT COUNT(*) `+driftedSQL).Scan(&n)
	} else {
		err = s.r.QueryRowContext(ctx, s.q(`SELECT COUNT(*) `+driftedSQL+` AND e.host = ?`), host).Scan(&n)
	}
	return n, err
}

// Rollout is one commit's progress across the fleet.
//
// Which commit is newer is decided by the order in which the fleet first
// reported them applied (the master has no git): commit D is after commit
// C when the first report of D applied, on any host, came after the first
// report of C. Against that order every worker falls in exactly one of
// Applied, Failed, MovedOn, Behind and Stale:
//   - Stale: its last heartbeat is older than --stale-after, whatever it runs;
//   - Applied / Failed: fresh and on the commit (Failed when a decky is
//     failed or quarantined);
//   - MovedOn: fresh, on another commit, and either it reported this
//     commit applied before, or its commit is after this one: it has left
//     this commit behind and waits for nothing;
//   - Behind: fresh, on an older commit (or none yet), never having
//     applied this one: it has still to get there.
type Rollout struct {
	Commit    string `json:"commit"`
	FirstSeen string `json:"first_seen"` // the first report of this commit applied, any host
	// Fresh workers reporting this commit applied, no decky failed.
	Applied int `json:"applied"`
	// Fresh workers on this commit with a failed or quarantined decky.
	Failed int `json:"failed"`
	// Fresh workers that left this commit for a later one (or applied it
	// once and moved to another since): not behind.
	MovedOn int `json:"moved_on"`
	// Fresh workers on an older commit, or none, that never applied this
	// one. Their heartbeats split them, first match wins:
	// BehindSuspended (the agent is suspended), BehindPassError (its last
	// pass failed: a commit refused by the trust policy, a fetch or an
	// apply that failed), Applying (its last successful fetch is not older
	// than FirstSeen, so it has likely fetched the commit and not reported
	// it applied yet), and the rest have not fetched since FirstSeen (not
	// yet seen it). Applying compares the worker's clock (last_fetch_ok)
	// with the master's (FirstSeen): skew moves workers between Applying
	// and not yet seen, never out of Behind.
	Behind          int `json:"behind"`
	BehindSuspended int `json:"behind_suspended"`
	BehindPassError int `json:"behind_pass_error"`
	Applying        int `json:"applying"`
	// Workers whose last heartbeat is older than --stale-after: nobody
	// knows what they run.
	Stale int `json:"stale"`
	// Time from FirstSeen to each worker's first report of the commit.
	P50Seconds float64 `json:"p50_seconds"`
	P95Seconds float64 `json:"p95_seconds"`
	// Progress: how many workers had reported it applied, over time.
	Progress []RolloutPoint `json:"progress"`
	// BehindHosts names the first RolloutBehindShown workers behind it (by
	// host name), with why; BehindMore counts the others, listed by
	// [Store.BehindPage] (GET /api/v1/rollouts/{commit}/behind).
	BehindHosts []BehindHost `json:"behind_hosts,omitempty"`
	BehindMore  int          `json:"behind_more,omitempty"`
}

// RolloutPoint is one step of a rollout's progress.
type RolloutPoint struct {
	At      string `json:"at"`
	Workers int    `json:"workers"`
}

// BehindHost is a worker not on a commit, and what it says.
type BehindHost struct {
	Host string `json:"host"`
	// State is why, from its heartbeat: "suspended", "pass error",
	// "applying" or "not fetched since" (see [Rollout]).
	State     string `json:"state"`
	Commit    string `json:"commit"`
	PassError string `json:"pass_error,omitempty"`
	Suspended bool   `json:"suspended,omitempty"`
}

// MaxRollouts bounds the commits a rollout view lists.
const MaxRollouts = 20

// RolloutBehindShown bounds the workers a rollout names inline; the rest
// are one link away, paginated.
const RolloutBehindShown = 10

// behindSQL selects, from hosts h, the fresh workers behind a commit. Its
// arguments are: the stale cut, the commit, the commit again, the
// commit's first-seen time (see [Rollout] for the rule).
const behindSQL = `h.last_heartbeat_ns >= ? AND h.decommissioned = 0 AND h.commit_sha <> ? AND NOT ` + movedOnSQL

// movedOnSQL is true for a host h that applied the commit (first
// argument) before, or whose commit the fleet first reported after the
// commit's first-seen time (second argument).
const movedOnSQL = `(EXISTS (SELECT 1 FROM host_commits hc WHERE hc.host = h.host AND hc.commit_sha = ?)
	OR (h.commit_sha <> '' AND NOT EXISTS (SELECT 1 FROM host_commits hc2 WHERE hc2.commit_sha = h.commit_sha AND hc2.first_ns <= ?)))`

// Rollouts describes the last n commits (newest first).
func (s *Store) Rollouts(ctx context.Context, now time.Time, staleAfter time.Duration, n int) ([]Rollout, error) {
	if n <= 0 || n > MaxRollouts {
		n = 5
	}
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT commit_sha, MIN(first_ns) FROM host_commits GROUP BY commit_sha ORDER BY MIN(first_ns) DESC LIMIT ?`), n)
	if err != nil {
		return nil, err
	}
	var out []Rollout
	var firsts []int64
	for rows.Next() {
		var r Rollout
		var first int64
		if err := rows.Scan(&r.Commit, &first); err != nil {
			rows.Close()
			return nil, err
		}
		r.FirstSeen = fromNS(first)
		out = append(out, r)
		firsts = append(firsts, first)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	cut := now.Add(-staleAfter).UnixNano()
	for i := range out {
		r := &out[i]
		c, f := r.Commit, firsts[i]
		err := s.r.QueryRowContext(ctx, s.q(`SELECT
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns >= ? AND h.commit_sha = ? AND NOT EXISTS (SELECT 1 FROM deckies d WHERE d.host = h.host AND d.state IN ('failed', 'quarantined')) THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns >= ? AND h.commit_sha = ? AND EXISTS (SELECT 1 FROM deckies d WHERE d.host = h.host AND d.state IN ('failed', 'quarantined')) THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns >= ? AND h.commit_sha <> ? AND `+movedOnSQL+` THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN `+behindSQL+` THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN `+behindSQL+` AND h.suspended = 1 THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN `+behindSQL+` AND h.suspended = 0 AND h.pass_error <> '' THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN `+behindSQL+` AND h.suspended = 0 AND h.pass_error = '' AND h.last_fetch_ok_ns >= ? THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns < ? AND h.decommissioned = 0 THEN 1 ELSE 0 END), 0)
FROM hosts h`), cut, c, cut, c, cut, c, c, f, cut, c, c, f, cut, c, c, f, cut, c, c, f, cut, c, c, f, f, cut).Scan(
			&r.Applied, &r.Failed, &r.MovedOn, &r.Behind, &r.BehindSuspended, &r.BehindPassError, &r.Applying, &r.Stale)
		if err != nil {
			return nil, err
		}
		// Per-worker delays, bounded by the fleet's size.
		trows, err := s.r.QueryContext(ctx, s.q(`SELECT first_ns FROM host_commits WHERE commit_sha = ? ORDER BY first_ns LIMIT 100000`), r.Commit)
		if err != nil {
			return nil, err
		}
		var delays []float64
		for trows.Next() {
			var t int64
			if err := trows.Scan(&t); err != nil {
				trows.Close()
				return nil, err
			}
			delays = append(delays, float64(t-firsts[i])/1e9)
		}
		trows.Close()
		if err := trows.Err(); err != nil {
			return nil, err
		}
		r.P50Seconds, r.P95Seconds = quantile(delays, 0.50), quantile(delays, 0.95)
		r.Progress = progress(firsts[i], delays, 24)
		if r.BehindHosts, _, err = s.behindPage(ctx, cut, c, f, "", RolloutBehindShown); err != nil {
			return nil, err
		}
		r.BehindMore = r.Behind - len(r.BehindHosts)
	}
	return out, nil
}

// BehindPage lists the fresh workers behind commit (see [Rollout]), by
// host name, one page at a time; ok is false when no report ever applied
// the commit.
func (s *Store) BehindPage(ctx context.Context, now time.Time, staleAfter time.Duration, commit, after string, limit int) (rows []BehindHost, next string, ok bool, err error) {
	var first int64
	var n int
	if err := s.r.QueryRowContext(ctx, s.q(`SELECT COALESCE(MIN(first_ns), 0), COUNT(*) FROM host_commits WHERE commit_sha = ?`), commit).Scan(&first, &n); err != nil || n == 0 {
		return nil, "", false, err
	}
	rows, next, err = s.behindPage(ctx, now.Add(-staleAfter).UnixNano(), commit, first, after, pageSize(limit))
	return rows, next, true, err
}

type hostCursor struct {
	Host string `json:"h"`
}

func (s *Store) behindPage(ctx context.Context, cut int64, commit string, first int64, after string, limit int) (out []BehindHost, next string, err error) {
	var c hostCursor
	if err := decodeCursor(after, &c); err != nil {
		return nil, "", err
	}
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT h.host, h.commit_sha, h.pass_error, h.suspended, h.last_fetch_ok_ns FROM hosts h
WHERE h.host > ? AND `+behindSQL+` ORDER BY h.host LIMIT ?`), c.Host, cut, commit, commit, first, limit+1)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	for rows.Next() {
		var b BehindHost
		var suspended int
		var fetched int64
		if err := rows.Scan(&b.Host, &b.Commit, &b.PassError, &suspended, &fetched); err != nil {
			return nil, "", err
		}
		b.Suspended = suspended == 1
		switch {
		case b.Suspended:
			b.State = "suspended"
		case b.PassError != "":
			b.State = "pass error"
		case fetched >= first:
			b.State = "applying"
		default:
			b.State = "not fetched since"
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	if len(out) > limit {
		out = out[:limit]
		next = encodeCursor(hostCursor{out[limit-1].Host})
	}
	return out, next, nil
}

// quantile of sorted-ascending xs (nearest rank); 0 when empty.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(q*float64(len(xs))+0.999999) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// progress samples the cumulative count of workers at up to n points.
func progress(first int64, delays []float64, n int) []RolloutPoint {
	if len(delays) == 0 {
		return nil
	}
	end := delays[len(delays)-1]
	var pts []RolloutPoint
	for k := 0; k <= n; k++ {
		t := end * float64(k) / float64(n)
		c, _ := slices.BinarySearch(delays, t+1e-9)
		pts = append(pts, RolloutPoint{At: fromNS(first + int64(t*1e9)), Workers: c})
		if end == 0 {
			break
		}
	}
	return pts
}
