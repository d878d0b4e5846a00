package apply

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/docker/compose/v2/pkg/api"

	"github.com/decnet/pull-agent/engine"
)

// Action is what a pass does to one decky.
type Action string

// Actions, as printed by `pull-agent plan`.
const (
	Create      Action = "create"      // no container exists yet
	Update      Action = "update"      // some containers must be recreated
	Repair      Action = "repair"      // containers were stopped or removed by hand
	Remove      Action = "remove"      // no longer desired on this host
	Verify      Action = "verify"      // as desired but not verified (last check failed): check again
	Unchanged   Action = "unchanged"   // nothing to do, nothing touched
	Quarantined Action = "quarantined" // failed too often at this revision; left alone
	Failed      Action = "failed"      // cannot be applied (bad address, name taken); left as it is
)

// Operation is DECNET's lifecycle operation name for a report.
type Operation string

// Lifecycle operations.
const (
	OpDeploy   Operation = "deploy"
	OpMutate   Operation = "mutate"
	OpTeardown Operation = "teardown"
	OpRepair   Operation = "repair"
)

// Entry is the change for one decky.
type Entry struct {
	Decky     string    `json:"decky"`
	Action    Action    `json:"action"`
	Operation Operation `json:"operation,omitempty"`
	// RecreateBase is set when the base container must be recreated; every
	// service container of the decky is then recreated too, since they live
	// in the base's network namespace.
	RecreateBase bool `json:"recreate_base,omitempty"`
	// Services are the catalog services whose containers are (re)created.
	Services []string `json:"services,omitempty"`
	// Drop are the services whose containers are removed from the decky.
	Drop []string `json:"drop,omitempty"`
	// Start are containers to start again (repair of stopped containers).
	Start []string `json:"start,omitempty"`

	Hash          string     `json:"config_hash,omitempty"`
	IP            netip.Addr `json:"ip,omitzero"`
	MAC           string     `json:"mac,omitempty"`
	AddressReason string     `json:"address_reason,omitempty"`
	AddressDetail string     `json:"address_detail,omitempty"`
	Error         string     `json:"error,omitempty"`

	spec     *DeckySpec
	observed []engine.Container
}

// composeProject returns the Compose project the entry's decky is applied
// under, given the fleet's project name, and whether the decky's running
// containers must be removed first to move it there.
//
// A decky with no containers, or already in its own project, uses
// [DeckyProject]. A decky whose containers carry another project label
// (agents before issue 15 put every decky in the one shared project)
// keeps that project: Compose finds a project's containers by that label,
// so under a new name it would not see them and would fail on their
// container names. That is what lets an agent upgrade leave every running
// decky alone (neither the label nor the project is hashed). Such a decky
// moves to its own project only when all its containers are replaced
// anyway (RecreateBase: the base, and with it every service), by removing
// them before Compose creates the new ones.
func (e Entry) composeProject(shared string) (project string, move bool) {
	own := DeckyProject(shared, e.Decky)
	cur := ""
	for _, c := range e.observed {
		p := c.Labels[api.ProjectLabel]
		if p == "" {
			continue
		}
		if cur == "" || c.Labels[engine.LabelRole] == engine.RoleBase {
			cur = p // the base's project wins: it is the one Compose must find
		}
	}
	switch {
	case cur == "" || cur == own:
		return own, false
	case e.RecreateBase:
		return own, true
	default:
		return cur, false
	}
}

// Changes reports whether applying the entry mutates anything.
func (e Entry) Changes() bool {
	switch e.Action {
	case Create, Update, Repair, Remove, Verify:
		return true
	}
	return false
}

// ChangeSet is the typed plan of one pass, sorted by decky name.
type ChangeSet struct {
	Entries []Entry `json:"deckies"`
}

// Changes reports whether any entry mutates anything.
func (cs ChangeSet) Changes() bool {
	for _, e := range cs.Entries {
		if e.Changes() {
			return true
		}
	}
	return false
}

// Count returns how many entries have each action.
func (cs ChangeSet) Count() map[Action]int {
	m := map[Action]int{}
	for _, e := range cs.Entries {
		m[e.Action]++
	}
	return m
}

func (cs *ChangeSet) sort() {
	sort.Slice(cs.Entries, func(i, j int) bool { return cs.Entries[i].Decky < cs.Entries[j].Decky })
}

// WriteJSON writes the change set as JSON (`plan --json`).
func (cs ChangeSet) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(cs)
}

// WriteTable writes the change set as an aligned table (`plan`).
func (cs ChangeSet) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DECKY\tACTION\tADDRESS\tWHY\tDETAIL")
	for _, e := range cs.Entries {
		addr := "-"
		if e.IP.IsValid() {
			addr = e.IP.String()
		}
		why := e.AddressReason
		if why == "" {
			why = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Decky, e.Action, addr, why, e.detail())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	c := cs.Count()
	verify := ""
	if c[Verify] > 0 {
		verify = fmt.Sprintf(", %d to verify again", c[Verify])
	}
	_, err := fmt.Fprintf(w, "\n%d to create, %d to update, %d to repair, %d to remove, %d unchanged, %d quarantined, %d failed%s\n",
		c[Create], c[Update], c[Repair], c[Remove], c[Unchanged], c[Quarantined], c[Failed], verify)
	return err
}

func (e Entry) detail() string {
	var parts []string
	if e.RecreateBase && e.Action != Create {
		parts = append(parts, "recreate base")
	}
	if len(e.Services) > 0 {
		parts = append(parts, "services: "+strings.Join(e.Services, ","))
	}
	if len(e.Drop) > 0 {
		parts = append(parts, "drop: "+strings.Join(e.Drop, ","))
	}
	if len(e.Start) > 0 {
		parts = append(parts, "start: "+strings.Join(e.Start, ","))
	}
	if e.AddressDetail != "" {
		parts = append(parts, e.AddressDetail)
	}
	if e.Error != "" {
		parts = append(parts, e.Error)
	}
	return strings.Join(parts, "; ")
}
