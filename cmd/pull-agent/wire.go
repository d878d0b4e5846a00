package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// worker is an agent with the real roles wired in, and what closes them.
type worker struct {
	*agent.Agent
	cfg    *agentConfig
	log    *slog.Logger
	eng    *engine.Docker
	det    *hostnet.Detector
	closer []func()
}

func (w *worker) close() {
	for i := len(w.closer) - 1; i >= 0; i-- {
		w.closer[i]()
	}
}

// startWorker parses a pass command's flags and wires its agent; the
// caller closes it. A read-only worker (plan) takes no lock, works on a
// clone of its own and never reports: it cannot disturb a running daemon.
func startWorker(ctx context.Context, name string, args []string, readOnly bool, stderr io.Writer) (_ *worker, err error) {
	cfg, err := parseAgentFlags(name, args, stderr)
	if err != nil {
		return nil, err
	}
	log, err := cfg.log.logger(stderr)
	if err != nil {
		return nil, err
	}
	w := &worker{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			w.close() // releases the lock and whatever was opened before the error
			if !errors.Is(err, errUsage) {
				err = noStart(err)
			}
		}
	}()
	d := agent.Deps{Log: log}
	gitDir := filepath.Join(cfg.stateDir, "git")
	if readOnly {
		tmp, err := os.MkdirTemp("", "pull-agent-plan-")
		if err != nil {
			return nil, err
		}
		w.closer = append(w.closer, func() { os.RemoveAll(tmp) })
		gitDir = tmp
	} else {
		lock, err := state.Acquire(cfg.stateDir)
		if err != nil {
			return nil, err
		}
		w.closer = append(w.closer, lock.Release)
	}
	ca, err := cfg.repoCABundle()
	if err != nil {
		return nil, err
	}
	creds, err := cfg.credentials()
	if err != nil {
		return nil, err
	}
	syncer, err := fleetsync.New(fleetsync.Options{
		Remotes: cfg.repos, Ref: cfg.ref, Pin: cfg.pin, Dir: gitDir, Timeout: cfg.gitTimeout,
		CABundle: ca, Proxy: cfg.repoProxy, Credentials: creds,
		Trust:         fleetsync.TrustOptions{GPGKeyRing: cfg.trustGPG, SSHAllowedSigners: cfg.trustSSH},
		AllowRollback: cfg.allowRollback,
	}, log)
	if err != nil {
		return nil, err
	}
	d.Source = agent.SyncSource{Syncer: syncer}
	if w.det, err = hostnet.NewDetector(); err != nil {
		return nil, err
	}
	w.closer = append(w.closer, w.det.Close)
	d.LAN = agent.HostLAN{Detector: w.det}
	if w.eng, err = engine.New(ctx, cfg.host, engine.Options{}, log); err != nil {
		return nil, err
	}
	w.closer = append(w.closer, func() { w.eng.Close() })
	d.Engine = w.eng
	if !readOnly {
		if d.Outbox, err = report.OpenOutbox(filepath.Join(cfg.stateDir, "outbox"), cfg.host); err != nil {
			return nil, err
		}
		if cfg.master != "" {
			sender, err := report.NewSender(d.Outbox, report.SenderOptions{
				Master: cfg.master, CAFile: cfg.masterCA, CertFile: cfg.masterCert, KeyFile: cfg.masterKey,
				PinSHA256: cfg.masterPin, TokenFile: cfg.masterToken, AllowInsecure: cfg.insecure,
			}, log)
			if err != nil {
				return nil, usageErr("%v", err)
			}
			d.Reporter = sender
		}
	}
	if w.Agent, err = agent.New(cfg.agentConfig(readOnly), d); err != nil {
		return nil, err
	}
	return w, nil
}
