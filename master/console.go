package master

import (
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The fleet console: the summary and rollouts on the main page, a page per
// host and per decky, and the same views in the JSON API. Every list is
// one bounded, paginated query.

// Row limits of the console's pages (documented in report-protocol.md).
const (
	pageHostDeckies = 300
	pageHostEvents  = 100
	pageDeckyEvents = 100
	pageBehind      = 100
)

func (s *Server) routeConsole() {
	s.mux.HandleFunc("GET /api/v1/summary", s.reader(s.apiSummary))
	s.mux.HandleFunc("GET /api/v1/rollouts", s.reader(s.apiRollouts))
	s.mux.HandleFunc("GET /api/v1/hosts/{host}", s.reader(s.apiHost))
	s.mux.HandleFunc("GET /api/v1/deckies/{host}/{decky}/events", s.reader(s.apiDeckyEvents))
	s.mux.HandleFunc("GET /api/v1/rollouts/{commit}/behind", s.reader(s.apiBehind))
	s.mux.HandleFunc("GET /rollouts/{commit}/behind", s.reader(s.behindPage))
	s.mux.HandleFunc("GET /hosts/{host}", s.reader(s.hostPage))
	s.mux.HandleFunc("GET /hosts/{host}/deckies/{decky}", s.reader(s.deckyPage))
}

func (s *Server) apiSummary(w http.ResponseWriter, r *http.Request) {
	sum, err := s.store.Summary(r.Context(), s.now(), s.opt.StaleAfter)
	writeJSON(w, sum, err)
}

func (s *Server) apiRollouts(w http.ResponseWriter, r *http.Request) {
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	ro, err := s.store.Rollouts(r.Context(), s.now(), s.opt.StaleAfter, n)
	writeJSON(w, nonNil(ro), err)
}

// behind loads one page of the workers behind a commit (see [Rollout]).
func (s *Server) behind(r *http.Request, param string) ([]BehindHost, string, bool, error) {
	return s.store.BehindPage(r.Context(), s.now(), s.opt.StaleAfter, r.PathValue("commit"), r.URL.Query().Get(param), pageBehind)
}

func (s *Server) apiBehind(w http.ResponseWriter, r *http.Request) {
	rows, next, ok, err := s.behind(r, "after")
	if err == nil && !ok {
		errorf(w, http.StatusNotFound, "no report applied commit %q", r.PathValue("commit"))
		return
	}
	setNext(w, r, "after", next)
	writeJSON(w, nonNil(rows), err)
}

func (s *Server) behindPage(w http.ResponseWriter, r *http.Request) {
	rows, next, ok, err := s.behind(r, "after")
	if err != nil {
		writeQueryError(w, err)
		return
	}
	if !ok {
		errorf(w, http.StatusNotFound, "no report applied commit %q", r.PathValue("commit"))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = behindTmpl().Execute(w, map[string]any{"Commit": r.PathValue("commit"), "Rows": rows, "Next": nextLink(r, "after", next)})
}

// HostDetail is one host's page as JSON.
type HostDetail struct {
	Host HostRow `json:"host"`
	// Troubled lists its deckies that are not running, first (bounded).
	Troubled     []DeckyRow `json:"troubled"`
	TroubledNext string     `json:"troubled_next,omitempty"`
	// Drifted counts its deckies whose latest event is an unrepaired drift.
	Drifted     int        `json:"drifted"`
	Deckies     []DeckyRow `json:"deckies"`
	DeckiesNext string     `json:"deckies_next,omitempty"`
	Events      []EventRow `json:"events"` // newest first, filtered by decky, status, operation, since
	EventsNext  string     `json:"events_next,omitempty"`
}

// hostDetail loads a host with one page of deckies and of history; ok
// false (404) when the host never reported.
func (s *Server) hostDetail(r *http.Request) (d HostDetail, ok bool, err error) {
	ctx, q := r.Context(), r.URL.Query()
	host := r.PathValue("host")
	d.Host, ok, err = s.store.Host(ctx, s.now(), s.opt.StaleAfter, host)
	if err != nil || !ok {
		return d, ok, err
	}
	if d.Troubled, d.TroubledNext, err = s.store.DeckiesPage(ctx, DeckyQuery{Host: host, Troubled: true, After: q.Get("troubled"), Limit: pageHostDeckies}); err != nil {
		return d, true, err
	}
	if d.Drifted, err = s.store.Drifted(ctx, host); err != nil {
		return d, true, err
	}
	if d.Deckies, d.DeckiesNext, err = s.store.DeckiesPage(ctx, DeckyQuery{Host: host, After: q.Get("deckies"), Limit: pageHostDeckies}); err != nil {
		return d, true, err
	}
	f := EventFilter{Host: host, Decky: q.Get("decky"), Status: q.Get("status"), Operation: q.Get("operation"),
		Order: NewestFirst, After: q.Get("events"), Limit: pageHostEvents}
	if v := q.Get("since"); v != "" {
		if f.Since, err = time.Parse(time.RFC3339, v); err != nil {
			return d, true, fmt.Errorf("%w: since must be RFC 3339, e.g. 2026-11-27T10:00:00Z", ErrBadCursor)
		}
	}
	d.Events, d.EventsNext, err = s.store.EventsPage(ctx, f)
	return d, true, err
}

func (s *Server) apiHost(w http.ResponseWriter, r *http.Request) {
	d, ok, err := s.hostDetail(r)
	if err == nil && !ok {
		errorf(w, http.StatusNotFound, "host %q has never reported", r.PathValue("host"))
		return
	}
	d.Deckies, d.Events, d.Troubled = nonNil(d.Deckies), nonNil(d.Events), nonNil(d.Troubled)
	writeJSON(w, d, err)
}

func (s *Server) deckyEvents(r *http.Request) ([]EventRow, string, error) {
	return s.store.EventsPage(r.Context(), EventFilter{Host: r.PathValue("host"), Decky: r.PathValue("decky"),
		Order: NewestFirst, After: r.URL.Query().Get("after"), Limit: pageDeckyEvents})
}

func (s *Server) apiDeckyEvents(w http.ResponseWriter, r *http.Request) {
	rows, next, err := s.deckyEvents(r)
	setNext(w, r, "after", next)
	writeJSON(w, nonNil(rows), err)
}

var consoleFuncs = template.FuncMap{
	"ago": func(sec float64) string { return (time.Duration(sec) * time.Second).String() },
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12]
		}
		return s
	},
	"secs": func(s float64) string {
		return (time.Duration(s*float64(time.Second)) / time.Second * time.Second).String()
	},
	"firstLine": func(s string) string {
		line, _, _ := strings.Cut(s, "\n")
		return line
	},
	"esc": url.PathEscape,
	// clip keeps a pass error's first line, at most 160 bytes, for a cell
	// that lists many workers.
	"clip": func(s string) string {
		line, _, more := strings.Cut(s, "\n")
		if len(line) > 160 {
			line, more = strings.ToValidUTF8(line[:160], ""), true
		}
		if more {
			line += " …"
		}
		return line
	},
	// chart draws a rollout's progress as an inline SVG polyline: no
	// external assets, the master works air-gapped.
	"chart": func(pts []RolloutPoint, total int) template.HTML {
		if len(pts) == 0 || total == 0 {
			return ""
		}
		const w, h = 160.0, 32.0
		var b strings.Builder
		for i, p := range pts {
			x := w * float64(i) / float64(max(len(pts)-1, 1))
			y := h - h*float64(p.Workers)/float64(total)
			fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
		}
		last := pts[len(pts)-1].Workers
		return template.HTML(fmt.Sprintf(`<svg width="%.0f" height="%.0f" role="img" aria-label="%d of %d workers over time"><polyline fill="none" stroke="#2a7" stroke-width="2" points="%s"/></svg>`,
			w, h, last, total, strings.TrimSpace(b.String())))
	},
}

