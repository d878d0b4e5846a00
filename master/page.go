package master

import (
	"html/template"
	"net/http"
	"net/url"
	"time"
)

// Page sizes of the status page: every table is one bounded query, with a
// link to the next page.
const (
	pageHosts    = 200
	pageDeckies  = 500
	pageFailures = 50
)

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago": func(sec float64) string { return (time.Duration(sec) * time.Second).String() },
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12]
		}
		return s
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pull-agent master</title>
<meta http-equiv="refresh" content="10">
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.stale,.failed,.degraded,.quarantined,.conflict{background:#fde2e1}.fresh,.running,.succeeded{background:#e3f6e5}
pre{margin:0;white-space:pre-wrap;max-width:60em}
</style></head><body>
<h1>pull-agent master</h1>
<h2>Hosts</h2>
<table id="hosts"><tr><th>host</th><th>freshness</th><th>commit</th><th>agent</th><th>outbox</th><th>events</th><th>missing seqs</th><th>seq conflicts</th><th>pass error</th></tr>
{{range .Hosts}}<tr class="{{if .Stale}}stale{{else}}fresh{{end}}"><td>{{.Host}}</td><td>{{if .Stale}}stale{{else}}fresh{{end}} ({{ago .AgeSeconds}} ago)</td><td>{{short .Commit}}</td><td>{{.AgentVersion}}</td><td>{{.OutboxDepth}}</td><td>{{.Events}}</td><td>{{.MissingSeqs}}</td><td{{if .SeqConflicts}} class="conflict"{{end}}>{{.SeqConflicts}}</td><td>{{.PassError}}</td></tr>
{{else}}<tr><td colspan="9">no host has reported yet</td></tr>{{end}}
</table>
{{with .HostsNext}}<p><a id="hosts-next" href="{{.}}">more hosts</a></p>{{end}}
<h2>Deckies</h2>
<table id="deckies"><tr><th>host</th><th>decky</th><th>address</th><th>state</th><th>services</th><th>error</th></tr>
{{range .Deckies}}<tr class="{{.State}}"><td>{{.Host}}</td><td>{{.Decky}}</td><td>{{.IP}}</td><td>{{.State}}</td><td>{{.Services}}</td><td><pre>{{.Error}}</pre></td></tr>
{{else}}<tr><td colspan="6">no deckies</td></tr>{{end}}
</table>
{{with .DeckiesNext}}<p><a id="deckies-next" href="{{.}}">more deckies</a></p>{{end}}
<h2>Recent failures</h2>
<table id="failures"><tr><th>when</th><th>host</th><th>decky</th><th>operation</th><th>commit</th><th>error</th></tr>
{{range .Failures}}<tr class="failed"><td>{{.CompletedAt}}</td><td>{{.Host}}</td><td>{{.DeckyName}}</td><td>{{.Operation}}</td><td>{{short .Commit}}</td><td><pre>{{.Error}}</pre></td></tr>
{{else}}<tr><td colspan="6">no failures</td></tr>{{end}}
</table>
{{with .FailuresNext}}<p><a id="failures-next" href="{{.}}">older failures</a></p>{{end}}
</body></html>
`))

// page renders the status page: one page of hosts, one of deckies, and
// the newest failures across all hosts. Each table pages on its own
// (?hosts=, ?deckies=, ?failures= carry the cursors).
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	hosts, hostsNext, err := s.store.HostsPage(ctx, s.now(), s.opt.StaleAfter, HostQuery{After: q.Get("hosts"), Limit: pageHosts})
	if err != nil {
		writeQueryError(w, err)
		return
	}
	deckies, deckiesNext, err := s.store.DeckiesPage(ctx, DeckyQuery{After: q.Get("deckies"), Limit: pageDeckies})
	if err != nil {
		writeQueryError(w, err)
		return
	}
	fails, failsNext, err := s.store.EventsPage(ctx, EventFilter{Status: "failed", Order: NewestFirst, After: q.Get("failures"), Limit: pageFailures})
	if err != nil {
		writeQueryError(w, err)
		return
	}
	link := func(param, next string) string {
		if next == "" {
			return ""
		}
		v := url.Values{}
		for k := range q {
			v.Set(k, q.Get(k))
		}
		v.Set(param, next)
		return "/?" + v.Encode()
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = pageTmpl.Execute(w, map[string]any{
		"Hosts": hosts, "HostsNext": link("hosts", hostsNext),
		"Deckies": deckies, "DeckiesNext": link("deckies", deckiesNext),
		"Failures": fails, "FailuresNext": link("failures", failsNext),
	})
}
