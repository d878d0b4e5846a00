package apply

import (
	"fmt"
	"sort"
	"strings"

	"github.com/docker/compose/v2/pkg/api"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/reaper"
)

// DiffInput is everything the change set depends on.
type DiffInput struct {
	Owner    string
	Project  string // Compose project; foreign containers claiming its services are collisions
	Desired  []*DeckySpec
	Failed   map[string]error // desired deckies that could not be placed or rendered
	Observed []engine.Container
	// Quarantined reports whether a decky has used up its retry budget at
	// this desired hash; nil means never.
	Quarantined func(decky, hash string) bool
	// Applied maps each decky to the hash last applied and verified on
	// this worker; a difference at an applied hash is drift (repair).
	Applied map[string]string
	// Unverified reports whether a decky whose containers are exactly as
	// desired failed its last verification at this hash (steady state or
	// LAN check): it is checked again (Verify) instead of being taken as
	// unchanged, until it passes or is quarantined. nil means never.
	Unverified func(decky, hash string) bool
	// Drifted reports whether the identity check ([CheckIdentity]) found
	// a running decky seen wrongly from the LAN (no ARP answer, another
	// MAC, a port that stopped answering) and repairable: the whole decky
	// is recreated, base included (the MAC and address live in the base,
	// the services share its namespace): Action repair. It only turns a
	// decky whose containers are exactly as desired (unchanged) into a
	// repair; any other entry touches the decky already, and the next
	// identity check looks again. nil means never.
	Drifted func(decky string) bool
}

// Diff computes the change set (pure). Deckies whose desired state cannot
// be applied (Failed) keep whatever is running: bad input never destroys
// anything. Containers not owned by this agent are never planned for
// change; a desired container name they hold fails that decky.
func Diff(in DiffInput) ChangeSet {
	var cs ChangeSet
	owned := map[string][]engine.Container{}
	foreign := map[string]engine.Container{}
	for _, c := range in.Observed {
		switch {
		case c.Owner() == in.Owner && c.Decky() != "":
			owned[c.Decky()] = append(owned[c.Decky()], c)
		case c.Owner() != in.Owner:
			foreign[c.Name] = c
			// A foreign container labelled as one of our Compose services
			// (DECNET's own agent uses the same project) would be adopted
			// by Compose, and recreated or removed: treat it as a clash.
			// A decky is applied in the shared project (adopted from an
			// older agent) or its own, DeckyProject(Project, decky); the
			// service key is the container name, and the decky's name is
			// its prefix, so both are checked.
			if svc := c.Labels[api.ServiceLabel]; svc != "" && in.Project != "" && foreignProject(in.Project, c.Labels[api.ProjectLabel], svc) {
				foreign[svc] = c
			}
		}
	}
	want := map[string]bool{}
	for _, d := range in.Desired {
		want[d.Name] = true
		cs.Entries = append(cs.Entries, diffDecky(in, d, owned[d.Name], foreign))
	}
	for name, err := range in.Failed {
		want[name] = true
		e := Entry{Decky: name, Action: Failed, Operation: OpDeploy, Error: err.Error(), observed: owned[name]}
		if len(owned[name]) > 0 {
			e.Operation = OpMutate
		}
		cs.Entries = append(cs.Entries, e)
	}
	for name, cs2 := range reaper.Orphans(in.Observed, in.Owner, func(d string) bool { return want[d] }) {
		cs.Entries = append(cs.Entries, Entry{Decky: name, Action: Remove, Operation: OpTeardown, observed: cs2})
	}
	cs.sort()
	return cs
}

func diffDecky(in DiffInput, d *DeckySpec, observed []engine.Container, foreign map[string]engine.Container) Entry {
	e := Entry{
		Decky: d.Name, Hash: d.Hash, IP: d.IP, MAC: d.MAC,
		AddressReason: string(d.Address.Reason), AddressDetail: d.Address.Detail,
		spec: d, observed: observed,
	}
	for _, c := range d.Containers() {
		if f, taken := foreign[c.Name]; taken {
			e.Action, e.Error = Failed, fmt.Sprintf("container %s (%.12s), which this agent does not own, holds the name or Compose service %s; rename or remove it", f.Name, f.ID, c.Name)
			e.Operation = OpDeploy
			if len(observed) > 0 {
				e.Operation = OpMutate
			}
			return e
		}
	}
	if in.Quarantined != nil && in.Quarantined(d.Name, d.Hash) {
		e.Action = Quarantined
		return e
	}
	var base *engine.Container
	bySvc := map[string][]engine.Container{}
	for i, c := range observed {
		if c.Labels[engine.LabelRole] == engine.RoleBase && c.Name == d.Name {
			base = &observed[i]
			continue
		}
		svc := c.Labels[engine.LabelServiceName]
		bySvc[svc] = append(bySvc[svc], c)
	}
	// A stopped base lost its network namespace; a recreated one gets a new
	// one. Either way every service must be recreated into it.
	e.RecreateBase = base == nil || base.Labels[engine.LabelHash] != d.Base.Hash || base.State != "running"
	desiredSvc := map[string]bool{}
	for _, s := range d.Services {
		desiredSvc[s.Service] = true
		cs := bySvc[s.Service]
		switch {
		case e.RecreateBase:
			e.Services = append(e.Services, s.Service)
		case len(cs) != 1 || cs[0].Name != s.Name || cs[0].Labels[engine.LabelHash] != s.Hash:
			e.Services = append(e.Services, s.Service)
		case cs[0].State != "running":
			e.Start = append(e.Start, s.Name)
		}
	}
	for svc := range bySvc {
		if !desiredSvc[svc] {
			e.Drop = append(e.Drop, svc)
		}
	}
	sort.Strings(e.Drop)
	asDesired := !e.RecreateBase && len(e.Services) == 0 && len(e.Drop) == 0 && len(e.Start) == 0
	// Containers exactly as desired, yet seen wrongly from the LAN: the
	// MAC and address live in the base, the services share its namespace,
	// so the whole decky is recreated from its rendering.
	drifted := asDesired && in.Drifted != nil && in.Drifted(d.Name)
	if drifted {
		e.RecreateBase = true
		for _, s := range d.Services {
			e.Services = append(e.Services, s.Service)
		}
	}

	applied := in.Applied[d.Name]
	switch {
	case drifted:
		e.Action, e.Operation = Repair, OpRepair
	case asDesired:
		e.Action = Unchanged
		if in.Unverified != nil && applied != d.Hash && in.Unverified(d.Name, d.Hash) {
			// Running as desired, but never verified: a decoy that did not
			// answer on its declared port must not pass for converged.
			e.Action, e.Operation = Verify, OpDeploy
			if len(observed) > 0 && applied != "" {
				e.Operation = OpMutate
			}
		}
	case applied == d.Hash:
		// This exact state was applied and verified before: whatever differs
		// now was changed by hand, and is put back.
		e.Action, e.Operation = Repair, OpRepair
	case len(observed) == 0:
		e.Action, e.Operation = Create, OpDeploy
	default:
		e.Action, e.Operation = Update, OpMutate
	}
	return e
}

// foreignProject reports whether a Compose service svc of project p could
// be one of the fleet's: p is the shared project, or the own project of a
// decky whose name is svc or prefixes it (the service containers are named
// "<decky>-<service>").
func foreignProject(shared, p, svc string) bool {
	if p == shared {
		return true
	}
	decky, ok := strings.CutPrefix(p, shared+"_")
	return ok && (svc == decky || strings.HasPrefix(svc, decky+"-"))
}
