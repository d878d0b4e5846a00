package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/decnet/pull-agent/report"
)

// MaxBodyBytes bounds one report body.
const MaxBodyBytes = 4 << 20

// Options configure the master's HTTP API.
type Options struct {
	StaleAfter time.Duration // a host is stale past this since its last heartbeat; default 3m
	// RequireClientCert makes the master refuse reports without a verified
	// client certificate, and reports whose claimed host differs from the
	// certificate's common name (set when TLS with client CAs is on).
	RequireClientCert bool
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
	s.mux.HandleFunc("GET /api/v1/hosts", s.hosts)
	s.mux.HandleFunc("GET /api/v1/deckies", s.deckies)
	s.mux.HandleFunc("GET /api/v1/lifecycle", s.lifecycle)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	s.mux.HandleFunc("GET /{$}", s.page)
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	idRE   = regexp.MustCompile(`^[A-Za-z0-9-]{8,64}$`)
	ops    = map[string]bool{"deploy": true, "mutate": true, "teardown": true, "repair": true}
	states = map[string]bool{"running": true, "succeeded": true, "failed": true, "quarantined": true}
)

// validate checks a body completely before anything is written.
func validate(b *report.Body) error {
	if !nameRE.MatchString(b.Host) {
		return fmt.Errorf("host %q is not a valid host name", b.Host)
	}
	for i, e := range b.Lifecycle {
		switch {
		case !idRE.MatchString(e.EventID):
			return fmt.Errorf("lifecycle[%d]: event_id %q is invalid", i, e.EventID)
		case e.Seq == 0:
			return fmt.Errorf("lifecycle[%d]: seq must be positive", i)
		case !nameRE.MatchString(e.DeckyName):
			return fmt.Errorf("lifecycle[%d]: decky_name %q is invalid", i, e.DeckyName)
		case !ops[e.Operation]:
			return fmt.Errorf("lifecycle[%d]: operation %q is not deploy, mutate, teardown or repair", i, e.Operation)
		case !states[e.Status]:
			return fmt.Errorf("lifecycle[%d]: status %q is not running, succeeded, failed or quarantined", i, e.Status)
		case e.Host != "" && e.Host != b.Host:
			return fmt.Errorf("lifecycle[%d]: event of host %q in a report of host %q", i, e.Host, b.Host)
		}
	}
	return nil
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) {
	identity := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		identity = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	if s.opt.RequireClientCert && identity == "" {
		http.Error(w, "a client certificate is required", http.StatusUnauthorized)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	var b report.Body
	if err := dec.Decode(&b); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, "report body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "malformed report: "+err.Error(), http.StatusBadRequest)
		return
	}
	if b.Host == "" {
		b.Host = b.HostUUID // a DECNET agent names itself by UUID only
	}
	if err := validate(&b); err != nil {
		http.Error(w, "invalid report: "+err.Error(), http.StatusBadRequest)
		return
	}
	if s.opt.RequireClientCert && identity != b.Host {
		s.log.Warn("report refused: claimed host does not match the client certificate", "claimed", b.Host, "certificate", identity)
		http.Error(w, fmt.Sprintf("client certificate is for %q, not %q", identity, b.Host), http.StatusForbidden)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	added, err := s.store.Record(ctx, &b, identity, s.now())
	if err != nil {
		s.log.Error("failed to record report", "host", b.Host, "err", err)
		http.Error(w, "failed to record the report", http.StatusInternalServerError)
		return
	}
	if added > 0 {
		s.log.Info("recorded lifecycle events", "host", b.Host, "events", added)
	}
	w.WriteHeader(http.StatusNoContent)
}

// writeTable renders rows as an aligned text table (?format=table), for
// operators reading the API with curl.
func writeTable(w http.ResponseWriter, header []string, rows [][]string, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
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

func writeJSON(w http.ResponseWriter, v any, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (s *Server) hosts(w http.ResponseWriter, r *http.Request) {
	rows, err := s.store.Hosts(r.Context(), s.now(), s.opt.StaleAfter)
	writeJSON(w, nonNil(rows), err)
}

func (s *Server) deckies(w http.ResponseWriter, r *http.Request) {
	rows, err := s.store.Deckies(r.Context(), r.URL.Query().Get("host"))
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
	f := EventFilter{Host: q.Get("host"), Decky: q.Get("decky"), Status: q.Get("status")}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			http.Error(w, "since must be RFC 3339, e.g. 2026-11-27T10:00:00Z", http.StatusBadRequest)
			return
		}
		f.Since = t
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			http.Error(w, "limit must be a positive integer", http.StatusBadRequest)
			return
		}
		f.Limit = n
	}
	rows, err := s.store.Events(r.Context(), f)
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
