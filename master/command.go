package master

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/decnet/pull-agent/internal/cliconf"
)

// UsageError is a command line the master cannot run with. It is the
// flag layer's own (internal/cliconf), so one error type serves every
// command of the binary.
type UsageError = cliconf.UsageError

func usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// Command is `pull-agent master …`: serve (the default), or manage tokens
// with `token add|list|revoke`. It returns flag.ErrHelp after -h, a
// *UsageError for a bad command line, nil after ctx is cancelled.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return tokenCommand(ctx, args[1:], stdout, stderr)
	}
	return serveCommand(ctx, args, stdout, stderr)
}

// newCommandFlags returns a flag set in which every flag has an
// environment variable (PULL_AGENT_<NAME>) as its default, named in -h,
// like every other pull-agent command (internal/cliconf); the master reads
// no config file.
func newCommandFlags(name, usage string, out io.Writer) *cliconf.Flags {
	return cliconf.Env(name, usage, out)
}

const dbHelp = "the store: a SQLite file path, or a postgres://user:pass@host/db URL (PostgreSQL, which several masters may share)"

// ServeConfig is the validated configuration of `pull-agent master`.
type ServeConfig struct {
	Listen, DB               string
	TLSCert, TLSKey          string
	ClientCA                 string
	StaleAfter               time.Duration
	InsecureNoAuth           bool
	InsecurePlaintext        bool
	LoopbackReads            bool
	Retain                   Retain
	RetainEvery              time.Duration
	loopbackListen, hasAgent bool
}

func serveCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		lo     cliconf.LogOptions
		c      ServeConfig
		retain string
	)
	f := newCommandFlags("master", "master [flags]\n       pull-agent master token add|list|revoke … (see 'pull-agent master token -h')", stderr)
	lo.Bind(f)
	f.String(&c.Listen, "listen", "127.0.0.1:8770", "address to listen on")
	f.String(&c.DB, "db", "pull-agent-master.db", dbHelp)
	f.Duration(&c.StaleAfter, "stale-after", 3*time.Minute, "a host is stale when its last heartbeat is older than this")
	f.String(&c.TLSCert, "tls-cert", "", "server certificate (PEM); enables HTTPS")
	f.String(&c.TLSKey, "tls-key", "", "server key (PEM)")
	f.String(&c.ClientCA, "client-ca", "", "CA bundle (PEM) for client certificates: an agent's must name its host (CN or a DNS SAN); any verified one may read")
	f.Bool(&c.InsecureNoAuth, "insecure-no-auth", false, "accept reports and reads from anyone; refused unless --listen is a loopback address")
	f.Bool(&c.InsecurePlaintext, "insecure-plaintext", false, "serve plain HTTP on a non-loopback address (tokens cross the network in clear): only behind a TLS-terminating proxy")
	f.Bool(&c.LoopbackReads, "loopback-reads", true, "readers connecting from loopback need no credential; turn off behind a reverse proxy on this machine")
	f.String(&retain, "retain", "", "lifecycle history to keep: age=90d and/or count=N per host, comma-separated (empty: everything)")
	f.Duration(&c.RetainEvery, "retain-every", 10*time.Minute, "how often retention runs")
	pos, err := f.ParseInterleaved(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("master takes no arguments, got %q", pos)
	}
	if c.Retain, err = ParseRetain(retain); err != nil {
		return usagef("%v", err)
	}
	log, err := lo.Logger(stderr)
	if err != nil {
		return err
	}
	if err := c.checkListen(); err != nil {
		return err
	}
	store, err := OpenStoreWith(ctx, c.DB, StoreOptions{Log: log.With("component", "master")})
	if err != nil {
		return err
	}
	defer store.Close()
	n, err := store.ActiveTokens(ctx, AgentToken)
	if err != nil {
		return err
	}
	c.hasAgent = n > 0
	if err := c.checkAuth(); err != nil {
		return err
	}
	return Serve(ctx, store, c, stdout, log)
}

func isLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *ServeConfig) checkListen() error {
	c.loopbackListen = isLoopbackListen(c.Listen)
	switch {
	case c.InsecureNoAuth && !c.loopbackListen:
		return usagef("--insecure-no-auth is refused on %s: only a loopback address (127.0.0.1, ::1, localhost) may serve without authentication", c.Listen)
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return usagef("--tls-cert and --tls-key go together")
	case c.ClientCA != "" && c.TLSCert == "":
		return usagef("--client-ca needs --tls-cert and --tls-key")
	case c.TLSCert == "" && !c.loopbackListen && !c.InsecurePlaintext:
		return usagef("plain HTTP on %s would send tokens and decoy addresses in clear: give --tls-cert and --tls-key, or --insecure-plaintext behind a TLS-terminating proxy", c.Listen)
	}
	return nil
}

// checkAuth refuses to start a master nobody could authenticate to.
func (c *ServeConfig) checkAuth() error {
	if c.InsecureNoAuth || c.ClientCA != "" || c.hasAgent {
		return nil
	}
	return usagef("no authentication method: give --client-ca (agents' certificates), or add an agent token per host with "+
		"'pull-agent master token add HOST --db %s'; on a loopback address only, --insecure-no-auth", c.DB)
}

