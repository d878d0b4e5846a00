package master

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Retain bounds the lifecycle history. Zero fields keep everything.
type Retain struct {
	MaxAge     time.Duration // events received longer ago than this go
	MaxPerHost int           // only each host's newest MaxPerHost events (by seq) stay
}

// Enabled reports whether anything is ever removed.
func (r Retain) Enabled() bool { return r.MaxAge > 0 || r.MaxPerHost > 0 }

func (r Retain) String() string {
	var parts []string
	if r.MaxAge > 0 {
		parts = append(parts, "age="+r.MaxAge.String())
	}
	if r.MaxPerHost > 0 {
		parts = append(parts, "count="+strconv.Itoa(r.MaxPerHost))
	}
	if len(parts) == 0 {
		return "forever"
	}
	return strings.Join(parts, ",")
}

// ParseRetain reads --retain: comma-separated "age=DURATION" (Go units
// plus d for days, e.g. 90d or 720h) and "count=N" (per host); a bare
// duration or a bare integer means the same. Empty keeps everything.
func ParseRetain(s string) (Retain, error) {
	var r Retain
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		key, val, ok := strings.Cut(part, "=")
		if !ok {
			val = part
			if _, err := strconv.Atoi(part); err == nil {
				key = "count"
			} else {
				key = "age"
			}
		}
		switch key {
		case "age":
			d, err := parseDays(val)
			if err != nil || d <= 0 {
				return Retain{}, fmt.Errorf("--retain %q: age %q is not a positive duration like 90d or 720h", s, val)
			}
			r.MaxAge = d
		case "count":
			n, err := strconv.Atoi(val)
			if err != nil || n <= 0 {
				return Retain{}, fmt.Errorf("--retain %q: count %q is not a positive integer", s, val)
			}
			r.MaxPerHost = n
		default:
			return Retain{}, fmt.Errorf("--retain %q: %q is neither age= nor count=", s, key)
		}
	}
	return r, nil
}

func parseDays(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err != nil {
			return 0, err
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	return time.ParseDuration(s)
}

// pruneChunk bounds one delete so the writer is never held for long: a
// report waits at most one chunk.
const pruneChunk = 5000

// Prune removes lifecycle events (and seq conflicts) that r no longer
// keeps and returns how many events went. Host counters (events,
// max_seq, missing_seqs) keep counting what was ever recorded.
func (s *Store) Prune(ctx context.Context, now time.Time, r Retain) (int64, error) {
	var total int64
	if r.MaxAge > 0 {
		cutoff := now.Add(-r.MaxAge).UnixNano()
		n, err := s.deleteChunks(ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_ns < ? LIMIT ?)`, cutoff)
		total += n
		if err != nil {
			return total, err
		}
		if _, err := s.deleteChunks(ctx, `DELETE FROM seq_conflicts WHERE id IN (SELECT id FROM seq_conflicts WHERE received_ns < ? LIMIT ?)`, cutoff); err != nil {
			return total, err
		}
	}
	if r.MaxPerHost > 0 {
		after := ""
		for {
			var hosts []string
			rows, err := s.r.QueryContext(ctx, s.q(`SELECT host FROM hosts WHERE host > ? AND events_total > ? ORDER BY host LIMIT 500`), after, r.MaxPerHost)
			if err != nil {
				return total, err
			}
			for rows.Next() {
				var h string
				if err := rows.Scan(&h); err != nil {
					rows.Close()
					return total, err
				}
				hosts = append(hosts, h)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return total, err
			}
			for _, h := range hosts {
				// The seq of the host's MaxPerHost-th newest event: older go.
				var keep int64
				err := s.r.QueryRowContext(ctx, s.q(`SELECT seq FROM events WHERE host = ? ORDER BY seq DESC LIMIT 1 OFFSET ?`), h, r.MaxPerHost-1).Scan(&keep)
				if err != nil {
					continue // fewer events than the bound (sql.ErrNoRows)
				}
				n, err := s.deleteChunks(ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE host = ? AND seq < ? LIMIT ?)`, h, keep)
				total += n
				if err != nil {
					return total, err
				}
			}
			if len(hosts) < 500 {
				break
			}
			after = hosts[len(hosts)-1]
		}
	}
	return total, nil
}

func (s *Store) deleteChunks(ctx context.Context, stmt string, args ...any) (int64, error) {
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := s.w.ExecContext(cctx, s.q(stmt), append(args, pruneChunk)...)
		cancel()
		if err != nil {
			return total, fmt.Errorf("failed to prune: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		if n < pruneChunk {
			return total, nil
		}
	}
}
