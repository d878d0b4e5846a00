#!/usr/bin/env bash
# Fault scenarios on real components (issue 15; docs/reliability.md):
# pull-agent built with go build, run as separate processes (`once`, `run`,
# `master --insecure-no-auth` on loopback), the local Docker Engine, a veth
# LAN in a documentation range with a network namespace as the LAN
# machine, and a git remote (file:// or git http-backend on loopback).
#
# The scenarios are the Go tests TestEndToEndFault* of cmd/pull-agent
# (faults_e2e_test.go): CI runs each once and short; this script runs them
# at full size. Each prints PASS or FAIL with what was injected and
# checked.
#
#   FAULTS_MASTER_PASSES  passes with the master down          (default 20)
#   FAULTS_KILL_TRIALS    SIGKILLs of the agent mid-pass        (default 20)
#   FAULTS_SEED           seed of the random kill points        (default: random, printed)
#   FAULTS_DOCKERD=1      also restart a dockerd mid-pass (a private daemon,
#                         never the shared one; heavy, so opt-in, and last)
#   FAULTS_ONLY           a regexp of scenario names to run (e.g. Remote)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,GOFLAGS,GOPROXY,GOPATH,GOCACHE,GOMODCACHE,FAULTS_MASTER_PASSES,FAULTS_KILL_TRIALS,FAULTS_SEED,FAULTS_DOCKERD,FAULTS_ONLY "$0" "$@"
fi
scripts/setup.sh >/dev/null
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export FAULTS_MASTER_PASSES=${FAULTS_MASTER_PASSES:-20}
export FAULTS_KILL_TRIALS=${FAULTS_KILL_TRIALS:-20}
export FAULTS_SEED=${FAULTS_SEED:-$((RANDOM * 32768 + RANDOM))}

work=$(mktemp -d /tmp/pull-agent-faults.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "faults: building pull-agent (go build) and the scenarios"
go build -o "$work/pull-agent" ./cmd/pull-agent
go test -c -o "$work/faults.test" ./cmd/pull-agent
export PULL_AGENT_BIN=$work/pull-agent

scenarios=(MasterDown KilledMidPass Remote StateDiskFull)
if [ "${FAULTS_DOCKERD:-0}" = 1 ]; then
  scenarios+=(DockerdRestart) # last: the heaviest
fi
declare -A what=(
  [MasterDown]="master SIGKILLed for $FAULTS_MASTER_PASSES passes, a commit before each -> every event exactly once, in order"
  [KilledMidPass]="agent SIGKILLed mid-pass $FAULTS_KILL_TRIALS times (in Compose, at the outbox write, at random; seed $FAULTS_SEED) -> converges, no orphans, nothing lost or duplicated"
  [Remote]="remote unreachable, then a corrupt pack, then force-pushed -> last good state runs, each reported, recovers (force-push: with --allow-rollback)"
  [StateDiskFull]="state dir on a 96 MB tmpfs filled up -> deckies keep running, state file whole, recovers when space returns"
  [DockerdRestart]="a (private) dockerd restarted mid-pass -> failures reported, next pass converges"
)

fail=0
for s in "${scenarios[@]}"; do
  if [ -n "${FAULTS_ONLY:-}" ] && ! [[ $s =~ $FAULTS_ONLY ]]; then
    continue
  fi
  log=$work/$s.log
  echo "== $s: ${what[$s]}"
  start=$(date +%s)
  if (cd cmd/pull-agent && "$work/faults.test" -test.run "^TestEndToEndFault$s\$" -test.v -test.count=1 -test.timeout 60m) >"$log" 2>&1; then
    grep -E 'faults_e2e_test.go:[0-9]+: (PASS|trial|remote|disk full|the )' "$log" | sed 's/^ *faults_e2e_test.go:[0-9]*: /   /' || true
    echo "PASS $s ($(($(date +%s) - start)) s)"
  else
    fail=1
    tail -40 "$log" | sed 's/^/   /'
    cp "$log" "/tmp/pull-agent-faults-$s.log"
    echo "FAIL $s ($(($(date +%s) - start)) s); whole log: /tmp/pull-agent-faults-$s.log"
  fi
done
exit $fail