const consoleStyle = `<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.stale,.failed,.degraded,.quarantined,.conflict{background:#fde2e1}.fresh,.running,.succeeded{background:#e3f6e5}
pre{margin:0;white-space:pre-wrap;max-width:60em}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}
.num{font-size:1.4em;font-weight:bold}nav a{margin-right:1em}.behind-why{min-width:20em}
</style>`

var hostTmpl = lazyTemplate("host", `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Host.Host}} · pull-agent master</title>`+consoleStyle+`</head><body>
<nav><a href="/">fleet</a></nav>
<main>
<h1>{{.Host.Host}}</h1>
<dl id="host">
<dt>freshness</dt><dd class="{{if .Host.Stale}}stale{{else}}fresh{{end}}">{{if .Host.Stale}}stale{{else}}fresh{{end}} (last heartbeat {{ago .Host.AgeSeconds}} ago)</dd>
<dt>commit</dt><dd>{{.Host.Commit}}{{if .Host.Suspended}} <strong>(suspended: applies nothing)</strong>{{end}}{{if .Host.Decommissioned}} <strong id="decommissioned">(decommissioned: removed everything it owned and stopped)</strong>{{end}}</dd>
<dt>signed by</dt><dd>{{.Host.Verified}}</dd>
<dt>agent</dt><dd>{{.Host.AgentVersion}}</dd>
<dt>outbox</dt><dd>{{.Host.OutboxDepth}} queued, {{.Host.OutboxRejected}} set aside</dd>
<dt>events</dt><dd>{{.Host.Events}} recorded, {{.Host.MissingSeqs}} missing seqs, {{.Host.SeqConflicts}} seq conflicts</dd>
<dt>last pass error</dt><dd><pre>{{.Host.PassError}}</pre></dd>
<dt>drifted</dt><dd id="host-drifted"{{if .Drifted}} class="failed"{{end}}><span class="num">{{.Drifted}}</span> {{if .Drifted}}<a href="?operation=drift&amp;status=failed">deckies whose latest event is an unrepaired drift</a>{{else}}deckies with an unrepaired drift{{end}}</dd>
</dl>
{{with .Troubled}}<h2>Deckies not running</h2>
<table id="troubled"><tr><th>decky</th><th>address</th><th>MAC</th><th>state</th><th>services</th><th>error</th></tr>
{{range .}}<tr class="{{.State}}"><td><a href="/hosts/{{esc .Host}}/deckies/{{esc .Decky}}">{{.Decky}}</a></td><td>{{.IP}}</td><td>{{.MAC}}</td><td>{{.State}}</td><td>{{.Services}}</td><td><pre>{{.Error}}</pre></td></tr>
{{end}}</table>{{end}}
{{with .TroubledNext}}<p><a href="{{.}}">more deckies not running</a></p>{{end}}
<h2>Deckies</h2>
<table id="deckies"><tr><th>decky</th><th>address</th><th>MAC</th><th>state</th><th>services</th><th>error</th></tr>
{{range .Deckies}}<tr class="{{.State}}"><td><a href="/hosts/{{esc .Host}}/deckies/{{esc .Decky}}">{{.Decky}}</a></td><td>{{.IP}}</td><td>{{.MAC}}</td><td>{{.State}}</td><td>{{.Services}}</td><td><pre>{{.Error}}</pre></td></tr>
{{else}}<tr><td colspan="6">no deckies</td></tr>{{end}}
</table>
{{with .DeckiesNext}}<p><a href="{{.}}">more deckies</a></p>{{end}}
<h2>Lifecycle history</h2>
<form method="get" aria-label="filter the history">
<label>decky <input name="decky" value="{{.Filter.Decky}}" size="12"></label>
<label>status <select name="status">{{range .Statuses}}<option{{if eq . $.Filter.Status}} selected{{end}}>{{.}}</option>{{end}}</select></label>
<label>operation <select name="operation">{{range .Operations}}<option{{if eq . $.Filter.Operation}} selected{{end}}>{{.}}</option>{{end}}</select></label>
<label>since <input name="since" value="{{.Filter.Since}}" placeholder="2026-11-27T10:00:00Z" size="22"></label>
<button>filter</button></form>
<table id="events"><tr><th>completed</th><th>seq</th><th>decky</th><th>operation</th><th>status</th><th>commit</th><th>note / error</th></tr>
{{range .Events}}<tr class="{{.Status}}"><td>{{.CompletedAt}}</td><td>{{.Seq}}</td><td><a href="/hosts/{{esc .Host}}/deckies/{{esc .DeckyName}}">{{.DeckyName}}</a></td><td>{{.Operation}}</td><td>{{.Status}}</td><td>{{short .Commit}}</td><td>{{.Note}}{{if .Error}}<details><summary>{{firstLine .Error}}</summary><pre>{{.Error}}</pre></details>{{end}}</td></tr>
{{else}}<tr><td colspan="7">no events</td></tr>{{end}}
</table>
{{with .EventsNext}}<p><a href="{{.}}">older events</a></p>{{end}}
</main></body></html>
`)

