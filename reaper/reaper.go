package reaper

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/decnet/pull-agent/engine"
)

// Remover stops and removes containers (engine.Docker).
type Remover interface {
	Remove(ctx context.Context, ids []string) error
}

// Orphans returns, per decky, the containers owned by owner whose decky is
// not kept. Containers of other owners are never returned, even when their
// decky name matches.
func Orphans(observed []engine.Container, owner string, keep func(decky string) bool) map[string][]engine.Container {
	out := map[string][]engine.Container{}
	for _, c := range observed {
		if c.Owner() != owner || c.Decky() == "" || keep(c.Decky()) {
			continue
		}
		out[c.Decky()] = append(out[c.Decky()], c)
	}
	return out
}

// RemoveDecky removes one decky's containers: services first, then the
// base. It returns only after every container is gone or has failed.
func RemoveDecky(ctx context.Context, r Remover, containers []engine.Container) error {
	var services, bases []string
	for _, c := range sorted(containers) {
		if c.Labels[engine.LabelRole] == engine.RoleBase {
			bases = append(bases, c.ID)
		} else {
			services = append(services, c.ID)
		}
	}
	if err := r.Remove(ctx, services); err != nil {
		return fmt.Errorf("failed to remove service containers: %w", err)
	}
	if err := r.Remove(ctx, bases); err != nil {
		return fmt.Errorf("failed to remove base container: %w", err)
	}
	return nil
}

func sorted(cs []engine.Container) []engine.Container {
	out := append([]engine.Container(nil), cs...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Cleaner is what decommissioning needs (engine.Docker).
type Cleaner interface {
	Remover
	ListContainers(ctx context.Context) ([]engine.Container, error)
	RemoveNetwork(ctx context.Context, name string) error
}

// All removes every container owned by owner (services before bases),
// then the named networks if owned. It is the agent's self-destruct: it
// reports every failure but keeps going, so one stuck container does not
// leave the rest of the worker behind.
func All(ctx context.Context, c Cleaner, owner string, networks []string) (removed int, err error) {
	list, err := c.ListContainers(ctx)
	if err != nil {
		return 0, err
	}
	byDecky := map[string][]engine.Container{}
	for _, ct := range list {
		if ct.Owner() == owner {
			byDecky[ct.Decky()] = append(byDecky[ct.Decky()], ct)
		}
	}
	names := make([]string, 0, len(byDecky))
	for d := range byDecky {
		names = append(names, d)
	}
	sort.Strings(names)
	var errs []error
	for _, d := range names {
		if e := RemoveDecky(ctx, c, byDecky[d]); e != nil {
			errs = append(errs, fmt.Errorf("decky %s: %w", d, e))
			continue
		}
		removed += len(byDecky[d])
	}
	for _, n := range networks {
		if e := c.RemoveNetwork(ctx, n); e != nil && !errors.Is(e, engine.ErrNotOwned) {
			errs = append(errs, e)
		}
	}
	return removed, errors.Join(errs...)
}
