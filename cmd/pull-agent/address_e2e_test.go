package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/testlan"
)

// Address guarantees (issue 9 §2), end to end on the real Engine and a
// namespace LAN: an address in use, whether by a LAN machine or by one of
// the agent's own containers, is never handed to another decky.

// (a) One commit removes decky a and adds decky y. a holds the lowest
// address; its containers still hold it while the removal runs in
// parallel with y's creation, so y must get another one (reserve and pick
// another) and both converge in the same pass.
func TestEndToEndAddressRemoveAndAddInOneCommit(t *testing.T) {
	w := newWorld(t)
	w.commit("a and k", [][2]string{{"a", "ssh"}, {"k", "http"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("first pass exited %d:\n%s", code, out)
	}
	cs := w.owned()
	aIP, kID := w.addr(cs[w.name("a")]), cs[w.name("k")].ID
	if !aIP.IsValid() {
		t.Fatalf("decky a has no address: %v", names(cs))
	}

	c2 := w.commit("a goes, y comes", [][2]string{{"k", "http"}, {"y", "ssh"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("removing a decky and adding another in one commit: exit %d, want 0 (both converge in one pass):\n%s", code, out)
	}
	cs = w.owned()
	if len(ids(cs, w.name("a"))) != 0 {
		t.Errorf("the removed decky still has containers: %v", names(cs))
	}
	y, ok := cs[w.name("y")]
	if !ok || y.State != "running" {
		t.Fatalf("the new decky is not running: %v", names(cs))
	}
	if yIP := w.addr(y); yIP == aIP || !w.lan.Subnet.Contains(yIP) {
		t.Errorf("the new decky got %s; the removed decky's %s was still held by its containers", yIP, aIP)
	}
	if cs[w.name("k")].ID != kID {
		t.Errorf("the untouched decky k was recreated")
	}
	if got := w.events(c2); !sameStrings(got, []string{"a teardown succeeded", "y deploy succeeded"}) {
		t.Fatalf("master events = %v", got)
	}
	if b, err := w.lan.WaitBanner(w.addr(y), 22, "", 10*time.Second); err != nil || !strings.HasPrefix(b, "SSH-2.0-") {
		t.Fatalf("the new decky does not answer on the LAN: %q %v", b, err)
	}
}

// (b) A decky whose new desired state cannot be applied (its new pin is
// the worker's own address) fails and is left running as it was; its
// address stays reserved for it, so a decky added next to it gets
// another one, in that pass and the next.
func TestEndToEndAddressFailedDeckyKeepsItsAddress(t *testing.T) {
	w := newWorld(t)
	w.commit("f", [][2]string{{"f", "ssh"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("first pass exited %d:\n%s", code, out)
	}
	before := ids(w.owned(), w.name("f"))
	fIP := w.addr(w.owned()[w.name("f")])

	hostFile := fmt.Sprintf("deckies:\n  - name: %s\n    services: [ssh]\n    ip: %s\n  - name: %s\n    services: [http]\n",
		w.name("f"), w.lan.Host, w.name("n"))
	w.repo.Write(map[string]string{"hosts/" + w.host + ".yaml": hostFile})
	c2 := w.repo.Commit("f pinned to an unusable address; n added")
	for pass := 1; pass <= 2; pass++ {
		code, out := w.once()
		if code != 1 {
			t.Fatalf("pass %d: a failing decky must make the pass exit 1, got %d:\n%s", pass, code, out)
		}
		cs := w.owned()
		if got := ids(cs, w.name("f")); fmt.Sprint(got) != fmt.Sprint(before) {
			t.Fatalf("pass %d: the failed decky was not left as it was: %v -> %v", pass, before, got)
		}
		if f := cs[w.name("f")]; f.State != "running" || w.addr(f) != fIP {
			t.Fatalf("pass %d: the failed decky is %s at %s, want running at %s", pass, f.State, w.addr(f), fIP)
		}
		n, ok := cs[w.name("n")]
		if !ok || n.State != "running" {
			t.Fatalf("pass %d: the new decky is not running next to the failed one: %v\n%s", pass, names(cs), out)
		}
		if w.addr(n) == fIP {
			t.Fatalf("pass %d: the new decky got %s, which the failed decky's running containers hold", pass, fIP)
		}
	}
	// f's operation (deploy or mutate) is the agent's wording; what counts
	// is one failure for f, reported once, and n's success.
	got := w.events(c2)
	if len(got) != 2 || !strings.HasPrefix(got[0], "f ") || !strings.HasSuffix(got[0], " failed") || got[1] != "n deploy succeeded" {
		t.Fatalf("master events = %v, want one failure of f and n deployed", got)
	}
}

// (c) A dense LAN: the LAN machine and 20 more addresses right after it,
// at the bottom of the pool, answer ARP. No decky ever gets one of them,
// whether placed in the first pass or added later.
func TestEndToEndAddressDenseLAN(t *testing.T) {
	w := newWorldLAN(t, testlan.Options{Busy: 20})
	live := map[netip.Addr]bool{w.lan.Peer: true}
	for _, a := range w.lan.Busy {
		live[a] = true
	}
	if len(live) != 21 {
		t.Fatalf("test set-up: %d live addresses", len(live))
	}
	deckies := [][2]string{{"ssh", "ssh"}, {"web", "http"}, {"ftp", "ftp"}}
	for round, add := range [][2]string{{}, {"mail", "smtp"}} {
		if add[0] != "" {
			deckies = append(deckies, add)
		}
		w.commit(fmt.Sprintf("round %d", round), deckies, nil)
		if code, out := w.once(); code != 0 {
			t.Fatalf("round %d: exit %d\n%s", round, code, out)
		}
		cs := w.owned()
		seen := map[netip.Addr]string{}
		for _, d := range deckies {
			c, ok := cs[w.name(d[0])]
			if !ok {
				t.Fatalf("round %d: decky %s missing: %v", round, d[0], names(cs))
			}
			a := w.addr(c)
			if live[a] || !w.lan.Subnet.Contains(a) || a == w.lan.Host || a == w.lan.Gateway {
				t.Fatalf("round %d: decky %s got %s, which a LAN machine uses (live: %s..%s)", round, d[0], a, w.lan.Peer, w.lan.Busy[len(w.lan.Busy)-1])
			}
			if other, dup := seen[a]; dup {
				t.Fatalf("round %d: %s and %s share %s", round, d[0], other, a)
			}
			seen[a] = d[0]
		}
	}
	ssh := w.addr(w.owned()[w.name("ssh")])
	if b, err := w.lan.WaitBanner(ssh, 22, "", 10*time.Second); err != nil || !strings.HasPrefix(b, "SSH-2.0-") {
		t.Fatalf("the decky at %s does not answer on the LAN: %q %v", ssh, b, err)
	}
}
