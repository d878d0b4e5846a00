package master

import (
	"net/http"
	"net/url"
)

// Page sizes of the status page: every table is one bounded query, with a
// link to the next page.
const (
	pageHosts    = 200
	pageDeckies  = 500
	pageFailures = 50
)

var pageTmpl = lazyTemplate("page", `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pull-agent master</title>
<meta http-equiv="refresh" content="10">`+consoleStyle+`</head><body>
<main>
<h1>pull-agent master</h1>
<section id="summary" aria-label="fleet summary">
<table><tr><th>workers fresh</th><th>stale</th><th>never seen</th><th>decommissioned</th>{{range $st, $n := .Summary.Deckies}}<th>deckies {{$st}}</th>{{end}}<th>deckies drifted</th><th>newest commit</th><th>workers on it</th></tr>
<tr><td class="num" id="sum-fresh">{{.Summary.Workers.Fresh}}</td><td class="num" id="sum-stale">{{.Summary.Workers.Stale}}</td><td class="num" id="sum-never">{{.Summary.Workers.NeverSeen}}</td><td class="num" id="sum-decommissioned">{{.Summary.Workers.Decommissioned}}</td>
{{range $st, $n := .Summary.Deckies}}<td class="num" id="sum-deckies-{{$st}}">{{$n}}</td>{{end}}
<td class="num{{if .Summary.Drifted}} failed{{end}}" id="sum-drifted" title="deckies whose latest event is a drift the agent did not repair">{{.Summary.Drifted}}</td>
<td>{{short .Summary.NewestCommit}}</td><td class="num" id="sum-applied">{{.Summary.Applied}}</td></tr></table>
</section>
<h2>Rollouts</h2>
<table id="rollouts"><tr><th>commit</th><th>first seen</th><th>applied</th><th>failed</th><th>moved on</th><th>behind</th><th>stale</th><th>time to apply p50 / p95</th><th>progress</th><th>behind, and why</th></tr>
{{range .Rollouts}}<tr><td>{{short .Commit}}</td><td>{{.FirstSeen}}</td><td class="applied">{{.Applied}}</td><td class="failed-count">{{.Failed}}</td><td class="moved-on" title="on a later commit, or applied this one before">{{.MovedOn}}</td><td><span class="behind">{{.Behind}}</span>{{if .Behind}} <small>(<span class="applying">{{.Applying}}</span> applying, {{.BehindSuspended}} suspended, {{.BehindPassError}} with a pass error)</small>{{end}}</td><td class="stale-count">{{.Stale}}</td><td>{{secs .P50Seconds}} / {{secs .P95Seconds}}</td>
<td>{{chart .Progress $.Total}}</td><td class="behind-why">{{range .BehindHosts}}<a href="/hosts/{{esc .Host}}">{{.Host}}</a> on {{short .Commit}}{{if .Suspended}} <strong>(suspended)</strong>{{else if eq .State "applying" "not fetched since"}} ({{.State}}){{end}}{{with .PassError}}: {{clip .}}{{end}}<br>{{end}}{{if .BehindMore}}<a class="behind-more" href="/rollouts/{{esc .Commit}}/behind">and {{.BehindMore}} more →</a>{{end}}</td></tr>
{{else}}<tr><td colspan="10">no commit reported yet</td></tr>{{end}}
</table>
<h2>Hosts</h2>
<table id="hosts"><tr><th>host</th><th>freshness</th><th>commit</th><th>agent</th><th>outbox</th><th>events</th><th>missing seqs</th><th>seq conflicts</th><th>pass error</th></tr>
{{range .Hosts}}<tr class="{{if .Stale}}stale{{else}}fresh{{end}}"><td><a href="/hosts/{{esc .Host}}">{{.Host}}</a></td><td>{{if .Stale}}stale{{else}}fresh{{end}} ({{ago .AgeSeconds}} ago)</td><td>{{short .Commit}}</td><td>{{.AgentVersion}}</td><td>{{.OutboxDepth}}</td><td>{{.Events}}</td><td>{{.MissingSeqs}}</td><td{{if .SeqConflicts}} class="conflict"{{end}}>{{.SeqConflicts}}</td><td>{{.PassError}}</td></tr>
{{else}}<tr><td colspan="9">no host has reported yet</td></tr>{{end}}
</table>
{{with .HostsNext}}<p><a id="hosts-next" href="{{.}}">more hosts</a></p>{{end}}
<h2>Deckies</h2>
<table id="deckies"><tr><th>host</th><th>decky</th><th>address</th><th>state</th><th>services</th><th>error</th></tr>
{{range .Deckies}}<tr class="{{.State}}"><td><a href="/hosts/{{esc .Host}}">{{.Host}}</a></td><td><a href="/hosts/{{esc .Host}}/deckies/{{esc .Decky}}">{{.Decky}}</a></td><td>{{.IP}}</td><td>{{.State}}</td><td>{{.Services}}</td><td><pre>{{.Error}}</pre></td></tr>
{{else}}<tr><td colspan="6">no deckies</td></tr>{{end}}
</table>
{{with .DeckiesNext}}<p><a id="deckies-next" href="{{.}}">more deckies</a></p>{{end}}
<h2>Recent failures</h2>
<table id="failures"><tr><th>when</th><th>host</th><th>decky</th><th>operation</th><th>commit</th><th>error</th></tr>
{{range .Failures}}<tr class="failed"><td>{{.CompletedAt}}</td><td><a href="/hosts/{{esc .Host}}?status=failed">{{.Host}}</a></td><td><a href="/hosts/{{esc .Host}}/deckies/{{esc .DeckyName}}">{{.DeckyName}}</a></td><td>{{.Operation}}</td><td>{{short .Commit}}</td><td><pre>{{.Error}}</pre></td></tr>
{{else}}<tr><td colspan="6">no failures</td></tr>{{end}}
</table>
{{with .FailuresNext}}<p><a id="failures-next" href="{{.}}">older failures</a></p>{{end}}
</main></body></html>
`)

// page renders the status page: one page of hosts, one of deckies, and
// the newest failures across all hosts. Each table pages on its own
// (?hosts=, ?deckies=, ?failures= carry the cursors).
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	sum, err := s.store.Summary(ctx, s.now(), s.opt.StaleAfter)
	if err != nil {
		writeQueryError(w, err)
		return
	}
	rollouts, err := s.store.Rollouts(ctx, s.now(), s.opt.StaleAfter, 5)
	if err != nil {
		writeQueryError(w, err)
		return
	}
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
	_ = pageTmpl().Execute(w, map[string]any{
		"Summary": sum, "Rollouts": rollouts, "Total": sum.Workers.Fresh + sum.Workers.Stale,
		"Hosts": hosts, "HostsNext": link("hosts", hostsNext),
		"Deckies": deckies, "DeckiesNext": link("deckies", deckiesNext),
		"Failures": fails, "FailuresNext": link("failures", failsNext),
	})
}
