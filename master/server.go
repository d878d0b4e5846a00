package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/decnet/pull-agent/report"
)

// Options configure the master's HTTP API. The zero value is the safe
// one: every report needs a client certificate or an agent token for its
// host, every read an operator token or a client certificate.
type Options struct {
	StaleAfter time.Duration // a host is stale past this since its last heartbeat; default 3m
	// RequireClientCert refuses reports without a verified client
	// certificate, even with a valid token.
	RequireClientCert bool
	// InsecureNoAuth accepts reports for any host and reads from anyone.
	// Command allows it only on a loopback address.
	InsecureNoAuth bool
	// LoopbackReaders lets readers connecting from a loopback address read
	// without a credential. Off behind a reverse proxy on the same machine,
	// which makes every client look local.
	LoopbackReaders bool
}

// Server is the master's HTTP handler.
type Server struct {
	store *Store
	opt   Options
	log   *slog.Logger
	now   func() time.Time
	mux   *http.ServeMux
}

// NewServer returns the handler.
func NewServer(store *Store, opt Options, log *slog.Logger) *Server {
	if opt.StaleAfter == 0 {
		opt.StaleAfter = 3 * time.Minute
	}
	s := &Server{store: store, opt: opt, log: log.With("component", "master"), now: time.Now, mux: http.NewServeMux()}
	s.mux.HandleFunc("POST "+report.HeartbeatPath, s.heartbeat)
	s.mux.HandleFunc("GET /api/v1/hosts", s.reader(s.hosts))
	s.mux.HandleFunc("GET /api/v1/deckies", s.reader(s.deckies))
	s.mux.HandleFunc("GET /api/v1/lifecycle", s.reader(s.lifecycle))
	s.mux.HandleFunc("GET /api/v1/conflicts", s.reader(s.conflicts))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	s.mux.HandleFunc("GET /{$}", s.reader(s.page))
	s.routeConsole()
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// writeError answers with a JSON ErrorBody.
func writeError(w http.ResponseWriter, code int, body ErrorBody) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="pull-agent master"`)
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

func errorf(w http.ResponseWriter, code int, format string, args ...any) {
	writeError(w, code, ErrorBody{Error: fmt.Sprintf(format, args...)})
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) {
	var cred credential
	if !s.opt.InsecureNoAuth {
		var err error
		if cred, err = s.authenticate(r); err != nil {
			s.refuse(w, r, err)
			return
		}
		switch {
		case s.opt.RequireClientCert && len(cred.certNames) == 0:
			s.refuse(w, r, &authError{http.StatusUnauthorized, "a client certificate is required"})
			return
		case cred.token != nil && cred.token.Kind != AgentToken:
			s.refuse(w, r, &authError{http.StatusForbidden, "an operator token cannot report; use the host's agent token"})
			return
		case cred.token == nil && len(cred.certNames) == 0:
			s.refuse(w, r, &authError{http.StatusUnauthorized, "authentication required: a client certificate, or Authorization: Bearer <the host's agent token>"})
			return
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			errorf(w, http.StatusRequestEntityTooLarge, "report body over %d bytes: send fewer events per body", MaxBodyBytes)
			return
		}
		errorf(w, http.StatusBadRequest, "failed to read the report: %v", err)
		return
	}
	b, rejected, err := decodeBody(data)
	if err != nil {
		errorf(w, http.StatusBadRequest, "invalid report: %v", err)
		return
	}
	// Authorization needs the claimed host, so it comes after parsing but
	// before anything about the events is told back.
	if !s.opt.InsecureNoAuth {
		if cred.token != nil && cred.token.Name != b.Host {
			s.refuse(w, r, &authError{http.StatusForbidden, fmt.Sprintf("this token is for host %q, not %q", cred.token.Name, b.Host)})
			return
		}
		if len(cred.certNames) > 0 && !cred.certFor(b.Host) {
			s.refuse(w, r, &authError{http.StatusForbidden, fmt.Sprintf("client certificate is for %q, not %q", cred.certNames[0], b.Host)})
			return
		}
	}
	if len(rejected) > 0 {
		s.log.Warn("report refused: malformed lifecycle events", "host", b.Host, "rejected", len(rejected), "first", rejected[0].Reason)
		// 422 is the per-event verdict of docs/report-protocol.md: the
		// agent sets aside exactly the events named.
		writeError(w, http.StatusUnprocessableEntity, ErrorBody{
			Error:    fmt.Sprintf("%d of the body's lifecycle events are malformed; nothing was recorded: set them aside and send the others again", len(rejected)),
			Rejected: rejected,
		})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	rec, err := s.store.Record(ctx, b, cred.identity(), s.now())
	if err != nil {
		s.log.Error("failed to record report", "host", b.Host, "err", err)
		errorf(w, http.StatusServiceUnavailable, "failed to record the report; send it again")
		return
	}
	if rec.Added > 0 {
		s.log.Debug("recorded lifecycle events", "host", b.Host, "events", rec.Added)
	}
	w.WriteHeader(http.StatusNoContent)
}

// writeTable renders rows as an aligned text table (?format=table), for
// operators reading the API with curl.
func writeTable(w http.ResponseWriter, header []string, rows [][]string, err error) {
	if err != nil {
		writeQueryError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		for i := range r {
			r[i] = strings.ReplaceAll(r[i], "\n", " | ")
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
}

func wantTable(r *http.Request) bool { return r.URL.Query().Get("format") == "table" }

func writeQueryError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrBadCursor) {
		errorf(w, http.StatusBadRequest, "%v", err)
		return
	}
	errorf(w, http.StatusInternalServerError, "query failed: %v", err)
}

func writeJSON(w http.ResponseWriter, v any, err error) {
	if err != nil {
		writeQueryError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// setNext announces the following page in a Link header (RFC 8288) and in
// X-Next-Cursor, keeping the body a plain JSON array.
func setNext(w http.ResponseWriter, r *http.Request, param, next string) {
	if next == "" {
		return
	}
	q := r.URL.Query()
	q.Set(param, next)
	u := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
	w.Header().Set("Link", "<"+u.String()+`>; rel="next"`)
	w.Header().Set("X-Next-Cursor", next)
}

func queryLimit(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("limit must be a positive integer (at most %d)", MaxPageSize)
	}
	return n, nil
}

func (s *Server) hosts(w http.ResponseWriter, r *http.Request) {
	limit, err := queryLimit(r)
	if err != nil {
		errorf(w, http.StatusBadRequest, "%v", err)
		return
	}
	rows, next, err := s.store.HostsPage(r.Context(), s.now(), s.opt.StaleAfter, HostQuery{After: r.URL.Query().Get("after"), Limit: limit})
	setNext(w, r, "after", next)
	writeJSON(w, nonNil(rows), err)
}

func (s *Server) deckies(w http.ResponseWriter, r *http.Request) {
	limit, err := queryLimit(r)
	if err != nil {
		errorf(w, http.StatusBadRequest, "%v", err)
		return
	}
	rows, next, err := s.store.DeckiesPage(r.Context(), DeckyQuery{Host: r.URL.Query().Get("host"), After: r.URL.Query().Get("after"), Limit: limit})
	setNext(w, r, "after", next)
	if wantTable(r) {
		var t [][]string
		for _, d := range rows {
			t = append(t, []string{d.Host, d.Decky, d.IP, d.State, d.Services, d.Error})
		}
		writeTable(w, []string{"HOST", "DECKY", "IP", "STATE", "SERVICES", "ERROR"}, t, err)
		return
	}
	writeJSON(w, nonNil(rows), err)
}

func (s *Server) lifecycle(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := EventFilter{Host: q.Get("host"), Decky: q.Get("decky"), Status: q.Get("status"), After: q.Get("after")}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			errorf(w, http.StatusBadRequest, "since must be RFC 3339, e.g. 2026-11-27T10:00:00Z")
			return
		}
		f.Since = t
	}
	switch q.Get("order") {
	case "", "seq":
	case "newest":
		f.Order = NewestFirst
	default:
		errorf(w, http.StatusBadRequest, "order must be seq (by host, then seq) or newest (by completion time, across hosts)")
		return
	}
	var err error
	if f.Limit, err = queryLimit(r); err != nil {
		errorf(w, http.StatusBadRequest, "%v", err)
		return
	}
	rows, next, err := s.store.EventsPage(r.Context(), f)
	setNext(w, r, "after", next)
	if wantTable(r) {
		var t [][]string
		for _, e := range rows {
			t = append(t, []string{e.Host, strconv.FormatInt(e.Seq, 10), e.DeckyName, e.Operation, e.Status, shortHash(e.Commit), e.Note + e.Error})
		}
		writeTable(w, []string{"HOST", "SEQ", "DECKY", "OPERATION", "STATUS", "COMMIT", "NOTE/ERROR"}, t, err)
		return
	}
	writeJSON(w, nonNil(rows), err)
}

func (s *Server) conflicts(w http.ResponseWriter, r *http.Request) {
	limit, err := queryLimit(r)
	if err != nil {
		errorf(w, http.StatusBadRequest, "%v", err)
		return
	}
	rows, err := s.store.Conflicts(r.Context(), r.URL.Query().Get("host"), limit)
	writeJSON(w, nonNil(rows), err)
}

func shortHash(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
