#!/usr/bin/env bash
# Runs every benchmark. Each reports its claim as a ratio against a
# baseline measured in the same run, interleaved with it (these machines
# are noisy): look at the metrics named x/y, e.g. pass/ls-remote.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,GOFLAGS,GOPROXY,GOPATH,GOCACHE,GOMODCACHE "$0" "$@"
fi
scripts/setup.sh >/dev/null
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
go test -run '^$' -bench "${BENCH:-.}" -benchtime "${BENCHTIME:-1x}" -count 1 -timeout 30m "$@" ./... | grep -E '^(Benchmark|ok|FAIL|---)' 
