package engine

import (
	"context"
	"log/slog"
	"testing"

	"github.com/decnet/pull-agent/internal/testlan"
)

// TestComposeSetUpOnFirstUse: connecting and listing (all a no-op pass
// does) sets up no Compose service; the first Build or Up sets up one,
// kept for the adapter's life.
func TestComposeSetUpOnFirstUse(t *testing.T) {
	testlan.RequireDocker(t)
	ctx := context.Background()
	d, err := New(ctx, "lazy-compose-test", Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.ListContainers(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckNetwork(ctx, "pa_lazy_compose_absent"); err != nil {
		t.Fatal(err)
	}
	if n := d.ComposeSetups(); n != 0 {
		t.Fatalf("%d Compose services set up by New, a listing and a network check, want 0", n)
	}
	for range 2 {
		if _, err := d.composer(); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.ComposeSetups(); n != 1 {
		t.Errorf("%d Compose services set up by two uses, want 1", n)
	}
}