var deckyTmpl = lazyTemplate("decky", `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Decky}} on {{.Host}} · pull-agent master</title>`+consoleStyle+`</head><body>
<nav><a href="/">fleet</a><a href="/hosts/{{esc .Host}}">{{.Host}}</a></nav>
<main>
<h1>{{.Decky}} <small>on {{.Host}}</small></h1>
<table id="events"><tr><th>completed</th><th>seq</th><th>operation</th><th>status</th><th>commit</th><th>config</th><th>note / error</th></tr>
{{range .Events}}<tr class="{{.Status}}"><td>{{.CompletedAt}}</td><td>{{.Seq}}</td><td>{{.Operation}}</td><td>{{.Status}}</td><td>{{short .Commit}}</td><td>{{short .ConfigHash}}</td><td>{{.Note}}{{if .Error}}<details><summary>{{firstLine .Error}}</summary><pre>{{.Error}}</pre></details>{{end}}</td></tr>
{{else}}<tr><td colspan="7">no events</td></tr>{{end}}
</table>
{{with .Next}}<p><a href="{{.}}">older events</a></p>{{end}}
</main></body></html>
`)

var behindTmpl = lazyTemplate("behind", `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>behind {{short .Commit}} · pull-agent master</title>`+consoleStyle+`</head><body>
<nav><a href="/">fleet</a></nav>
<main>
<h1>Workers behind {{short .Commit}}</h1>
<p>Fresh workers on an older commit (or none) that never applied <code>{{.Commit}}</code>, by name.</p>
<table id="behind"><tr><th>host</th><th>on commit</th><th>state</th><th>last pass error</th></tr>
{{range .Rows}}<tr><td><a href="/hosts/{{esc .Host}}">{{.Host}}</a></td><td>{{short .Commit}}</td><td>{{if .Suspended}}<strong>suspended</strong>{{else}}{{.State}}{{end}}</td><td>{{if .PassError}}<details><summary>{{firstLine .PassError}}</summary><pre>{{.PassError}}</pre></details>{{end}}</td></tr>
{{else}}<tr><td colspan="4">no worker is behind</td></tr>{{end}}
</table>
{{with .Next}}<p><a id="behind-next" href="{{.}}">more workers</a></p>{{end}}
</main></body></html>
`)

