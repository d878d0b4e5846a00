package main

import (
	"io"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/apply"
	"github.com/decnet/pull-agent/desired"
	"github.com/decnet/pull-agent/internal/cliconf"
)

// agentConfig holds the flags of once, run and plan. The three share one
// flag set, so one environment (or config file) serves every command; a
// command ignores the flags it has no use for (plan reports nothing).
type agentConfig struct {
	log    logOptions
	config string

	repos         []string
	ref           string
	pin           string
	repoCA        string
	repoProxy     string
	repoUser      string
	repoTokenFile string
	sshKey        string
	sshPassFile   string
	knownHosts    string
	trustGPG      string
	trustSSH      string
	allowRollback bool
	gitTimeout    time.Duration
	host          string
	stateDir      string
	iface         string
	gateway       string
	master        string
	masterCA      string
	masterCert    string
	masterKey     string
	masterPin     string
	masterToken   string
	insecure      bool

	parallel      int
	steadyTimeout time.Duration
	steadySamples int
	steadyEvery   time.Duration
	retryBudget   int
	allowPull     bool
	probe         bool
	helper        string
	reportTimeout time.Duration
	suspend       bool
	noVerifyDecom bool

	// daemon (run)
	interval time.Duration
	resync   time.Duration
	metrics  string
	// webhook
	triggerListen, triggerSecret string
	staleAfter                   time.Duration
	// plan
	json bool
}

func (c *agentConfig) bind(f *flags) {
	c.log.Bind(f)
	f.String(&c.config, "config", defaultConfig, "YAML file of flag-name keys (read when present; flag > env > file)")
	f.List(&c.repos, "repo", "fleet repository URL: https://, file:// or a path to a bare mirror; tried in order")
	f.String(&c.ref, "ref", "main", "branch (or full ref such as refs/tags/v3) to follow")
	f.String(&c.pin, "pin", "", "apply exactly this commit (40-hex hash), which must be in --ref's history")
	f.String(&c.repoCA, "repo-ca", "", "PEM file of extra CA roots for https fleet remotes")
	f.String(&c.repoProxy, "repo-proxy", "", "proxy URL for http(s) fleet remotes (default: HTTPS_PROXY/HTTP_PROXY/NO_PROXY)")
	f.String(&c.repoUser, "repo-username", "git", "user name sent with the token for https remotes")
	f.String(&c.repoTokenFile, "repo-token-file", "", "file holding the token or password for https remotes (or set PULL_AGENT_REPO_TOKEN; never on the command line)")
	f.String(&c.sshKey, "repo-ssh-key", "", "private key file for ssh:// and user@host:path remotes")
	f.String(&c.sshPassFile, "repo-ssh-passphrase-file", "", "file holding the SSH key's passphrase")
	f.String(&c.knownHosts, "repo-known-hosts", "", "known_hosts file for SSH remotes; unknown or changed host keys are refused")
	f.String(&c.trustGPG, "trust-gpg-keyring", "", "armored OpenPGP keyring: apply only commits signed by one of its keys")
	f.String(&c.trustSSH, "trust-ssh-allowed-signers", "", "git allowed_signers file: apply only commits SSH-signed by a listed key")
	f.Bool(&c.allowRollback, "allow-rollback", false, "accept a commit that does not descend from the last applied one (after a deliberate force-push)")
	f.Duration(&c.gitTimeout, "git-timeout", 2*time.Minute, "deadline of each git network operation")
	f.String(&c.host, "host", defaultHost(), "this worker's name: its deckies are hosts/<host>.yaml")
	f.String(&c.stateDir, "state-dir", "/var/lib/pull-agent", "directory for the clone, state and report outbox")
	f.String(&c.iface, "interface", "", "decoy LAN interface (default: host file's network.interface, else the default-route interface)")
	f.String(&c.gateway, "gateway", "", "decoy LAN gateway when the interface has no default route (default: host file's network.gateway)")
	f.Int(&c.parallel, "parallel", 4, "deckies applied at the same time")
	f.Duration(&c.steadyTimeout, "steady-timeout", 90*time.Second, "how long a decky may take to reach a steady state")
	f.Int(&c.steadySamples, "steady-samples", 3, "consecutive healthy samples that make a steady state")
	f.Duration(&c.steadyEvery, "steady-interval", time.Second, "time between steady-state samples")
	f.Int(&c.retryBudget, "retry-budget", 3, "failed attempts at one desired state before a decky is quarantined")
	f.Bool(&c.allowPull, "allow-pull", false, "let Compose pull image references missing on this worker from a registry")
	f.Bool(&c.probe, "probe", true, "probe every address with ARP before its first use and skip addresses in use (RFC 5227)")
	f.String(&c.helper, "helper", agent.DefaultHelper, "host-side link through which the worker reaches its deckies (DECNET's; decnet_ipvlan0 with ipvlan); empty to disable")
	f.String(&c.master, "master", "", "master base URL to report to, e.g. https://master:8770 (empty: do not report; plan never reports)")
	f.String(&c.masterCA, "master-ca", "", "PEM CA bundle that signs the master's certificate")
	f.String(&c.masterCert, "master-cert", "", "client certificate (PEM) for mTLS to the master")
	f.String(&c.masterKey, "master-key", "", "client key (PEM) for mTLS to the master")
	f.String(&c.masterPin, "master-pin", "", "hex SHA-256 of the master's certificate to pin")
	f.String(&c.masterToken, "master-token-file", "", "file holding a bearer token for the master")
	f.Bool(&c.insecure, "master-insecure", false, "allow a plain-http master (loopback demos and tests only)")
	f.Duration(&c.reportTimeout, "report-timeout", 30*time.Second, "time a pass spends delivering reports before leaving them queued")
	f.Duration(&c.interval, "interval", 60*time.Second, "run: time between passes")
	f.Duration(&c.resync, "resync", 10*time.Minute, "run: time between full passes that re-check every container even when nothing signalled drift")
	f.String(&c.metrics, "metrics", "", "run: serve /metrics (Prometheus) and /healthz on this management address, e.g. 127.0.0.1:9477 (never the decoy LAN)")
	f.Duration(&c.staleAfter, "stale-after", 0, "run: /healthz fails when no fetch succeeded for this long (default 3 x --interval)")
	f.String(&c.triggerListen, "trigger-listen", "", "run: serve the webhook that starts a pass (HMAC-SHA256 signed POST) on this management address, e.g. 127.0.0.1:9478")
	f.String(&c.triggerSecret, "trigger-secret-file", "", "run: file holding the webhook's HMAC secret")
	f.Bool(&c.suspend, "suspend", false, "fetch, verify and report, and apply nothing (as `pull-agent suspend`)")
	f.Bool(&c.noVerifyDecom, "allow-unverified-decommission", false, "honour decommission: true in a commit no trust policy verified (default: refused, nothing removed)")
	f.Bool(&c.json, "json", false, "plan: print the change set as JSON")
}

