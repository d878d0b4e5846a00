// Command pull-agent is a pull-based GitOps agent for DECNET honeypot
// workers: it pulls a fleet git repository, takes this worker's deckies
// from it, relocalizes them onto the local LAN, converges the containers
// through Compose and reports per-decky results to a master.
//
// Run `pull-agent help` for the subcommands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
