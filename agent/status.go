package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// baseHeartbeat is the heartbeat without the runtime picture.
func (a *Agent) baseHeartbeat(passErr error) report.Heartbeat {
	hb := report.Heartbeat{
		HostUUID: a.cfg.Host, Host: a.cfg.Host, AgentVersion: a.cfg.Version,
		Commit: a.st.LastCommit, Remote: a.st.LastRemote,
		LastFetchOK: a.st.LastFetchOK, LastApply: a.st.LastApply, GeneratedAt: a.now().UTC(),
		Verified: a.signer, Suspended: a.suspended,
	}
	if a.hostUUID != "" {
		hb.HostUUID = a.hostUUID
	}
	if passErr != nil {
		hb.PassError = fleetsync.RedactText(passErr.Error())
	}
	return hb
}

// heartbeat builds the current state report from what runs now: the
// containers the pass listed last, or a fresh listing.
func (a *Agent) heartbeat(ctx context.Context, p *pass, passErr error) report.Heartbeat {
	hb := a.baseHeartbeat(passErr)
	cs := p.res.Containers
	if cs == nil {
		var err error
		if cs, err = a.d.Engine.ListContainers(ctx); err != nil {
			if prev, ok := a.d.Outbox.Heartbeat(); ok {
				hb.Status = prev.Status // keep the last known picture rather than none
			}
			return hb
		}
	}
	st := runtimeStatus(cs, a.cfg.Host, p.host, a.st)
	a.lastStatus = &st
	hb.Status = st
	return hb
}

// deliver sends the outbox with the heartbeat, within the report deadline;
// undelivered events stay queued for the next pass. persist stores the
// heartbeat too (after passes that changed the picture), so a restarted
// agent has one to send before its first full pass, and `status` shows it.
func (a *Agent) deliver(ctx context.Context, hb report.Heartbeat, persist bool) {
	hb.OutboxDepth, hb.OutboxRejects = a.d.Outbox.Depth(), a.d.Outbox.Rejected()
	if persist {
		if err := a.d.Outbox.SetHeartbeat(hb); err != nil {
			a.log.ErrorContext(ctx, "cannot store heartbeat", "err", err)
		}
	}
	if a.d.Reporter == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ReportTimeout)
	defer cancel()
	n, err := a.d.Reporter.Flush(ctx, hb)
	if err != nil {
		a.log.WarnContext(ctx, "reports not delivered; kept in the outbox for the next pass", "delivered", n, "pending", a.d.Outbox.Depth(), "err", err)
		return
	}
	a.log.DebugContext(ctx, "reports delivered", "events", n)
}

// runtimeStatus derives every decky's state from the containers' labels,
// base container included (DECNET ignored it, bug §6).
func runtimeStatus(cs []engine.Container, owner string, host *desired.Host, st *state.State) report.Status {
	out := report.Status{Runtime: map[string]report.Runtime{}}
	seen := map[string]*report.Runtime{}
	for _, c := range cs {
		if c.Owner() != owner || c.Decky() == "" {
			continue
		}
		rt := seen[c.Decky()]
		if rt == nil {
			rt = &report.Runtime{Services: map[string]string{}}
			seen[c.Decky()] = rt
		}
		if c.Labels[engine.LabelRole] == engine.RoleBase {
			rt.Base = c.State
		} else {
			rt.Services[c.Labels[engine.LabelServiceName]] = c.State
		}
	}
	wantSvcs := map[string][]string{}
	if host != nil {
		for _, d := range host.Deckies {
			wantSvcs[d.Name] = d.Services
			ds := report.DeckyStatus{Name: d.Name, Services: slices.Sorted(slices.Values(d.Services)), Hostname: d.Hostname,
				Archetype: d.Archetype, NmapOS: d.NmapOS, Distro: d.Distro, ConfigHash: st.Applied[d.Name]}
			if addr, ok := st.Addresses[d.Name]; ok {
				ds.IP, ds.MAC = addr.IP.String(), addr.MAC
			}
			out.Deckies = append(out.Deckies, ds)
		}
	}
	names := map[string]bool{}
	for n := range wantSvcs {
		names[n] = true
	}
	for n := range seen {
		names[n] = true
	}
	for n := range names {
		rt := report.Runtime{Services: map[string]string{}}
		o := seen[n]
		if o != nil {
			rt.Base = o.Base
			for s, v := range o.Services {
				rt.Services[s] = v
			}
		}
		for _, s := range wantSvcs[n] {
			if _, ok := rt.Services[s]; !ok {
				rt.Services[s] = "absent"
			}
		}
		running, total := 0, 1
		if rt.Base == "running" {
			running++
		}
		for _, v := range rt.Services {
			total++
			if v == "running" {
				running++
			}
		}
		switch {
		case o == nil:
			rt.State = "absent"
		case running == total:
			rt.State, rt.Running = "running", true
		case running == 0:
			rt.State = "failed"
		default:
			rt.State = "degraded"
		}
		rt.State, rt.Error = deckyState(rt.State, st.Failures[n])
		out.Runtime[n] = rt
	}
	out.Deployed = len(out.Runtime) > 0
	return out
}

// deckyState overlays a decky's failure record on its runtime state: the
// one place a status shows "quarantined".
func deckyState(runtime string, f state.Failure) (string, string) {
	if f.Quarantined {
		return StatusQuarantined, f.Error
	}
	return runtime, f.Error
}

