package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
)

// cmdStatus prints what the agent last did, from the state directory
// only: it needs neither the network nor Docker, and works while a daemon
// holds the state directory's lock.
func cmdStatus(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		host, stateDir string
		asJSON         bool
	)
	f := newFlags("status", "status [flags]", stderr)
	f.String(&host, "host", defaultHost(), "this worker's name")
	f.String(&stateDir, "state-dir", "/var/lib/pull-agent", "the agent's state directory")
	f.Bool(&asJSON, "json", false, "print JSON")
	if err := f.Parse(args); err != nil {
		return err
	}
	st, err := state.Load(stateDir, host)
	if err != nil {
		return err
	}
	box, err := report.OpenOutbox(filepath.Join(stateDir, "outbox"), host)
	if err != nil {
		return err
	}
	hb, _ := box.Heartbeat()
	out := statusView{
		Host: host, Commit: st.LastCommit, Remote: st.LastRemote, LastFetchOK: st.LastFetchOK, LastApply: st.LastApply,
		LastClean: st.LastClean, PassError: hb.PassError, OutboxDepth: box.Depth(), OutboxRejected: box.Rejected(),
		Deckies: map[string]deckyView{},
	}
	for name, a := range st.Addresses {
		out.Deckies[name] = deckyView{IP: a.IP.String(), MAC: a.MAC}
	}
	for name, rt := range hb.Status.Runtime {
		d := out.Deckies[name]
		d.State = rt.State
		out.Deckies[name] = d
	}
	for name, f := range st.Failures {
		d := out.Deckies[name]
		d.Failures, d.Error = f.Count, f.Error
		if f.Reported {
			d.State = "quarantined"
		}
		out.Deckies[name] = d
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	age := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%s (%s ago)", t.Format(time.RFC3339), time.Since(t).Round(time.Second))
	}
	fmt.Fprintf(stdout, "host:            %s\ncommit:          %s\nremote:          %s\nlast fetch ok:   %s\nlast apply:      %s\nconverged:       %v\n",
		host, short(out.Commit), out.Remote, age(out.LastFetchOK), age(out.LastApply), out.LastClean)
	if out.PassError != "" {
		fmt.Fprintf(stdout, "last pass error: %s\n", out.PassError)
	}
	fmt.Fprintf(stdout, "report outbox:   %d waiting, %d rejected by the master\n\n", out.OutboxDepth, out.OutboxRejected)
	names := make([]string, 0, len(out.Deckies))
	for n := range out.Deckies {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DECKY\tADDRESS\tMAC\tSTATE\tFAILURES\tERROR")
	for _, n := range names {
		d := out.Deckies[n]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", n, d.IP, d.MAC, d.State, d.Failures, firstLine(d.Error))
	}
	return tw.Flush()
}

type statusView struct {
	Host           string               `json:"host"`
	Commit         string               `json:"commit"`
	Remote         string               `json:"remote"`
	LastFetchOK    time.Time            `json:"last_fetch_ok"`
	LastApply      time.Time            `json:"last_apply"`
	LastClean      bool                 `json:"converged"`
	PassError      string               `json:"pass_error,omitempty"`
	OutboxDepth    int                  `json:"outbox_depth"`
	OutboxRejected int                  `json:"outbox_rejected"`
	Deckies        map[string]deckyView `json:"deckies"`
}

type deckyView struct {
	IP       string `json:"ip,omitempty"`
	MAC      string `json:"mac,omitempty"`
	State    string `json:"state,omitempty"`
	Failures int    `json:"failures,omitempty"`
	Error    string `json:"error,omitempty"`
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i] + " ..."
		}
	}
	return s
}
