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
		Fresh     int `json:"fresh"`
		Stale     int `json:"stale"`
		NeverSeen int `json:"never_seen"` // agent tokens whose host never reported
	} `json:"workers"`
	Deckies      map[string]int `json:"deckies"` // by state: running, degraded, failed, absent, quarantined
	NewestCommit string         `json:"newest_commit,omitempty"`
	// Applied is how many workers report NewestCommit as applied now.
	Applied int `json:"applied"`
}

// Summary computes the fleet summary at now.
func (s *Store) Summary(ctx context.Context, now time.Time, staleAfter time.Duration) (FleetSummary, error) {
	var f FleetSummary
	f.Deckies = map[string]int{}
	cut := now.Add(-staleAfter).UnixNano()
	if err := s.r.QueryRowContext(ctx, s.q(`SELECT COALESCE(SUM(CASE WHEN last_heartbeat_ns >= ? THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN last_heartbeat_ns < ? THEN 1 ELSE 0 END), 0) FROM hosts`), cut, cut).Scan(&f.Workers.Fresh, &f.Workers.Stale); err != nil {
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
	err = s.r.QueryRowContext(ctx, `SELECT commit_sha FROM host_commits ORDER BY first_ns DESC LIMIT 1`).Scan(&f.NewestCommit)
	if err != nil && f.NewestCommit == "" {
		return f, nil // nothing reported a commit yet
	}
	err = s.r.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM hosts WHERE commit_sha = ?`), f.NewestCommit).Scan(&f.Applied)
	return f, err
}

// Rollout is one commit's progress across the fleet.
type Rollout struct {
	Commit    string `json:"commit"`
	FirstSeen string `json:"first_seen"` // the first report of this commit applied, any host
	// Fresh workers reporting this commit applied, no decky failed.
	Applied int `json:"applied"`
	// Fresh workers on this commit with a failed or quarantined decky.
	Failed int `json:"failed"`
	// Fresh workers on another commit: applying, behind, or refusing it.
	Behind int `json:"behind"`
	// Workers whose last heartbeat is older than --stale-after: nobody
	// knows what they run.
	Stale int `json:"stale"`
	// Time from FirstSeen to each worker's first report of the commit.
	P50Seconds float64 `json:"p50_seconds"`
	P95Seconds float64 `json:"p95_seconds"`
	// Progress: how many workers had reported it applied, over time.
	Progress []RolloutPoint `json:"progress"`
	// BehindHosts names up to 20 fresh workers not on it, with why.
	BehindHosts []BehindHost `json:"behind_hosts,omitempty"`
}

// RolloutPoint is one step of a rollout's progress.
type RolloutPoint struct {
	At      string `json:"at"`
	Workers int    `json:"workers"`
}

// BehindHost is a worker not on a commit, and what it says.
type BehindHost struct {
	Host      string `json:"host"`
	Commit    string `json:"commit"`
	PassError string `json:"pass_error,omitempty"`
	Suspended bool   `json:"suspended,omitempty"`
}

// MaxRollouts bounds the commits a rollout view lists.
const MaxRollouts = 20

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
		err := s.r.QueryRowContext(ctx, s.q(`SELECT
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns >= ? AND h.commit_sha = ? AND NOT EXISTS (SELECT 1 FROM deckies d WHERE d.host = h.host AND d.state IN ('failed', 'quarantined')) THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns >= ? AND h.commit_sha = ? AND EXISTS (SELECT 1 FROM deckies d WHERE d.host = h.host AND d.state IN ('failed', 'quarantined')) THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns >= ? AND h.commit_sha <> ? THEN 1 ELSE 0 END), 0),
	COALESCE(SUM(CASE WHEN h.last_heartbeat_ns < ? THEN 1 ELSE 0 END), 0)
FROM hosts h`), cut, r.Commit, cut, r.Commit, cut, r.Commit, cut).Scan(&r.Applied, &r.Failed, &r.Behind, &r.Stale)
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
		brows, err := s.r.QueryContext(ctx, s.q(`SELECT host, commit_sha, pass_error, suspended FROM hosts WHERE commit_sha <> ? AND last_heartbeat_ns >= ? ORDER BY host LIMIT 20`), r.Commit, cut)
		if err != nil {
			return nil, err
		}
		for brows.Next() {
			var b BehindHost
			var suspended int
			if err := brows.Scan(&b.Host, &b.Commit, &b.PassError, &suspended); err != nil {
				brows.Close()
				return nil, err
			}
			b.Suspended = suspended == 1
			r.BehindHosts = append(r.BehindHosts, b)
		}
		brows.Close()
		if err := brows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
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
