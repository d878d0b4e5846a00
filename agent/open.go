package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

// Production are the settings of the real roles: the fleet remotes and,
// when a master is set, the sender.
type Production struct {
	Sync   fleetsync.Options     // Dir, CABundle and the secrets are set by Open
	Sender *report.SenderOptions // nil: no master
	// Files Open reads into Sync: extra CA roots, the https token or
	// password (else the PULL_AGENT_REPO_TOKEN variable; never a flag,
	// where any user could read it), the SSH key's passphrase.
	RepoCAFile, RepoTokenFile, SSHPassphraseFile string
}

// RepoSecretEnv holds the fleet remote's token or password when no token
// file is given.
const RepoSecretEnv = "PULL_AGENT_REPO_TOKEN"

// readSecrets fills the sync options from the files named in p.
func (p *Production) readSecrets() error {
	if p.RepoCAFile != "" {
		b, err := os.ReadFile(p.RepoCAFile)
		if err != nil {
			return fmt.Errorf("--repo-ca: %w", err)
		}
		p.Sync.CABundle = b
	}
	if p.RepoTokenFile != "" {
		b, err := os.ReadFile(p.RepoTokenFile)
		if err != nil {
			return fmt.Errorf("--repo-token-file: %w", err)
		}
		p.Sync.Credentials.Password = strings.TrimSpace(string(b))
	} else if v := os.Getenv(RepoSecretEnv); v != "" {
		p.Sync.Credentials.Password = v
	}
	if p.SSHPassphraseFile != "" {
		b, err := os.ReadFile(p.SSHPassphraseFile)
		if err != nil {
			return fmt.Errorf("--repo-ssh-passphrase-file: %w", err)
		}
		p.Sync.Credentials.SSHPassphrase = strings.TrimRight(string(b), "\r\n")
	}
	return nil
}

// Worker is an Agent with its real roles, and what Close releases.
type Worker struct {
	*Agent
	Engine   *engine.Docker
	Detector *hostnet.Detector
	closers  []func()
}

// Close releases the Engine client, netlink handle, scratch clone and the
// state directory's lock, in reverse order of opening.
func (w *Worker) Close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
}

// ErrSenderConfig wraps a master configuration the sender refuses.
var ErrSenderConfig = errors.New("master settings")

// Open wires an agent to Docker, the host's LAN, the fleet remotes and the
// master. Unless read-only it takes the state directory's lock first (two
// agents never apply at once); a read-only agent (plan) takes no lock,
// works on a scratch clone of its own and never reports, so it cannot
// disturb a running daemon. On error everything opened is released.
func Open(ctx context.Context, cfg Config, p Production, log *slog.Logger) (_ *Worker, err error) {
	w := &Worker{}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if err := p.readSecrets(); err != nil {
		return nil, err
	}
	d := Deps{Log: log}
	p.Sync.Dir = filepath.Join(cfg.StateDir, "git")
	if cfg.ReadOnly {
		tmp, err := os.MkdirTemp("", "pull-agent-plan-")
		if err != nil {
			return nil, err
		}
		w.closers = append(w.closers, func() { os.RemoveAll(tmp) })
		p.Sync.Dir = tmp
	} else {
		lock, err := state.Acquire(cfg.StateDir)
		if err != nil {
			return nil, err
		}
		w.closers = append(w.closers, lock.Release)
	}
	syncer, err := fleetsync.New(p.Sync, log)
	if err != nil {
		return nil, err
	}
	d.Source = SyncSource{Syncer: syncer}
	if w.Detector, err = hostnet.NewDetector(); err != nil {
		return nil, err
	}
	w.closers = append(w.closers, w.Detector.Close)
	d.LAN = HostLAN{Detector: w.Detector}
	if w.Engine, err = engine.New(ctx, cfg.Host, engine.Options{}, log); err != nil {
		return nil, err
	}
	w.closers = append(w.closers, func() { w.Engine.Close() })
	d.Engine = w.Engine
	if !cfg.ReadOnly {
		if d.Outbox, err = report.OpenOutbox(filepath.Join(cfg.StateDir, "outbox"), cfg.Host); err != nil {
			return nil, err
		}
		if p.Sender != nil {
			sender, err := report.NewSender(d.Outbox, *p.Sender, log)
			if err != nil {
				return nil, errors.Join(ErrSenderConfig, err)
			}
			d.Reporter = sender
		}
	}
	if w.Agent, err = New(cfg, d); err != nil {
		return nil, err
	}
	return w, nil
}