// nextLink is the current URL with param set to next ("" when none).
func nextLink(r *http.Request, param, next string) string {
	if next == "" {
		return ""
	}
	q := r.URL.Query()
	q.Set(param, next)
	return r.URL.Path + "?" + q.Encode()
}

func (s *Server) hostPage(w http.ResponseWriter, r *http.Request) {
	d, ok, err := s.hostDetail(r)
	if err != nil {
		writeQueryError(w, err)
		return
	}
	if !ok {
		errorf(w, http.StatusNotFound, "host %q has never reported", r.PathValue("host"))
		return
	}
	q := r.URL.Query()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = hostTmpl().Execute(w, map[string]any{
		"Host": d.Host, "Troubled": d.Troubled, "TroubledNext": nextLink(r, "troubled", d.TroubledNext), "Drifted": d.Drifted, "Deckies": d.Deckies, "DeckiesNext": nextLink(r, "deckies", d.DeckiesNext),
		"Events": d.Events, "EventsNext": nextLink(r, "events", d.EventsNext),
		"Filter":     map[string]string{"Decky": q.Get("decky"), "Status": q.Get("status"), "Operation": q.Get("operation"), "Since": q.Get("since")},
		"Statuses":   []string{"", "succeeded", "failed", "quarantined", "running"},
		"Operations": []string{"", "deploy", "mutate", "teardown", "repair", "drift"},
	})
}

func (s *Server) deckyPage(w http.ResponseWriter, r *http.Request) {
	rows, next, err := s.deckyEvents(r)
	if err != nil {
		writeQueryError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = deckyTmpl().Execute(w, map[string]any{"Host": r.PathValue("host"), "Decky": r.PathValue("decky"),
		"Events": rows, "Next": nextLink(r, "after", next)})
}

// lazyTemplate parses a console page on first use (see lazyRE).
func lazyTemplate(name, text string) func() *template.Template {
	return sync.OnceValue(func() *template.Template {
		return template.Must(template.New(name).Funcs(consoleFuncs).Parse(text))
	})
}
