package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/internal/gittest"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/master"
)

// Issue 14, decommission through git, on the real Engine, a real master
// process and a real git remote. The state directory is a tmpfs mount
// point, as systemd's StateDirectory= is a mount the hardened unit cannot
// remove: the agent must empty it, not remove it.
//
//   - an unsigned decommission: true (no trust policy: verified none) is
//     refused, naming the host file's line; nothing is removed;
//   - plan shows a signed one's removals and changes nothing;
//   - a signed one, under the daemon (`run`), removes every container,
//     the network and the helper link of the agent, leaves the master a
//     teardown per decky and the decommissioned heartbeat, empties the
//     state directory, and the daemon exits 0 by itself;
//   - `once` started again on the empty directory (a timer's next run)
//     finds nothing, reports, empties it again, and exits 0.
func TestEndToEndDecommission(t *testing.T) {
	w := newWorld(t)
	m := startMasterProc(t)
	mountTmpfs(t, w.state)
	signer := gittest.NewSSHSigner(t, "ops")
	w.repo.Signer = signer
	trust := []string{"--trust-ssh-allowed-signers", signer.Trust}
	deckies := [][2]string{{"ssh", "ssh"}, {"web", "http"}, {"ftp", "ftp"}}
	c1 := w.commit("three deckies", deckies, nil)
	if code, out := runAgent(t, w.faultArgs("once", m, trust...)...); code != 0 {
		t.Fatalf("converging: exit %d\n%s", code, out)
	}
	checkConverged(t, w, deckies)
	if !linkExists(w.helper) {
		t.Fatalf("the helper link %s was not set up: the test would prove nothing", w.helper)
	}
	if len(w.ownedNetworks(t)) == 0 {
		t.Fatal("the agent owns no network: the test would prove nothing")
	}
	before := ids(w.owned(), "")
	hostFile := "hosts/" + w.host + ".yaml"
	decommission := func(msg string) string {
		w.repo.Write(map[string]string{hostFile: "decommission: true\n"})
		return w.repo.Commit(msg)
	}

	// Unverified: no trust policy, so the commit is verified by nobody.
	w.repo.Signer = nil
	decommission("decommission, unsigned")
	code, out := runAgent(t, w.faultArgs("once", m)...)
	if code != exitNoStart || !strings.Contains(out, "decommission refused") || !strings.Contains(out, hostFile+":1") {
		t.Fatalf("unverified decommission: exit %d, want %d and a refusal naming %s:1\n%s", code, exitNoStart, hostFile, out)
	}
	if after := ids(w.owned(), ""); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused decommission removed containers: %v -> %v", before, after)
	}
	if !linkExists(w.helper) || len(w.ownedNetworks(t)) == 0 {
		t.Fatal("a refused decommission removed the helper link or the network")
	}
	if pe := m.host(w.host).PassError; !strings.Contains(pe, "not verified") || !strings.Contains(pe, hostFile+":1") {
		t.Fatalf("master's pass_error after the refusal = %q", pe)
	}
	if _, err := os.Stat(w.state + "/" + state.File); err != nil {
		t.Fatalf("a refused decommission removed the state: %v", err)
	}

	// Verified: signed, descending from the applied commit.
	w.repo.Signer = signer
	w.repo.Reset(c1)
	cd := decommission("decommission, signed")
	// plan only shows what the decommission would remove.
	code, out = runAgent(t, w.faultArgs("plan", m, trust...)...)
	if code != exitChanges {
		t.Fatalf("plan of the decommission: exit %d, want %d\n%s", code, exitChanges, out)
	}
	for _, d := range deckies {
		if line := lineWith(out, w.name(d[0])); !strings.Contains(line, "remove") {
			t.Errorf("plan does not show %s removed:\n%s", d[0], out)
		}
	}
	if after := ids(w.owned(), ""); fmt.Sprint(after) != fmt.Sprint(before) || !linkExists(w.helper) {
		t.Fatalf("plan changed the worker: %v -> %v", before, after)
	}
	cmd := agentCmd(w.faultArgs("run", m, append(trust, "--interval", "1h")...)...)
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) || err != nil {
			t.Fatalf("the decommissioning daemon: %v, want exit 0\n%s", err, buf.String())
		}
	case <-time.After(5 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("the daemon did not stop by itself after decommissioning\n%s", buf.String())
	}
	if got := w.owned(); len(got) != 0 {
		t.Errorf("containers of the agent left: %v", names(got))
	}
	if got := w.ownedNetworks(t); len(got) != 0 {
		t.Errorf("networks of the agent left: %v", got)
	}
	if linkExists(w.helper) {
		t.Errorf("the helper link %s is still there", w.helper)
	}
	if got := dirEntries(t, w.state); len(got) != 0 {
		t.Errorf("state directory not empty: %v", got)
	}
	var teardowns []string
	for _, r := range m.events(w.host) {
		if r.Commit == cd {
			teardowns = append(teardowns, strings.TrimPrefix(r.DeckyName, w.host+"-")+" "+r.Operation+" "+r.Status)
		}
	}
	slices.Sort(teardowns)
	if want := []string{"ftp teardown succeeded", "ssh teardown succeeded", "web teardown succeeded"}; !slices.Equal(teardowns, want) {
		t.Fatalf("master's events of the decommission = %v, want %v\n%s", teardowns, want, eventTable(m.events(w.host)))
	}
	h := m.host(w.host)
	if h.Commit != cd || !strings.Contains(h.PassError, "decommissioned") || h.Verified == "none" || h.Verified == "" {
		t.Fatalf("master's last heartbeat: commit %s pass_error %q verified %q; want commit %s, decommissioned, verified by the signer", h.Commit, h.PassError, h.Verified, cd)
	}
	if t.Failed() {
		t.Fatalf("agent output:\n%s", buf.String())
	}

	// A timer's next run on the emptied directory: nothing to remove,
	// reported, emptied again, exit 0.
	events := len(m.events(w.host))
	if code, out := runAgent(t, w.faultArgs("once", m, trust...)...); code != 0 {
		t.Fatalf("a second run after the decommission: exit %d\n%s", code, out)
	}
	if got := dirEntries(t, w.state); len(got) != 0 {
		t.Errorf("state directory not empty after the second run: %v", got)
	}
	if n := len(m.events(w.host)); n != events {
		t.Errorf("the second run reported %d new events; there was nothing to remove", n-events)
	}
	if pe := m.host(w.host).PassError; !strings.Contains(pe, "decommissioned") {
		t.Errorf("master's pass_error after the second run = %q", pe)
	}
}

// mountTmpfs makes dir a tmpfs mount point for the test (root only): the
// directory itself cannot be removed while mounted (EBUSY).
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256m,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs on the state directory (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	if err := os.Remove(dir); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("removing the mounted state directory: %v, want EBUSY (the test must prove contents-only removal)", err)
	}
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the state directory must stay: %v", err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}

// ownedNetworks lists the Docker networks carrying the agent's owner label.
func (w *world) ownedNetworks(t *testing.T) []string {
	t.Helper()
	list, err := testDocker(t).NetworkList(context.Background(), network.ListOptions{
		Filters: filters.NewArgs(filters.Arg("label", engine.LabelOwner+"="+w.host))})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range list {
		out = append(out, n.Name)
	}
	return out
}

// host is the master's row of one host.
func (m *masterProc) host(name string) master.HostRow {
	m.t.Helper()
	for _, h := range m.hosts() {
		if h.Host == name {
			return h
		}
	}
	m.t.Fatalf("the master has no host %s", name)
	return master.HostRow{}
}
