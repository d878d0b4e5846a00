package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/decnet/pull-agent/agent"
	"github.com/decnet/pull-agent/internal/buildinfo"
	"github.com/decnet/pull-agent/internal/cliconf"
	"github.com/decnet/pull-agent/master"
)

// version is stamped at build time (internal/buildinfo: just build, just
// release).
var version = buildinfo.Read().Version

// Exit codes, one table for every command (docs/operations.md repeats it):
//
//	0   success: every decky converged (once), nothing would change (plan),
//	    valid (validate), stopped by SIGTERM/SIGINT (run, once: shutting
//	    down is not a failure), decommissioned (run, once: do not restart)
//	1   some decky failed (once); the repository is invalid (validate)
//	2   plan: something would change
//	3   the pass could not start: fetch, refused commit, invalid commit,
//	    missing host file, LAN, Engine, state directory in use
//	4   internal error
//	64  usage: unknown command or flag, bad flag or environment value
//	    (sysexits' EX_USAGE)
const (
	exitOK       = 0
	exitFailed   = 1
	exitChanges  = 2
	exitNoStart  = 3
	exitInternal = 4
	exitUsage    = 64
)

// startError marks failures that stop a pass before any decky is touched:
// fetch, parse, detection, Docker unreachable (an *agent.StepError, or the
// wiring before the first pass).
type startError struct{ err error }

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

func noStart(err error) error {
	if err == nil {
		return nil
	}
	return &startError{err}
}

const usage = `pull-agent: pull-based GitOps agent for DECNET honeypot workers

usage: pull-agent <command> [flags]

commands:
  once       run one pass: pull, relocalize, diff, apply, report
  run        repeat the pass every --interval until stopped
  plan       print the change set of a pass without changing anything
  validate   check a fleet repository directory (for the fleet repo's CI)
  master     run the reference master that records reports
  status     print what the agent last did (state directory only)
  reap       remove every container and network this agent owns (or --decky)
  config     config show: the effective configuration (flag > env > file), secrets redacted
  suspend    keep fetching and reporting, apply nothing (resume: apply again)
  version    print the version (--json: with commit, build date, Go, OS, arch)
  completion print a shell completion script: completion bash|zsh

Run 'pull-agent <command> -h' for the flags of a command.
`

// run is the whole program, testable in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "once":
		return cmdOnce(ctx, rest, stdout, stderr)
	case "run":
		err = cmdRun(ctx, rest, stdout, stderr)
	case "plan":
		return cmdPlan(ctx, rest, stdout, stderr)
	case "validate":
		return cmdValidate(ctx, rest, stdout, stderr)
	case "master":
		err = master.Command(ctx, rest, stdout, stderr)
	case "reap":
		err = cmdReap(ctx, rest, stdout, stderr)
	case "status":
		err = cmdStatus(ctx, rest, stdout, stderr)
	case "config":
		err = cmdConfig(rest, stdout, stderr)
	case "suspend", "resume":
		err = cmdSuspend(rest, cmd == "resume", stdout, stderr)
	case "version", "--version":
		err = cmdVersion(rest, stdout, stderr)
	case "completion":
		err = cmdCompletion(ctx, rest, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "pull-agent: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	return exitCode(err, stderr)
}

func exitCode(err error, stderr io.Writer) int {
	var se *startError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage), errors.As(err, new(*cliconf.UsageError)):
		fmt.Fprintln(stderr, "pull-agent:", err)
		return exitUsage
	case errors.Is(err, context.Canceled), errors.Is(err, agent.ErrDecommissioned):
		return exitOK // shutting down is not a failure; a decommissioned agent is done
	case errors.As(err, &se):
		fmt.Fprintln(stderr, "pull-agent: pass could not start:", err)
		return exitNoStart
	default:
		fmt.Fprintln(stderr, "pull-agent:", err)
		return exitInternal
	}
}

var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// logOptions are the logging flags every command shares.
type logOptions = cliconf.LogOptions

func defaultHost() string {
	h, _ := os.Hostname() // "" on error
	// A host name with a domain maps to hosts/<first label>.yaml.
	h, _, _ = strings.Cut(strings.ToLower(h), ".")
	return h
}
