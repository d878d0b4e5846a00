package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the daemon's Prometheus metrics, on a registry of its own
// (no global state).
type Metrics struct {
	reg       *prometheus.Registry
	passes    *prometheus.CounterVec
	passTime  prometheus.Histogram
	stepTime  *prometheus.HistogramVec
	webhook   *prometheus.CounterVec
	deckies   *prometheus.GaugeVec
	events    *prometheus.CounterVec
	outbox    prometheus.Gauge
	rejected  prometheus.Gauge
	lastFetch prometheus.Gauge
	lastApply prometheus.Gauge
	info      *prometheus.GaugeVec
	suspended prometheus.Gauge
	version   string
}

// NewMetrics registers the metrics of an agent of the given version.
func NewMetrics(version string) *Metrics {
	m := &Metrics{version: version,
		reg: prometheus.NewRegistry(),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pull_agent_passes_total",
			Help: "Passes by result: applied (converged), failed (a decky failed), skipped (nothing moved), not_started (fetch, refusal, invalid repo), decommissioned (the last pass: everything removed)."}, []string{"result"}),
		passTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pull_agent_pass_duration_seconds",
			Help: "Wall time of passes that ran.", Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 12)}),
		stepTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pull_agent_step_duration_seconds",
			Help: "Wall time of each pass step that ran (fetch, parse, ..., apply, record, helper): where passes spend their time.", Buckets: prometheus.ExponentialBuckets(0.001, 3, 12)}, []string{"step"}),
		webhook: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pull_agent_webhook_requests_total",
			Help: "Webhook trigger requests by outcome: accepted (a pass queued), coalesced (one was already due), refused (bad or missing signature), bad_request (not a POST, body too large)."}, []string{"result"}),
		deckies: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pull_agent_deckies",
			Help: "Deckies by runtime state."}, []string{"state"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pull_agent_lifecycle_events_total",
			Help: "Lifecycle results by operation and status."}, []string{"operation", "status"}),
		outbox:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_outbox_events", Help: "Lifecycle events waiting for the master."}),
		rejected:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_outbox_rejected_events", Help: "Lifecycle events the master refused (kept on disk)."}),
		lastFetch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_last_fetch_ok_timestamp_seconds", Help: "When the fleet repository was last fetched successfully."}),
		lastApply: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_last_apply_timestamp_seconds", Help: "When a pass last ran to the end."}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pull_agent_info",
			Help: "Agent version, applied commit and who signed it (verified: the signer, or none without a trust policy)."}, []string{"version", "commit", "verified"}),
	}
	m.suspended = prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_suspended", Help: "1 while the agent is suspended and applies nothing."})
	m.reg.MustRegister(m.suspended, m.passes, m.passTime, m.stepTime, m.webhook, m.deckies, m.events, m.outbox, m.rejected, m.lastFetch, m.lastApply, m.info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// webhookRequest counts one webhook request by outcome; m may be nil.
func (m *Metrics) webhookRequest(result string) {
	if m != nil {
		m.webhook.WithLabelValues(result).Inc()
	}
}

// Observe records one pass of a.
func (m *Metrics) Observe(a *Agent, res *Result, err error, took time.Duration) {
	switch {
	case errors.Is(err, ErrDecommissioned):
		m.passes.WithLabelValues("decommissioned").Inc()
	case err != nil:
		m.passes.WithLabelValues("not_started").Inc()
	case res.Skipped:
		m.passes.WithLabelValues("skipped").Inc()
	case res.Failed > 0:
		m.passes.WithLabelValues("failed").Inc()
	default:
		m.passes.WithLabelValues("applied").Inc()
	}
	if res != nil {
		for _, s := range res.Steps {
			m.stepTime.WithLabelValues(s.Step).Observe(s.Took.Seconds())
		}
	}
	if err == nil && !res.Skipped {
		m.passTime.Observe(took.Seconds())
		for _, e := range res.Events {
			m.events.WithLabelValues(e.Operation, e.Status).Inc()
		}
	}
	if box := a.d.Outbox; box != nil {
		m.outbox.Set(float64(box.Depth()))
		m.rejected.Set(float64(box.Rejected()))
	}
	h := a.Health()
	if !h.LastFetchOK.IsZero() {
		m.lastFetch.Set(float64(h.LastFetchOK.Unix()))
	}
	if !h.LastApply.IsZero() {
		m.lastApply.Set(float64(h.LastApply.Unix()))
	}
	m.suspended.Set(0)
	if h.Suspended {
		m.suspended.Set(1)
	}
	m.info.Reset()
	m.info.WithLabelValues(m.version, h.Commit, h.Signer).Set(1)
	m.deckies.Reset()
	for state, n := range h.Deckies {
		m.deckies.WithLabelValues(state).Set(float64(n))
	}
}

// HealthHandler says whether the daemon is doing its job: a fetch
// succeeded within stale (users of other tools complain that polling
// silently stops). It reads [Agent.Health], so it is safe while a pass
// runs.
func (a *Agent) HealthHandler(stale time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		last, now := a.Health().LastFetchOK, a.now()
		switch {
		case last.IsZero():
			http.Error(w, "no successful fetch yet", http.StatusServiceUnavailable)
		case now.Sub(last) > stale:
			http.Error(w, fmt.Sprintf("last successful fetch %s ago (more than %s)", now.Sub(last).Round(time.Second), stale), http.StatusServiceUnavailable)
		default:
			fmt.Fprintf(w, "ok: last fetch %s ago\n", now.Sub(last).Round(time.Second))
		}
	})
}

// ErrListenAddress is a management address the agent refuses to listen
// on (every interface, or the decoy LAN).
var ErrListenAddress = errors.New("refused listen address")

// CheckListen refuses addresses where whoever probes the deckies could
// reach the agent: every interface, or one of the decoy LAN's.
func CheckListen(addr string, decoy []netip.Addr) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q: %v", ErrListenAddress, addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		return fmt.Errorf("%w: %q listens on every interface, the decoy LAN too; give a management address such as 127.0.0.1:9477", ErrListenAddress, addr)
	}
	for _, d := range decoy {
		if a, err := netip.ParseAddr(host); err == nil && a == d {
			return fmt.Errorf("%w: %q is on the decoy LAN; give a management address", ErrListenAddress, addr)
		}
	}
	return nil
}

// ServeMetrics listens on addr for /metrics and /healthz until the
// returned stop function is called (which waits at most 5s). It refuses
// an address on the decoy LAN: nothing of the agent's may be visible to
// whoever probes the deckies.
func ServeMetrics(addr string, decoy []netip.Addr, m *Metrics, h http.Handler, log *slog.Logger) (func(), error) {
	return Serve(addr, decoy, MetricsHandler(m, h), log)
}

// MetricsHandler serves /metrics and /healthz (h).
func MetricsHandler(m *Metrics, h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /healthz", h)
	return mux
}

// Serve listens on a management address (CheckListen) until the returned
// stop function is called, which waits at most 5s for requests in flight.
func Serve(addr string, decoy []netip.Addr, h http.Handler, log *slog.Logger) (func(), error) {
	if err := CheckListen(addr, decoy); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("listener stopped", "addr", addr, "err", err)
		}
	}()
	log.Info("listening on " + ln.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}
