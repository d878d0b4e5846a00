package reaper

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/decnet/pull-agent/engine"
)

func c(id, name, owner, decky, role string) engine.Container {
	return engine.Container{ID: id, Name: name, Labels: map[string]string{engine.LabelOwner: owner, engine.LabelDecky: decky, engine.LabelRole: role}}
}

var observed = []engine.Container{
	c("1", "a", "w", "a", engine.RoleBase), c("2", "a-ssh", "w", "a", engine.RoleService),
	c("3", "b", "w", "b", engine.RoleBase), c("4", "b-http", "w", "b", engine.RoleService), c("5", "b-ftp", "w", "b", engine.RoleService),
	c("6", "c", "other-agent", "c", engine.RoleBase), // same names, another owner
	c("7", "b-x", "other-agent", "b", engine.RoleService),
	{ID: "8", Name: "unlabelled", Labels: map[string]string{}},
}

func TestOrphansAreOwnedAndUndesiredOnly(t *testing.T) {
	got := Orphans(observed, "w", func(d string) bool { return d == "a" })
	if len(got) != 1 || len(got["b"]) != 3 {
		t.Fatalf("orphans: %+v", got)
	}
	for _, ct := range got["b"] {
		if ct.Owner() != "w" {
			t.Fatalf("a container of another owner was selected: %+v", ct)
		}
	}
}

// fakeRemover records removals; nil err means success.
type fakeRemover struct {
	removed []string
	fail    map[string]error
	list    []engine.Container
	nets    []string
}

func (f *fakeRemover) Remove(_ context.Context, ids []string) error {
	var errs []error
	for _, id := range ids {
		if err := f.fail[id]; err != nil {
			errs = append(errs, err)
			continue
		}
		f.removed = append(f.removed, id)
	}
	return errors.Join(errs...)
}
func (f *fakeRemover) ListContainers(context.Context) ([]engine.Container, error) { return f.list, nil }
func (f *fakeRemover) RemoveNetwork(_ context.Context, n string) error {
	f.nets = append(f.nets, n)
	return nil
}

func TestRemoveDeckyServicesBeforeBase(t *testing.T) {
	f := &fakeRemover{}
	if err := RemoveDecky(context.Background(), f, Orphans(observed, "w", func(string) bool { return false })["b"]); err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.removed, ",") != "5,4,3" { // b-ftp, b-http (by name), then the base b
		t.Fatalf("removal order: %v", f.removed)
	}
}

func TestAllRemovesOnlyOwnedAndKeepsGoing(t *testing.T) {
	f := &fakeRemover{list: observed, fail: map[string]error{"2": errors.New("stuck")}}
	n, err := All(context.Background(), f, "w", []string{"decnet_lan"})
	if err == nil || !strings.Contains(err.Error(), "stuck") {
		t.Fatalf("a failure must be reported, got %v", err)
	}
	if n != 3 || strings.Contains(strings.Join(f.removed, ","), "6") || strings.Contains(strings.Join(f.removed, ","), "7") || strings.Contains(strings.Join(f.removed, ","), "8") {
		t.Fatalf("removed %d: %v", n, f.removed)
	}
	if strings.Join(f.nets, ",") != "decnet_lan" {
		t.Fatalf("networks: %v", f.nets)
	}
}
