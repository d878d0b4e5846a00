package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/decnet/pull-agent/master"
)

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
