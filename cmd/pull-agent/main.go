package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() { os.Exit(mainWithSignals()) }

// mainWithSignals is the process: run under a context that the first
// SIGINT or SIGTERM cancels (a clean shutdown: the decky in flight is
// finished or abandoned, the outbox flushed); the default disposition is
// then restored, so a second signal ends the process at once.
func mainWithSignals() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}
