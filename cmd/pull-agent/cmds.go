package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/engine"
	"github.com/decnet/pull-agent/hostnet"
	"github.com/decnet/pull-agent/master"
	"github.com/decnet/pull-agent/reaper"
)

// onePass runs a pass and reports it; it returns the pass result (nil
// when it could not start) and the pass error.
func (a *agent) onePass(ctx context.Context, full bool) (*passResult, error) {
	res, err := a.pass(ctx, full)
	if err != nil {
		a.log.ErrorContext(ctx, "pass could not start", "err", err)
	}
	if res != nil && res.skipped {
		// Nothing moved: the last picture stands, with fresh liveness.
		hb := a.baseHeartbeat(nil)
		hb.Status = *a.lastStatus
		a.deliver(ctx, hb, false)
		return res, nil
	}
	var after []engine.Container
	if res != nil {
		after = res.after
	}
	a.deliver(ctx, a.heartbeat(ctx, a.lastHost, err, after), true)
	if err := a.st.Save(a.cfg.stateDir); err != nil {
		a.log.ErrorContext(ctx, "cannot save state", "err", err)
	}
	return res, err
}

// startAgent parses a pass command's flags and builds its agent; the
// caller closes it. extra registers the command's own flags.
func startAgent(ctx context.Context, name string, args []string, readOnly bool, extra func(*flags, *agentConfig), stderr io.Writer) (*agent, error) {
	cfg, err := parseAgentFlags(name, args, !readOnly, extra, stderr)
	if err != nil {
		return nil, err
	}
	log, err := cfg.log.logger(stderr)
	if err != nil {
		return nil, err
	}
	a, err := newAgent(ctx, cfg, log, readOnly)
	if err != nil && !errors.Is(err, errUsage) {
		err = noStart(err)
	}
	return a, err
}

func cmdOnce(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a, err := startAgent(ctx, "once", args, false, nil, stderr)
	if err != nil {
		return exitCode(err, stderr)
	}
	defer a.close()
	res, err := a.onePass(ctx, true)
	if err != nil {
		return exitCode(err, stderr)
	}
	summarize(stdout, res)
	if res.failed > 0 {
		return exitFailed
	}
	return exitOK
}

func summarize(w io.Writer, res *passResult) {
	c := res.changes.Count()
	ok, bad := 0, 0
	for _, r := range res.results {
		if r.Status == apply.Succeeded {
			ok++
		} else {
			bad++
		}
	}
	fmt.Fprintf(w, "commit %s: %d applied, %d failed, %d unchanged, %d quarantined, %d not applicable\n",
		short(res.commit), ok, bad, c[apply.Unchanged], c[apply.Quarantined], c[apply.Failed])
	for _, r := range res.results {
		if r.Status != apply.Succeeded {
			fmt.Fprintf(w, "  %s %s failed: %s\n", r.Decky, r.Operation, r.Error)
		}
	}
	for _, e := range res.changes.Entries {
		if e.Action == apply.Failed {
			fmt.Fprintf(w, "  %s not applied: %s\n", e.Decky, e.Error)
		}
	}
}

func cmdPlan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a, err := startAgent(ctx, "plan", args, true, func(f *flags, c *agentConfig) {
		f.Bool(&c.json, "json", false, "print the change set as JSON")
	}, stderr)
	if err != nil {
		return exitCode(err, stderr)
	}
	defer a.close()
	cfg := a.cfg
	res, err := a.pass(ctx, true)
	if err != nil {
		return exitCode(err, stderr)
	}
	if cfg.json {
		err = res.changes.WriteJSON(stdout)
	} else {
		fmt.Fprintf(stdout, "commit %s, host %s\n\n", short(res.commit), cfg.host)
		err = res.changes.WriteTable(stdout)
	}
	if err != nil {
		return exitCode(err, stderr)
	}
	if res.changes.Changes() {
		return exitChanges
	}
	return exitOK
}

