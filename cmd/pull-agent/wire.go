package main

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// worker is the wired agent with the flags it came from.
type worker struct {
	*agent.Worker
	cfg *agentConfig
	log *slog.Logger
}

func (w *worker) close() { w.Close() }

// startWorker parses a pass command's flags and opens its agent
// (agent.Open); the caller closes it. Any error but a usage error means
// the pass could not start.
func startWorker(ctx context.Context, name string, args []string, readOnly bool, stderr io.Writer) (_ *worker, err error) {
	defer func() {
		if err != nil && !errors.Is(err, errUsage) {
			err = noStart(err)
		}
	}()
	cfg, err := parseAgentFlags(name, args, stderr)
	if err != nil {
		return nil, err
	}
	log, err := cfg.log.Logger(stderr)
	if err != nil {
		return nil, err
	}
	p := agent.Production{Sync: fleetsync.Options{
		Remotes: cfg.repos, Ref: cfg.ref, Pin: cfg.pin, Timeout: cfg.gitTimeout, Proxy: cfg.repoProxy,
		Credentials:   fleetsync.Credentials{Username: cfg.repoUser, SSHKeyFile: cfg.sshKey, SSHKnownHostsFile: cfg.knownHosts},
		Trust:         fleetsync.TrustOptions{GPGKeyRing: cfg.trustGPG, SSHAllowedSigners: cfg.trustSSH},
		AllowRollback: cfg.allowRollback,
	}, RepoCAFile: cfg.repoCA, RepoTokenFile: cfg.repoTokenFile, SSHPassphraseFile: cfg.sshPassFile}
	if cfg.master != "" {
		p.Sender = &report.SenderOptions{Master: cfg.master, CAFile: cfg.masterCA, CertFile: cfg.masterCert, KeyFile: cfg.masterKey,
			PinSHA256: cfg.masterPin, TokenFile: cfg.masterToken, AllowInsecure: cfg.insecure}
	}
	aw, err := agent.Open(ctx, cfg.agentConfig(readOnly), p, log)
	if errors.Is(err, agent.ErrSenderConfig) {
		return nil, usageErr("%v", err)
	}
	if err != nil {
		return nil, err
	}
	return &worker{Worker: aw, cfg: cfg, log: log}, nil
}
