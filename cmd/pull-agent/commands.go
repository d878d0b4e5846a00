package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/internal/buildinfo"
	"github.com/decnet/pull-agent/internal/completion"
	"github.com/decnet/pull-agent/internal/state"
	"github.com/decnet/pull-agent/report"
	fleetsync "github.com/decnet/pull-agent/sync"
)

func cmdOnce(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	w, err := startWorker(ctx, "once", args, false, stderr)
	if err != nil {
		return exitCode(err, stderr)
	}
	defer w.close()
	res, err := w.Pass(ctx, agent.PassOptions{Full: true})
	if err != nil {
		return exitCode(noStart(err), stderr)
	}
	res.WriteSummary(stdout)
	if res.Failed > 0 && ctx.Err() == nil {
		return exitFailed
	}
	return exitOK
}

func cmdPlan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	w, err := startWorker(ctx, "plan", args, true, stderr)
	if err != nil {
		return exitCode(err, stderr)
	}
	defer w.close()
	res, err := w.Pass(ctx, agent.PassOptions{Full: true})
	if err != nil {
		return exitCode(noStart(err), stderr)
	}
	if w.cfg.json {
		err = res.Changes.WriteJSON(stdout)
	} else {
		fmt.Fprintf(stdout, "commit %s, host %s\n\n", agent.Short(res.Commit), w.cfg.host)
		err = res.Changes.WriteTable(stdout)
	}
	if err != nil {
		return exitCode(err, stderr)
	}
	if res.Changes.Changes() {
		return exitChanges
	}
	return exitOK
}

// cmdRun is the daemon (agent.Run): a pass every --interval ±10%, a full
// one on SIGHUP, drift on the Engine's event stream repaired at once,
// /metrics and /healthz on a management address.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	w, err := startWorker(ctx, "run", args, false, stderr)
	if err != nil {
		return err
	}
	defer w.close()
	cfg := w.cfg
	m := agent.NewMetrics(version)
	var decoy []netip.Addr // never listen on the decoy LAN
	if lan, err := w.Detector.Detect(ctx, hostnet.Options{Interface: cfg.iface}); err == nil {
		decoy = lan.HostAddrs
	}
	triggers := make(chan struct{}, 1) // SIGHUP and the webhook; bursts coalesce
	serve := map[string]http.Handler{cfg.metrics: agent.MetricsHandler(m, w.HealthHandler(cfg.staleAfter))}
	if cfg.triggerListen != "" {
		secret, err := os.ReadFile(cfg.triggerSecret)
		if secret = bytes.TrimSpace(secret); err != nil || len(secret) == 0 {
			return usageErr("--trigger-listen needs --trigger-secret-file holding the webhook's HMAC secret (%v)", err)
		}
		serve[cfg.triggerListen] = agent.TriggerHandler(secret, triggers, m, w.log)
	}
	for addr, h := range serve {
		if addr == "" {
			continue
		}
		stop, err := agent.Serve(addr, decoy, h, w.log)
		if errors.Is(err, agent.ErrListenAddress) {
			return usageErr("%v", err)
		} else if err != nil {
			return err
		}
		defer stop()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			select {
			case triggers <- struct{}{}:
			default:
			}
		}
	}()
	w.log.Info("pull-agent running", "version", version, "interval", cfg.interval, "resync", cfg.resync, "remotes", len(cfg.repos))
	return w.Run(ctx, agent.LoopOptions{
		Interval: cfg.interval, Resync: cfg.resync, Triggers: triggers, Watch: true,
		OnPass: func(res *agent.Result, err error, took time.Duration) {
			m.Observe(w.Agent, res, err, took)
			if err == nil && !res.Skipped && res.Changes.Changes() {
				res.WriteSummary(stdout)
			}
		},
	})
}

func cmdValidate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("validate", "validate [--host NAME] DIR", stderr)
	var host string
	f.String(&host, "host", "", "also require hosts/<NAME>.yaml to exist")
	dirs, err := f.ParseInterleaved(args) // flags may follow the directory
	if err != nil {
		return exitCode(err, stderr)
	}
	if len(dirs) != 1 {
		f.FS.Usage()
		return exitUsage
	}
	dir := dirs[0]
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		fmt.Fprintf(stderr, "pull-agent: %s is not a directory\n", dir)
		return exitUsage
	}
	fleet, err := desired.LoadContext(ctx, os.DirFS(dir))
	if err != nil {
		if errs, ok := errors.AsType[desired.Errors](err); ok {
			for _, e := range errs {
				fmt.Fprintln(stdout, e.Error())
			}
		} else {
			fmt.Fprintln(stdout, err)
		}
		return exitFailed
	}
	if host != "" && fleet.Hosts[host] == nil {
		fmt.Fprintf(stdout, "%s/%s.yaml: file is missing\n", desired.HostsDir, host)
		return exitFailed
	}
	n := 0
	for _, h := range fleet.Hosts {
		n += len(h.Deckies)
	}
	fmt.Fprintf(stderr, "%s: valid: %d hosts, %d deckies, %d services\n", dir, len(fleet.Hosts), n, len(fleet.Services))
	return exitOK
}

