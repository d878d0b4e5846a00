package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
)

// Issue 9 (e): SIGTERM in the middle of an apply is a shutdown, not a
// failure. The daemon exits 0; the decky in flight gets no failure event
// and no failure count; the outbox is flushed (empty on disk after the
// exit, nothing set aside); the next pass converges it. Issue 14: while
// the daemon holds the state directory, a second agent on it (once, reap)
// refuses with exit 3 and says the directory is in use.
// The steady-state check is made long (samples x interval) so that the
// signal lands while the new decky is being applied: the signal is sent
// once its base container exists, which is what the test waits for, not
// a time.
func TestEndToEndSIGTERMDuringApply(t *testing.T) {
	w := newWorld(t)
	m := startMasterProc(t)
	live := [][2]string{{"stay", "ssh"}}
	w.commit("one decky", live, nil)
	if code, out := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("first pass: exit %d\n%s", code, out)
	}
	live = append(live, [2]string{"late", "ssh,ftp"})
	w.commit("a decky more", live, nil)
	late := w.name("late")

	cmd := agentCmd(w.faultArgs("run", m, "--interval", "1h", "--steady-samples", "20", "--steady-interval", "1s", "--steady-timeout", "120s")...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitCond(t, 2*time.Minute, "the new decky's base container", func() bool {
		_, ok := w.owned()[late]
		return ok
	}, out.String)
	// A second agent on the same state directory refuses, and touches
	// nothing (reap would otherwise remove the daemon's deckies).
	for _, args := range [][]string{
		w.faultArgs("once", m),
		{"reap", "--yes", "--host", w.host, "--network", w.net, "--helper", w.helper, "--state-dir", w.state},
	} {
		code, sout := runAgent(t, args...)
		if code != exitNoStart || !strings.Contains(sout, "is in use by another pull-agent process") {
			t.Errorf("%s beside the daemon: exit %d, want %d and a message that the state directory is in use:\n%s", args[0], code, exitNoStart, sout)
		}
	}
	if _, ok := w.owned()[late]; !ok {
		t.Fatalf("the refused second agent removed %s", late)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-exited:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("the daemon did not stop after SIGTERM:\n%s", out.String())
	}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) || err != nil {
		t.Fatalf("SIGTERM during an apply: %v, want exit 0\n%s", err, out.String())
	}
	for _, r := range m.events(w.host) {
		if r.DeckyName == late && r.Status != "succeeded" {
			t.Errorf("shutdown reported as %s for %s: %s\n%s", r.Status, late, r.Error, out.String())
		}
	}
	box, err := report.OpenOutbox(filepath.Join(w.state, "outbox"), w.host)
	if err != nil {
		t.Fatal(err)
	}
	if d, r := box.Depth(), box.Rejected(); d != 0 || r != 0 {
		t.Errorf("outbox after the exit: %d events waiting, %d set aside; want it flushed\n%s", d, r, out.String())
	}
	st, err := state.Load(w.state, w.host)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := st.Failures[late]; ok {
		t.Errorf("shutdown counted as a failure: %+v", f)
	}

	// The next pass takes the decky up again and converges.
	if code, pout := runAgent(t, w.faultArgs("once", m)...); code != 0 {
		t.Fatalf("the pass after the shutdown: exit %d\n%s", code, pout)
	}
	checkConverged(t, w, live)
	found := false
	for _, r := range m.events(w.host) {
		found = found || (r.DeckyName == late && r.Status == "succeeded" && r.Operation != "teardown")
		if r.DeckyName == late && r.Status != "succeeded" {
			t.Errorf("unexpected %s event for %s: %s", r.Status, late, r.Error)
		}
	}
	if !found {
		t.Errorf("the decky abandoned at shutdown was never reported applied:\n%s", eventTable(m.events(w.host)))
	}
}