func (c *agentConfig) validate() error {
	switch {
	case len(c.repos) == 0:
		return usageErr("no fleet repository: set --repo or PULL_AGENT_REPO")
	case c.host == "" || !desired.NameRE().MatchString(c.host):
		return usageErr("--host %q must match %s", c.host, desired.NameRE())
	case c.stateDir == "":
		return usageErr("--state-dir is empty")
	case c.parallel < 1:
		return usageErr("--parallel must be at least 1")
	case c.retryBudget < 1:
		return usageErr("--retry-budget must be at least 1")
	case c.interval < time.Second:
		return usageErr("--interval must be at least 1s")
	}
	if c.gateway != "" {
		if a, err := netip.ParseAddr(c.gateway); err != nil || !a.Is4() {
			return usageErr("--gateway %q is not an IPv4 address", c.gateway)
		}
	}
	if c.staleAfter == 0 {
		c.staleAfter = 3 * c.interval
	}
	abs, err := filepath.Abs(c.stateDir)
	if err != nil {
		return err
	}
	c.stateDir = abs
	return nil
}

// agentConfig maps the flags onto the agent's plain configuration.
func (c *agentConfig) agentConfig(readOnly bool) agent.Config {
	gw, _ := netip.ParseAddr(c.gateway) // validated; zero when empty
	return agent.Config{
		Host: c.host, StateDir: c.stateDir, ReadOnly: readOnly, Interface: c.iface, Gateway: gw,
		Parallel: c.parallel, RetryBudget: c.retryBudget, AllowPull: c.allowPull, Probe: c.probe, Helper: c.helper,
		Steady:        apply.SteadyOptions{Samples: c.steadySamples, Interval: c.steadyEvery, Timeout: c.steadyTimeout},
		ReportTimeout: c.reportTimeout, Version: version, Suspend: c.suspend, AllowUnverifiedDecommission: c.noVerifyDecom,
	}
}

// parseAgentFlags parses the flags of once, run, plan and config show:
// flag > environment > config file > default.
func parseAgentFlags(name string, args []string, stderr io.Writer) (*agentConfig, error) {
	c, _, err := parseAgentFlagSet(name, args, stderr)
	return c, err
}

func parseAgentFlagSet(name string, args []string, stderr io.Writer) (*agentConfig, *flags, error) {
	file, err := cliconf.Locate(args, defaultConfig)
	if err != nil {
		return nil, nil, err
	}
	c := &agentConfig{}
	f := cliconf.New(name, name+" [flags]", stderr, file)
	c.bind(f)
	if err := f.Parse(args); err != nil {
		return nil, nil, err
	}
	if f.FS.NArg() > 0 {
		return nil, nil, usageErr("%s takes no arguments, got %q", name, f.FS.Args())
	}
	return c, f, c.validate()
}
