package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/decnet/pull-agent/internal/memlimit"
)

func main() { os.Exit(mainWithSignals()) }

// mainWithSignals runs under a context the first SIGINT/SIGTERM cancels (a
// clean shutdown); the default disposition then returns, so a second ends it.
func mainWithSignals() int {
	memlimit.SetDefault() // a soft GOMEMLIMIT unless the environment sets one
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
