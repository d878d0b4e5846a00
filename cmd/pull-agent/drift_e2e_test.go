package main

import (
	"context"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/relocalize"
)

// Issue 12: identity drift, the LAN's view of a running decky.

// inDecky runs a command in the network namespace of a decky's base
// container, from the host (the images are FROM scratch: nothing to exec).
func (w *world) inDecky(t *testing.T, decky string, args ...string) string {
	t.Helper()
	in, err := testDocker(t).ContainerInspect(context.Background(), w.name(decky))
	if err != nil {
		t.Fatal(err)
	}
	if in.State == nil || in.State.Pid == 0 {
		t.Fatalf("%s is not running", w.name(decky))
	}
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(in.State.Pid), "-n"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// deckyLink is the name of the decky's interface on the decoy LAN (the
// one holding its address).
func (w *world) deckyLink(t *testing.T, decky string, ip netip.Addr) string {
	t.Helper()
	for _, line := range strings.Split(w.inDecky(t, decky, "ip", "-o", "-4", "addr", "show"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && strings.HasPrefix(f[3], ip.String()+"/") {
			name, _, _ := strings.Cut(f[1], "@") // eth0@if12
			return name
		}
	}
	t.Fatalf("no interface of %s holds %s", decky, ip)
	return ""
}

// TestEndToEndIdentityDrift: three running deckies are changed by hand the
// way the LAN sees them: one answers with another MAC, one lost its
// address, one stopped answering on its declared port (a firewall rule in
// its namespace; the containers all still run). The next resync reports
// each as drift, naming what differed, and repairs it: the decky is
// recreated and answers again with its own MAC and ports.
func TestEndToEndIdentityDrift(t *testing.T) {
	w := newWorld(t)
	commit := w.commit("three deckies", [][2]string{{"mac", "ssh"}, {"addr", "ssh"}, {"port", "ssh"}}, nil)
	if code, out := w.once(); code != 0 {
		t.Fatalf("first pass exited %d:\n%s", code, out)
	}
	before := w.owned()
	ip := map[string]netip.Addr{}
	for _, d := range []string{"mac", "addr", "port"} {
		if ip[d] = w.addr(before[w.name(d)]); !ip[d].IsValid() {
			t.Fatalf("%s has no address: %v", d, names(before))
		}
	}

	// By hand: a new MAC, an address removed, a port firewalled.
	const wrongMAC = "02:de:ad:be:ef:01"
	w.inDecky(t, "mac", "ip", "link", "set", w.deckyLink(t, "mac", ip["mac"]), "address", wrongMAC)
	addrLink := w.deckyLink(t, "addr", ip["addr"])
	w.inDecky(t, "addr", "ip", "addr", "flush", "dev", addrLink)
	w.inDecky(t, "port", "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "REJECT", "--reject-with", "tcp-reset")

	code, out := w.once() // a resync: once is always a full pass
	if code != 0 {
		t.Fatalf("the repairing pass exited %d:\n%s", code, out)
	}
	if strings.Contains(out, "cannot knock") {
		t.Errorf("the identity check dialed instead of knocking (half-open, unseen by the decoys):\n%s", out)
	}
	for _, want := range []struct{ decky, what string }{
		{"mac", "mac " + wrongMAC + " answers for " + ip["mac"].String() + ", want " + relocalize.MAC(w.host, w.name("mac"))},
		{"addr", "address " + ip["addr"].String() + " does not answer ARP"},
		{"port", "22/tcp (ssh) does not accept connections"},
	} {
		line := lineWith(out, "drift")
		found := false
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "drift") && strings.Contains(l, w.name(want.decky)) && strings.Contains(l, want.what) {
				found = true
			}
		}
		if !found {
			t.Errorf("no drift reported for %s with %q; first drift line %q; output:\n%s", want.decky, want.what, line, out)
		}
	}
	if got := w.events(commit); !sameStrings(got, []string{
		"addr deploy succeeded", "addr drift failed", "addr repair succeeded", "mac deploy succeeded", "mac drift failed", "mac repair succeeded",
		"port deploy succeeded", "port drift failed", "port repair succeeded"}) {
		t.Errorf("master events = %v, want a deploy, the drift and a repair of each", got)
	}
	// Repaired: recreated, with the derived MAC, the address and the port.
	after := w.owned()
	for _, d := range []string{"mac", "addr", "port"} {
		if after[w.name(d)].ID == before[w.name(d)].ID {
			t.Errorf("%s was not recreated", d)
		}
		if got := w.addr(after[w.name(d)]); got != ip[d] {
			t.Errorf("%s moved from %s to %s", d, ip[d], got)
		}
		if banner, err := w.lan.WaitBanner(ip[d], 22, "", 10*time.Second); err != nil || !strings.HasPrefix(banner, "SSH-2.0") {
			t.Errorf("%s does not answer on 22 from the LAN after the repair: %q %v", d, banner, err)
		}
	}
	if got, want := w.neighbourMAC(t, ip["mac"]), relocalize.MAC(w.host, w.name("mac")); got != want {
		t.Errorf("the LAN sees %s at %s after the repair, want %s", got, ip["mac"], want)
	}

	// A resync with nothing changed by hand reports nothing and touches nothing.
	code, out = w.once()
	if code != 0 || strings.Contains(out, "drift") {
		t.Errorf("a clean resync exited %d or reported drift:\n%s", code, out)
	}
	for n, c := range w.owned() {
		if after[n].ID != c.ID {
			t.Errorf("a clean resync recreated %s", n)
		}
	}
}
