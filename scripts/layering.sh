#!/usr/bin/env bash
# Enforces the import layering of docs/architecture.md: the pure packages
# stay pure, and report never learns about apply.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0
check() { # package, forbidden import regex, reason
  local deps
  deps=$(go list -deps "./$1" | grep -E "$2" || true)
  if [ -n "$deps" ]; then
    echo "layering: $1 must not import $2 ($3):"; echo "$deps" | sed 's/^/  /'; fail=1
  fi
}
check desired    "^($mod/(sync|relocalize|apply|report|reaper|engine|hostnet|master)|github.com/docker|github.com/go-git|github.com/vishvananda)" "pure: fuzzed without I/O"
check relocalize "^($mod/(sync|apply|report|reaper|engine|hostnet|master)|github.com/docker|github.com/go-git|github.com/vishvananda|github.com/mdlayher)" "pure: fuzzed without I/O"
check report     "^($mod/(apply|desired|relocalize|engine|reaper|sync)|github.com/docker)" "report takes plain values"
check sync       "^($mod/(apply|desired|relocalize|engine|reaper|report)|github.com/docker)" "sync knows git only"
check engine     "^$mod/(apply|desired|relocalize|report|reaper|sync)$" "engine is the Docker boundary"
check reaper     "^$mod/(apply|desired|relocalize|report|sync)$" "reaper selects by label only"
exit $fail