// Serve runs the master on an open store until ctx is cancelled.
func Serve(ctx context.Context, store *Store, c ServeConfig, stdout io.Writer, log *slog.Logger) error {
	srv := &http.Server{
		Handler: NewServer(store, Options{StaleAfter: c.StaleAfter, InsecureNoAuth: c.InsecureNoAuth, LoopbackReaders: c.LoopbackReads}, log),
		// Bounded so that slow clients cannot hold connections forever.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	if c.TLSCert != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if c.ClientCA != "" {
			pem, err := os.ReadFile(c.ClientCA)
			if err != nil {
				return fmt.Errorf("--client-ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return usagef("--client-ca %s holds no PEM certificate", c.ClientCA)
			}
			srv.TLSConfig.ClientCAs = pool
			// Verified when given; the handler decides whether one is
			// needed (agents may use tokens, operators browsers).
			srv.TLSConfig.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return err
	}
	auth := []string{}
	if c.ClientCA != "" {
		auth = append(auth, "client certificates")
	}
	if c.hasAgent {
		auth = append(auth, "agent tokens")
	}
	if c.InsecureNoAuth {
		auth = []string{"NONE (--insecure-no-auth)"}
		log.Warn("authentication is off: anyone who reaches " + ln.Addr().String() + " may report as any host and read everything")
	}
	log.Info("master listening", "addr", ln.Addr().String(), "db", redactDSN(c.DB), "tls", c.TLSCert != "", "auth", strings.Join(auth, ", "), "retain", c.Retain.String())
	fmt.Fprintf(stdout, "master listening on %s\n", ln.Addr())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	retainDone := make(chan struct{})
	go func() {
		defer close(retainDone)
		runRetention(ctx, store, c.Retain, c.RetainEvery, log)
	}()
	defer func() { cancel(); <-retainDone }()

	errc := make(chan error, 1)
	go func() {
		if c.TLSCert != "" {
			errc <- srv.ServeTLS(ln, c.TLSCert, c.TLSKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	return srv.Shutdown(sctx)
}

// runRetention prunes at start and every `every` until ctx ends.
func runRetention(ctx context.Context, store *Store, r Retain, every time.Duration, log *slog.Logger) {
	if !r.Enabled() {
		return
	}
	if every <= 0 {
		every = 10 * time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n, err := store.Prune(ctx, time.Now(), r)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Error("retention failed", "err", err)
		case n > 0:
			log.Info("retention removed old lifecycle events", "events", n, "retain", r.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

const tokenUsage = `token add [--operator] NAME --db DB     create a token (printed once) for host NAME, or an operator
       pull-agent master token list --db DB                      list tokens (never their secrets)
       pull-agent master token revoke [--operator] NAME --db DB  revoke every token of NAME
       pull-agent master token revoke --id ID --db DB            revoke one token`

func tokenCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		db, id   string
		operator bool
	)
	f := newCommandFlags("master token", "master "+tokenUsage, stderr)
	f.String(&db, "db", "pull-agent-master.db", dbHelp)
	f.Bool(&operator, "operator", false, "the token is an operator's (reads the API and page) rather than a host's (reports as that host)")
	f.String(&id, "id", "", "revoke: only the token with this id (see list)")
	pos, err := f.ParseInterleaved(args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		f.FS.Usage()
		return usagef("token: want add, list or revoke")
	}
	kind := AgentToken
	if operator {
		kind = OperatorToken
	}
	verb, rest := pos[0], pos[1:]
	needName := func() (string, error) {
		if len(rest) != 1 {
			return "", usagef("token %s: want exactly one NAME (a host, or with --operator an operator), got %q", verb, rest)
		}
		return rest[0], nil
	}
	open := func() (*Store, error) { return OpenStore(ctx, db) }
	switch verb {
	case "add":
		name, err := needName()
		if err != nil {
			return err
		}
		st, err := open()
		if err != nil {
			return err
		}
		defer st.Close()
		tok, info, err := st.AddToken(ctx, kind, name, time.Now())
		if err != nil {
			return usagef("%v", err)
		}
		fmt.Fprintf(stderr, "created %s token %s for %s; it is shown only now:\n", info.Kind, info.ID, info.Name)
		fmt.Fprintln(stdout, tok)
		return nil
	case "list":
		st, err := open()
		if err != nil {
			return err
		}
		defer st.Close()
		toks, err := st.Tokens(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tNAME\tCREATED\tREVOKED")
		for _, t := range toks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Kind, t.Name, t.CreatedAt, t.RevokedAt)
		}
		return tw.Flush()
	case "revoke":
		name := ""
		if id == "" {
			if name, err = needName(); err != nil {
				return err
			}
		} else if len(rest) > 0 {
			return usagef("token revoke: give --id or a NAME, not both")
		}
		st, err := open()
		if err != nil {
			return err
		}
		defer st.Close()
		n, err := st.RevokeTokens(ctx, kind, name, id, time.Now())
		if err != nil {
			return err
		}
		if n == 0 {
			return usagef("token revoke: no active %s token matches", kind)
		}
		fmt.Fprintf(stdout, "revoked %d token(s)\n", n)
		return nil
	}
	return usagef("token: unknown verb %q; want add, list or revoke", verb)
}
