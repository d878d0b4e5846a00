package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decnet/pull-agent/internal/testpki"
	"github.com/decnet/pull-agent/master"
	"github.com/decnet/pull-agent/report"
)

// The real `pull-agent master` with TLS and client CAs, and agents that
// present certificates: the right identity is recorded; an agent whose
// certificate names another host is refused (403), and its events stay
// queued, never recorded under the wrong host.
func TestEndToEndMutualTLS(t *testing.T) {
	w := newWorld(t)
	ca := testpki.NewCA(t)
	srv := ca.Issue(t, "master", true)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	db := filepath.Join(t.TempDir(), "master.db")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	var mout bytes.Buffer
	go func() {
		done <- run(ctx, []string{"master", "--listen", addr, "--db", db, "--tls-cert", srv.CertFile, "--tls-key", srv.KeyFile,
			"--client-ca", ca.PEMFile, "--log-level", "error"}, &mout, &mout)
	}()
	defer func() { cancel(); <-done }()
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.master = "https://" + addr
	w.commit("one decky", [][2]string{{"a", "ssh"}}, nil)

	tlsArgs := func(cn string) []string {
		p := ca.Issue(t, cn, false)
		return []string{"--master-ca", ca.PEMFile, "--master-cert", p.CertFile, "--master-key", p.KeyFile}
	}
	// once's flags have --master-insecure; https ignores it.
	if code, out := w.once(tlsArgs(w.host)...); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	st, err := master.OpenStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	hosts, _ := st.Hosts(context.Background(), time.Now(), time.Minute)
	if len(hosts) != 1 || hosts[0].Identity != w.host {
		t.Fatalf("hosts: %+v", hosts)
	}

	// A certificate for another worker: the master refuses the report.
	w.commit("another decky", [][2]string{{"a", "ssh"}, {"b", "ssh"}}, nil)
	if code, out := w.once(tlsArgs("someone-else")...); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	rows, _ := st.Events(context.Background(), master.EventFilter{Decky: w.name("b")})
	if len(rows) != 0 {
		t.Fatalf("an impersonating report was recorded: %+v", rows)
	}
	box, _ := report.OpenOutbox(filepath.Join(w.state, "outbox"), w.host)
	// A 403 proves nothing about the events (docs/report-protocol.md): they
	// stay queued, none is set aside.
	if box.Rejected() != 0 || box.Depth() != 1 {
		t.Fatalf("events refused for credentials must stay queued: depth %d rejected %d", box.Depth(), box.Rejected())
	}
	var sout bytes.Buffer
	if code := run(context.Background(), []string{"status", "--host", w.host, "--state-dir", w.state}, &sout, &sout); code != 0 ||
		!strings.Contains(sout.String(), "1 waiting, 0 rejected by the master") {
		t.Fatalf("status does not show the queued event (exit %d):\n%s", code, sout.String())
	}
}