// cmdStatus prints what the agent last did, from the state directory
// only (agent.ReadStatus).
func cmdStatus(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		host, stateDir string
		asJSON         bool
	)
	f := newFlags("status", "status [flags]", stderr)
	f.String(&host, "host", defaultHost(), "this worker's name")
	f.String(&stateDir, "state-dir", "/var/lib/pull-agent", "the agent's state directory")
	f.Bool(&asJSON, "json", false, "print JSON")
	if err := f.Parse(args); err != nil {
		return err
	}
	v, err := agent.ReadStatus(stateDir, host)
	if err != nil {
		return err
	}
	if asJSON {
		return v.WriteJSON(stdout)
	}
	return v.WriteText(stdout, time.Now())
}

// cmdReap is the agent's self-destruct (agent.Reap): every container,
// network and helper link this host identity owns, or one decky with
// --decky. It takes the state directory's lock: a running daemon would
// recreate what it removes.
func cmdReap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		lo  logOptions
		opt agent.ReapOptions
		yes bool
	)
	f := newFlags("reap", "reap --yes [--decky NAME] [flags]", stderr)
	lo.Bind(f)
	f.String(&opt.Host, "host", defaultHost(), "agent identity whose containers are removed")
	f.List(&opt.Networks, "network", "owned Docker networks to remove (default decnet_lan)")
	f.List(&opt.Helpers, "helper", "owned host helper links to remove (default decnet_macvlan0, decnet_ipvlan0)")
	f.String(&opt.StateDir, "state-dir", "/var/lib/pull-agent", "state directory to clear of addresses and applied hashes")
	f.String(&opt.Decky, "decky", "", "remove only this decky (base included), reported as a teardown")
	f.Bool(&yes, "yes", false, "really remove everything this agent owns (or the --decky)")
	if err := f.Parse(args); err != nil {
		return err
	}
	if !yes {
		return usageErr("reap removes the deckies of host %q; pass --yes to confirm", opt.Host)
	}
	log, err := lo.Logger(stderr)
	if err != nil {
		return err
	}
	lock, err := state.Acquire(opt.StateDir)
	if err != nil {
		return noStart(fmt.Errorf("%w; stop the daemon (systemctl stop pull-agent) before reaping, or it recreates what reap removes", err))
	}
	defer lock.Release()
	eng, err := engine.New(ctx, opt.Host, engine.Options{}, log)
	if err != nil {
		return noStart(err)
	}
	defer eng.Close()
	var lan agent.LAN
	if det, err := hostnet.NewDetector(); err == nil {
		defer det.Close()
		lan = agent.HostLAN{Detector: det}
	}
	if opt.Decky != "" {
		if opt.Outbox, err = report.OpenOutbox(filepath.Join(opt.StateDir, "outbox"), opt.Host); err != nil {
			return err
		}
	}
	n, err := agent.Reap(ctx, opt, eng, lan)
	fmt.Fprintf(stdout, "removed %d containers owned by %s\n", n, opt.Host)
	return err
}

// cmdSuspend writes (resume: removes) the state directory's suspend file:
// the agent goes on fetching and reporting, and applies nothing.
func cmdSuspend(args []string, resume bool, stdout, stderr io.Writer) error {
	name := map[bool]string{false: "suspend", true: "resume"}[resume]
	var stateDir, reason string
	f := newFlags(name, name+" [flags]", stderr)
	f.String(&stateDir, "state-dir", "/var/lib/pull-agent", "the agent's state directory")
	if !resume {
		f.String(&reason, "reason", "", "why, shown in status and the heartbeat")
	}
	if err := f.Parse(args); err != nil {
		return err
	}
	if resume {
		fmt.Fprintln(stdout, "resumed: the next pass applies the current commit")
		return agent.Resume(stateDir)
	}
	fmt.Fprintln(stdout, "suspended: passes fetch and report, and apply nothing until `pull-agent resume`")
	return agent.Suspend(stateDir, reason)
}

// cmdConfig is `config show`: the configuration once, run and plan would
// use, as a config file with each value's source; URL credentials are
// redacted (secrets themselves are never flags).
func cmdConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "show" {
		return usageErr("usage: pull-agent config show [flags]")
	}
	_, f, err := parseAgentFlagSet("config show", args[1:], stderr)
	if err != nil {
		return err
	}
	return f.Show(stdout, fleetsync.Redact, "config", "json")
}

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	var asJSON bool
	f := newFlags("version", "version [--json]", stderr)
	f.Bool(&asJSON, "json", false, "print JSON: version, commit, build_date, go, os, arch")
	if err := f.Parse(args); err != nil {
		return err
	}
	return buildinfo.Read().Write(stdout, asJSON)
}

// cmdCompletion prints a completion script built from the commands' real
// flag sets: each command of the spec runs with -h (internal/completion);
// --config= keeps a broken config file from hiding the flags.
func cmdCompletion(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		return usageErr("usage: pull-agent completion bash|zsh  (e.g. source <(pull-agent completion bash))")
	}
	root, err := completion.Build("pull-agent", completionSpec, func(path []string, out io.Writer) {
		run(ctx, append(path, "--config=", "-h"), out, out)
	})
	if err != nil {
		return err
	}
	return completion.Write(stdout, args[0], root)
}

var completionSpec = []string{"once", "run", "plan", "validate", "master", "master token: add list revoke", "status", "reap",
	"config", "config show", "suspend", "resume", "version", "completion: bash zsh", "help"}
