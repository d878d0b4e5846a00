package sync

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/decnet/pull-agent/internal/gittest"
)

// The kept clone does not grow without bound: once it holds
// maxIncrementalPacks packs, the next new commit is fetched as a fresh
// shallow clone, which replaces it (one pack again).
func TestKeptCloneIsBounded(t *testing.T) {
	defer func(n int) { maxIncrementalPacks = n }(maxIncrementalPacks)
	maxIncrementalPacks = 3
	root := t.TempDir()
	repo := gittest.New(t, root, "fleet")
	repo.Write(map[string]string{"fleet.yaml": "version: 1\n"})
	repo.Commit("rev 0")
	state := filepath.Join(t.TempDir(), "state")
	s, err := New(Options{Remotes: []string{repo.FileURL()}, Dir: state}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var got []string
	applied := ""
	for i := 1; i <= 7; i++ {
		snap, err := s.Sync(ctx, applied)
		if err != nil {
			t.Fatal(err)
		}
		applied = snap.Commit
		packs, _ := filepath.Glob(filepath.Join(state, "clone", "objects", "pack", "*.pack"))
		kind := "fresh"
		if snap.Incremental {
			kind = "incremental"
		}
		got = append(got, fmt.Sprintf("%s/%d", kind, len(packs)))
		repo.Write(map[string]string{fmt.Sprintf("hosts/h%d.yaml", i): "deckies: []\n"})
		repo.Commit(fmt.Sprintf("rev %d", i))
	}
	want := []string{"fresh/1", "incremental/2", "incremental/3", "fresh/1", "incremental/2", "incremental/3", "fresh/1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fetches (kind/packs after): %v, want %v", got, want)
	}
}
