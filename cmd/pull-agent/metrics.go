package main

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

// metrics are the daemon's Prometheus metrics, on a registry of its own
// (no global state).
type metrics struct {
	reg       *prometheus.Registry
	passes    *prometheus.CounterVec
	passTime  prometheus.Histogram
	deckies   *prometheus.GaugeVec
	events    *prometheus.CounterVec
	outbox    prometheus.Gauge
	rejected  prometheus.Gauge
	lastFetch prometheus.Gauge
	lastApply prometheus.Gauge
	info      *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pull_agent_passes_total",
			Help: "Passes by result: applied (converged), failed (a decky failed), skipped (nothing moved), not_started (fetch, refusal, invalid repo)."}, []string{"result"}),
		passTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pull_agent_pass_duration_seconds",
			Help: "Wall time of passes that ran.", Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 12)}),
		deckies: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pull_agent_deckies",
			Help: "Deckies by runtime state."}, []string{"state"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pull_agent_lifecycle_events_total",
			Help: "Lifecycle results by operation and status."}, []string{"operation", "status"}),
		outbox:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_outbox_events", Help: "Lifecycle events waiting for the master."}),
		rejected:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_outbox_rejected_events", Help: "Lifecycle events the master refused (kept on disk)."}),
		lastFetch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_last_fetch_ok_timestamp_seconds", Help: "When the fleet repository was last fetched successfully."}),
		lastApply: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_last_apply_timestamp_seconds", Help: "When a pass last ran to the end."}),
		info:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pull_agent_info", Help: "Agent version and applied commit."}, []string{"version", "commit"}),
	}
	m.reg.MustRegister(m.passes, m.passTime, m.deckies, m.events, m.outbox, m.rejected, m.lastFetch, m.lastApply, m.info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe records one pass.
func (m *metrics) observe(a *agent, res *passResult, err error, took time.Duration) {
	switch {
	case err != nil:
		m.passes.WithLabelValues("not_started").Inc()
	case res.skipped:
		m.passes.WithLabelValues("skipped").Inc()
	case res.failed > 0:
		m.passes.WithLabelValues("failed").Inc()
	default:
		m.passes.WithLabelValues("applied").Inc()
	}
	if err == nil && !res.skipped {
		m.passTime.Observe(took.Seconds())
		for _, r := range res.results {
			m.events.WithLabelValues(string(r.Operation), r.Status).Inc()
		}
	}
	m.outbox.Set(float64(a.box.Depth()))
	m.rejected.Set(float64(a.box.Rejected()))
	if !a.st.LastFetchOK.IsZero() {
		m.lastFetch.Set(float64(a.st.LastFetchOK.Unix()))
	}
	if !a.st.LastApply.IsZero() {
		m.lastApply.Set(float64(a.st.LastApply.Unix()))
	}
	m.info.Reset()
	m.info.WithLabelValues(version, a.st.LastCommit).Set(1)
	if a.lastStatus != nil {
		m.deckies.Reset()
		for _, rt := range a.lastStatus.Runtime {
			m.deckies.WithLabelValues(rt.State).Inc()
		}
	}
}

// health says whether the daemon is doing its job: a fetch succeeded
// recently (users of other tools complain that polling silently stops).
type health struct {
	a     *agent
	stale time.Duration
}

func (h health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	last := h.a.st.LastFetchOK
	switch {
	case last.IsZero():
		http.Error(w, "no successful fetch yet", http.StatusServiceUnavailable)
	case time.Since(last) > h.stale:
		http.Error(w, fmt.Sprintf("last successful fetch %s ago (more than %s)", time.Since(last).Round(time.Second), h.stale), http.StatusServiceUnavailable)
	default:
		fmt.Fprintf(w, "ok: last fetch %s ago\n", time.Since(last).Round(time.Second))
	}
}

// serveMetrics listens on addr for /metrics and /healthz until ctx ends.
// It refuses an address on the decoy LAN: nothing of the agent's may be
// visible to whoever probes the deckies.
func serveMetrics(ctx context.Context, addr string, decoy []netip.Addr, m *metrics, h http.Handler, log *slog.Logger) (func(), error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usageErr("--metrics %q: %v", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		return nil, usageErr("--metrics %q listens on every interface, the decoy LAN too; give a management address such as 127.0.0.1:9477", addr)
	}
	for _, d := range decoy {
		if a, err := netip.ParseAddr(host); err == nil && a == d {
			return nil, usageErr("--metrics %q is on the decoy LAN; give a management address", addr)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /healthz", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	log.Info("metrics and health on " + ln.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}
