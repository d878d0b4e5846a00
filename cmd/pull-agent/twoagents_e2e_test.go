package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/testlan"
)

// Two workers, each with its own Docker Engine, state directory and NIC,
// on one LAN segment: with disjoint pools their deckies never collide, and
// when an operator makes the pools overlap, ARP probing still keeps every
// decky on an address of its own.
func TestEndToEndTwoAgentsOneLAN(t *testing.T) {
	a := newWorldLAN(t, testlan.Options{Bridge: true})
	// Worker B: same fleet repo, LAN and master; its own everything else.
	b := *a
	sfx := testlan.Suffix()
	b.host, b.state, b.helper = "e2e"+sfx, filepath.Join(t.TempDir(), "state"), "hl"+sfx
	bAddr := a.lan.Peer.Next().Next().Next().Next().Next() // a free host address for B's NIC
	b.iface = a.lan.AddPort(t, bAddr)
	b.docker = testlan.SecondEngine(t)
	t.Setenv("DOCKER_HOST", b.docker)
	var err error
	b.eng, err = engine.New(context.Background(), b.host, engine.Options{}, slog.New(slog.DiscardHandler))
	t.Setenv("DOCKER_HOST", "")
	if err != nil {
		t.Fatal(err)
	}

	// The /26 split in two pools, clear of the gateway, the workers' and the
	// LAN machine's own addresses.
	first := a.lan.Subnet.Addr()
	at := func(n int) netip.Addr {
		x := first
		for i := 0; i < n; i++ {
			x = x.Next()
		}
		return x
	}
	poolA, poolB := fmt.Sprintf("%s-%s", at(10), at(19)), fmt.Sprintf("%s-%s", at(20), at(29))
	hostFile := func(w *world, pool string, deckies ...string) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "ip_pool: %s\ndeckies:\n", pool)
		for _, d := range deckies {
			fmt.Fprintf(&sb, "  - name: %s\n    services: [ssh]\n", w.name(d))
		}
		return sb.String()
	}
	a.repo.Write(map[string]string{
		"hosts/" + a.host + ".yaml": hostFile(a, poolA, "one", "two", "three"),
		"hosts/" + b.host + ".yaml": hostFile(&b, poolB, "one", "two", "three"),
	})
	a.repo.Commit("two workers, disjoint pools")
	for _, w := range []*world{a, &b} {
		if code, out := w.once(); code != 0 {
			t.Fatalf("%s: exit %d\n%s", w.host, code, out)
		}
	}
	check := func(phase string) map[netip.Addr]string {
		held := map[netip.Addr]string{}
		for _, w := range []*world{a, &b} {
			cs, err := w.eng.ListContainers(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				if c.Owner() != w.host || c.Labels[engine.LabelRole] != engine.RoleBase {
					continue
				}
				ip := c.Networks[a.net]
				if other, dup := held[ip]; dup {
					t.Fatalf("%s: %s and %s share %s", phase, other, c.Name, ip)
				}
				held[ip] = c.Name
				if banner, err := a.lan.WaitBanner(ip, 22, "", 10*time.Second); err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
					t.Fatalf("%s: %s at %s does not answer: %q %v", phase, c.Name, ip, banner, err)
				}
			}
		}
		return held
	}
	held := check("disjoint pools")
	if len(held) != 6 {
		t.Fatalf("want 6 deckies, got %v", held)
	}
	for ip, name := range held {
		inA := ip.Compare(at(10)) >= 0 && ip.Compare(at(19)) <= 0
		if strings.HasPrefix(name, a.host) != inA {
			t.Errorf("%s got %s, outside its worker's pool", name, ip)
		}
	}

	// An operator error: B's pool now overlaps A's entirely. B's new
	// deckies probe before use, find A's deckies answering, and skip them.
	a.repo.Write(map[string]string{"hosts/" + b.host + ".yaml": hostFile(&b, poolA, "one", "two", "three", "four", "five")})
	a.repo.Commit("B's pool overlaps A's")
	code, out := b.once()
	if code != 0 {
		t.Fatalf("B: exit %d\n%s", code, out)
	}
	held = check("overlapping pools")
	if len(held) != 8 {
		t.Fatalf("B's deckies did not all come up next to A's: %v\n%s", held, out)
	}
	for ip, name := range held {
		if ip.Compare(at(10)) < 0 || ip.Compare(at(19)) > 0 {
			t.Errorf("%s at %s is outside the (now shared) pool", name, ip)
		}
	}
}
