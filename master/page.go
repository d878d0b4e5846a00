package master

import (
	"html/template"
	"net/http"
	"time"
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
table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.stale,.failed,.degraded,.quarantined{background:#fde2e1}.fresh,.running,.succeeded{background:#e3f6e5}
pre{margin:0;white-space:pre-wrap;max-width:60em}
</style></head><body>
<h1>pull-agent master</h1>
<h2>Hosts</h2>
<table id="hosts"><tr><th>host</th><th>freshness</th><th>commit</th><th>agent</th><th>outbox</th><th>events</th><th>missing seqs</th><th>pass error</th></tr>
{{range .Hosts}}<tr class="{{if .Stale}}stale{{else}}fresh{{end}}"><td>{{.Host}}</td><td>{{if .Stale}}stale{{else}}fresh{{end}} ({{ago .AgeSeconds}} ago)</td><td>{{short .Commit}}</td><td>{{.AgentVersion}}</td><td>{{.OutboxDepth}}</td><td>{{.Events}}</td><td>{{.MissingSeqs}}</td><td>{{.PassError}}</td></tr>
{{else}}<tr><td colspan="8">no host has reported yet</td></tr>{{end}}
</table>
<h2>Deckies</h2>
<table id="deckies"><tr><th>host</th><th>decky</th><th>address</th><th>state</th><th>services</th><th>error</th></tr>
{{range .Deckies}}<tr class="{{.State}}"><td>{{.Host}}</td><td>{{.Decky}}</td><td>{{.IP}}</td><td>{{.State}}</td><td>{{.Services}}</td><td><pre>{{.Error}}</pre></td></tr>
{{else}}<tr><td colspan="6">no deckies</td></tr>{{end}}
</table>
<h2>Recent failures</h2>
<table id="failures"><tr><th>when</th><th>host</th><th>decky</th><th>operation</th><th>commit</th><th>error</th></tr>
{{range .Failures}}<tr class="failed"><td>{{.CompletedAt}}</td><td>{{.Host}}</td><td>{{.DeckyName}}</td><td>{{.Operation}}</td><td>{{short .Commit}}</td><td><pre>{{.Error}}</pre></td></tr>
{{else}}<tr><td colspan="6">no failures</td></tr>{{end}}
</table>
</body></html>
`))

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	hosts, err := s.store.Hosts(ctx, s.now(), s.opt.StaleAfter)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	deckies, err := s.store.Deckies(ctx, "")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fails, err := s.store.Events(ctx, EventFilter{Status: "failed", Limit: 10000})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	// newest 50 failures first
	for i, j := 0, len(fails)-1; i < j; i, j = i+1, j-1 {
		fails[i], fails[j] = fails[j], fails[i]
	}
	if len(fails) > 50 {
		fails = fails[:50]
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = pageTmpl.Execute(w, map[string]any{"Hosts": hosts, "Deckies": deckies, "Failures": fails})
}