// StatusView is what `pull-agent status` shows: the state directory only,
// no network, no Engine; it works while a daemon holds the lock.
type StatusView struct {
	Host           string               `json:"host"`
	Commit         string               `json:"commit"`
	Remote         string               `json:"remote"`
	Verified       string               `json:"verified,omitempty"`
	Suspended      bool                 `json:"suspended,omitempty"`
	Delivery       string               `json:"delivery,omitempty"`
	LastFetchOK    time.Time            `json:"last_fetch_ok"`
	LastApply      time.Time            `json:"last_apply"`
	LastClean      bool                 `json:"converged"`
	PassError      string               `json:"pass_error,omitempty"`
	OutboxDepth    int                  `json:"outbox_depth"`
	OutboxRejected int                  `json:"outbox_rejected"`
	Deckies        map[string]DeckyView `json:"deckies"`
}

// DeckyView is one decky in a [StatusView].
type DeckyView struct {
	IP       string `json:"ip,omitempty"`
	MAC      string `json:"mac,omitempty"`
	State    string `json:"state,omitempty"`
	Failures int    `json:"failures,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ReadStatus reads the status of host's agent from its state directory.
func ReadStatus(stateDir, host string) (StatusView, error) {
	st, err := state.Load(stateDir, host)
	if err != nil {
		return StatusView{}, err
	}
	// Reading never creates: a state directory without an outbox (none
	// yet, or emptied by a decommission) stays as it is.
	var (
		hb              report.Heartbeat
		delivery        string
		depth, rejected int
		outboxDir       = filepath.Join(stateDir, "outbox")
	)
	if _, err := os.Stat(outboxDir); err == nil {
		box, err := report.OpenOutbox(outboxDir, host)
		if err != nil {
			return StatusView{}, err
		}
		hb, _ = box.Heartbeat()
		if d, ok := box.Delivery(); ok {
			delivery = d.String()
		}
		depth, rejected = box.Depth(), box.Rejected()
	}
	_, err = os.Stat(filepath.Join(stateDir, SuspendFile))
	suspendFile := err == nil
	out := StatusView{Suspended: hb.Suspended || suspendFile, Delivery: delivery,
		Host: host, Commit: st.LastCommit, Remote: st.LastRemote, Verified: st.Verified, LastFetchOK: st.LastFetchOK, LastApply: st.LastApply,
		LastClean: st.LastClean, PassError: hb.PassError, OutboxDepth: depth, OutboxRejected: rejected,
		Deckies: map[string]DeckyView{},
	}
	for name, a := range st.Addresses {
		out.Deckies[name] = DeckyView{IP: a.IP.String(), MAC: a.MAC}
	}
	for name, rt := range hb.Status.Runtime {
		d := out.Deckies[name]
		d.State = rt.State
		out.Deckies[name] = d
	}
	for name, f := range st.Failures {
		d := out.Deckies[name]
		d.Failures = f.Count
		d.State, d.Error = deckyState(d.State, f)
		out.Deckies[name] = d
	}
	return out, nil
}

// WriteJSON prints the view as indented JSON.
func (v StatusView) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteText prints the view for a person, ages relative to now.
func (v StatusView) WriteText(w io.Writer, now time.Time) error {
	age := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), now.Sub(t).Round(time.Second))
	}
	fmt.Fprintf(w, "host:            %s\ncommit:          %s\nremote:          %s\nlast fetch ok:   %s\nlast apply:      %s\nconverged:       %v\n",
		v.Host, Short(v.Commit), v.Remote, age(v.LastFetchOK), age(v.LastApply), v.LastClean)
	if v.Suspended {
		fmt.Fprintf(w, "suspended:       yes (nothing is applied; pull-agent resume)\n")
	}
	if v.Delivery != "" {
		fmt.Fprintf(w, "delivery:        %s\n", v.Delivery)
	}
	if v.Verified != "" {
		fmt.Fprintf(w, "verified:        %s\n", v.Verified)
	}
	if v.PassError != "" {
		fmt.Fprintf(w, "last pass error: %s\n", v.PassError)
	}
	fmt.Fprintf(w, "report outbox:   %d waiting, %d rejected by the master\n\n", v.OutboxDepth, v.OutboxRejected)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DECKY\tADDRESS\tMAC\tSTATE\tFAILURES\tERROR")
	for _, n := range SortedKeys(v.Deckies) {
		d := v.Deckies[n]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", n, d.IP, d.MAC, d.State, d.Failures, firstLine(d.Error))
	}
	return tw.Flush()
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i] + " ..."
		}
	}
	return s
}

// WriteSummary prints one line about the pass and one per decky that did
// not succeed.
func (res *Result) WriteSummary(w io.Writer) {
	c := res.Changes.Count()
	ok, bad := 0, 0
	for _, r := range res.Results {
		if r.Status == apply.Succeeded {
			ok++
		} else {
			bad++
		}
	}
	fmt.Fprintf(w, "commit %s: %d applied, %d failed, %d unchanged, %d quarantined, %d not applicable, %d abandoned\n",
		Short(res.Commit), ok, bad-len(res.Abandoned), c[apply.Unchanged], c[apply.Quarantined], c[apply.Failed], len(res.Abandoned))
	for _, e := range res.Events {
		if e.Status != apply.Succeeded {
			fmt.Fprintf(w, "  %s %s %s: %s\n", e.DeckyName, e.Operation, e.Status, e.Error)
		}
	}
}