func jitter(d time.Duration, frac float64) time.Duration {
	delta := float64(d) * frac
	return d + time.Duration((rand.Float64()*2-1)*delta)
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	f := newFlags("validate", "validate [--host NAME] DIR", stderr)
	var host string
	f.String(&host, "host", "", "also require hosts/<NAME>.yaml to exist")
	if err := f.Parse(args); err != nil {
		return exitCode(err, stderr)
	}
	if f.fs.NArg() != 1 {
		f.fs.Usage()
		return exitUsage
	}
	dir := f.fs.Arg(0)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		fmt.Fprintf(stderr, "pull-agent: %s is not a directory\n", dir)
		return exitUsage
	}
	fleet, err := desired.Load(os.DirFS(dir))
	if err != nil {
		var errs desired.Errors
		if errors.As(err, &errs) {
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

func cmdMaster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		lo                       logOptions
		listen, db               string
		tlsCert, tlsKey, clients string
		stale                    time.Duration
	)
	f := newFlags("master", "master [flags]", stderr)
	lo.bind(f)
	f.String(&listen, "listen", "127.0.0.1:8770", "address to listen on")
	f.String(&db, "db", "pull-agent-master.db", "SQLite database file")
	f.Duration(&stale, "stale-after", 3*time.Minute, "a host is stale when its last heartbeat is older than this")
	f.String(&tlsCert, "tls-cert", "", "server certificate (PEM); enables HTTPS")
	f.String(&tlsKey, "tls-key", "", "server key (PEM)")
	f.String(&clients, "client-ca", "", "CA bundle (PEM) for agent certificates; requires them and checks the claimed host against the certificate")
	if err := f.Parse(args); err != nil {
		return err
	}
	log, err := lo.logger(stderr)
	if err != nil {
		return err
	}
	store, err := master.OpenStore(ctx, db)
	if err != nil {
		return err
	}
	defer store.Close()
	srv := &http.Server{
		Handler:           master.NewServer(store, master.Options{StaleAfter: stale, RequireClientCert: clients != ""}, log),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
	}
	if tlsCert != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if clients != "" {
			pem, err := os.ReadFile(clients)
			if err != nil {
				return fmt.Errorf("--client-ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("--client-ca %s holds no PEM certificate", clients)
			}
			srv.TLSConfig.ClientCAs = pool
			srv.TLSConfig.ClientAuth = tls.RequireAndVerifyClientCert
		}
	} else if clients != "" {
		return usageErr("--client-ca needs --tls-cert and --tls-key")
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	log.Info("master listening", "addr", ln.Addr().String(), "db", db, "tls", tlsCert != "")
	fmt.Fprintf(stdout, "master listening on %s\n", ln.Addr())
	errc := make(chan error, 1)
	go func() {
		if tlsCert != "" {
			errc <- srv.ServeTLS(ln, tlsCert, tlsKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// cmdReap is the agent's self-destruct: it removes every container this
// host identity owns and the decoy networks it created. Nothing else is
// touched.
func cmdReap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		lo       logOptions
		host     string
		networks []string
		helpers  []string
		yes      bool
		stateDir string
	)
	f := newFlags("reap", "reap --yes [flags]", stderr)
	lo.bind(f)
	f.String(&host, "host", defaultHost(), "agent identity whose containers are removed")
	f.List(&networks, "network", "owned Docker networks to remove (default decnet_lan)")
	f.List(&helpers, "helper", "owned host helper links to remove (default decnet_macvlan0, decnet_ipvlan0)")
	f.String(&stateDir, "state-dir", "/var/lib/pull-agent", "state directory to clear of addresses and applied hashes")
	f.Bool(&yes, "yes", false, "really remove everything this agent owns")
	if err := f.Parse(args); err != nil {
		return err
	}
	if !yes {
		return usageErr("reap removes every decky of host %q; pass --yes to confirm", host)
	}
	if len(networks) == 0 {
		networks = []string{desired.DefaultNetworkName}
	}
	log, err := lo.logger(stderr)
	if err != nil {
		return err
	}
	eng, err := engine.New(ctx, host, engine.Options{}, log)
	if err != nil {
		return noStart(err)
	}
	defer eng.Close()
	n, err := reaper.All(ctx, eng, host, networks)
	fmt.Fprintf(stdout, "removed %d containers owned by %s\n", n, host)
	if len(helpers) == 0 {
		helpers = []string{"decnet_macvlan0", "decnet_ipvlan0"}
	}
	if det, derr := hostnet.NewDetector(); derr == nil {
		for _, h := range helpers {
			if herr := det.RemoveHelper(h, host); herr != nil && !errors.Is(herr, hostnet.ErrHelperNotOwned) {
				err = errors.Join(err, herr)
			}
		}
		det.Close()
	}
	if err == nil {
		_ = os.Remove(filepath.Join(stateDir, "state.json"))
	}
	return err
}
