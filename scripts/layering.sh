#!/usr/bin/env bash
# Enforces the import layering of docs/architecture.md, one check per row
# of its package table. `scripts/layering.sh --self-test` proves the check
# bites: on a copy of the tree it adds one forbidden import at a time and
# expects this script to fail (CI runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)

if [ "${1:-}" = --self-test ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$tmp"
  cp go.mod go.sum "$tmp"/
  if ! "$tmp/scripts/layering.sh" >/dev/null; then
    echo "layering self-test: the unmodified tree already fails the check"; exit 1
  fi
  bad=0
  # package that must not, and an import it must not have (no cycle, so the
  # only reason for failing is the rule itself)
  for probe in "desired engine" "report apply" "apply report" "master engine" "internal/state report" \
               "cmd/decoy agent" "agent master"; do
    set -- $probe
    name=$(cd "$tmp" && go list -f '{{.Name}}' "./$1")
    f="$tmp/$1/zz_layering_probe.go"
    printf 'package %s\n\nimport _ "%s/%s"\n' "$name" "$mod" "$2" >"$f"
    if "$tmp/scripts/layering.sh" >/dev/null 2>&1; then
      echo "layering self-test: $1 importing $2 was not caught"; bad=1
    fi
    rm -f "$f"
  done
  [ $bad = 0 ] && echo "layering self-test: every forbidden import was caught"
  exit $bad
fi

fail=0
# check PACKAGE REGEX REASON: nothing PACKAGE imports, even indirectly,
# may match REGEX.
check() {
  local all deps
  if ! all=$(go list -deps "./$1" 2>&1); then
    echo "layering: cannot list the imports of $1 (an import cycle?):"; echo "$all" | sed 's/^/  /'; fail=1; return
  fi
  deps=$(grep -E "$2" <<<"$all" || true)
  if [ -n "$deps" ]; then
    echo "layering: $1 must not import $2 ($3):"; echo "$deps" | sed 's/^/  /'; fail=1
  fi
}
# direct PACKAGE REGEX REASON: PACKAGE itself may not import REGEX (its
# dependencies may: apply reads desired, which parses YAML).
direct() {
  local deps
  deps=$(go list -f '{{join .Imports "\n"}}' "./$1" | grep -E "$2" || true)
  if [ -n "$deps" ]; then
    echo "layering: $1 must not import $2 ($3):"; echo "$deps" | sed 's/^/  /'; fail=1
  fi
}
docker="github.com/docker|github.com/moby"
git="github.com/go-git"
netlink="github.com/vishvananda|github.com/mdlayher"
check  desired        "^($mod/(sync|relocalize|apply|report|reaper|engine|hostnet|master|agent)|$docker|$git|$netlink)" "pure: fuzzed without I/O"
check  relocalize     "^($mod/(sync|apply|report|reaper|engine|hostnet|master|agent)|$docker|$git|$netlink)" "pure: fuzzed without I/O"
check  hostnet        "^($mod/(apply|report|engine|sync|reaper|master|agent)|$docker)" "netlink and ARP only"
check  engine         "^$mod/(apply|desired|relocalize|report|reaper|sync|hostnet|master|agent)$" "engine is the Docker boundary"
check  apply          "^$mod/(report|sync|hostnet|master|agent)$" "apply takes a tree, not git"
direct apply          "^($git|gopkg.in/yaml|$netlink)" "no git, YAML or netlink in apply itself"
check  reaper         "^$mod/(apply|desired|relocalize|report|sync|hostnet|master|agent)$" "reaper selects by label only"
check  report         "^($mod/(apply|desired|relocalize|engine|reaper|sync|hostnet|master|agent)|$docker)" "report takes plain values"
check  sync           "^($mod/(apply|desired|relocalize|engine|reaper|report|hostnet|master|agent)|$docker)" "sync knows git only"
check  master         "^($mod/(apply|engine|reaper|sync|hostnet|relocalize|agent)|$docker|$git)" "the master stores reports"
# internal/state may use internal/atomicfile only.
deps=$(go list -deps ./internal/state | grep -E "^$mod/" | grep -vE "^$mod/internal/(state|atomicfile)$" || true)
[ -z "$deps" ] || { echo "layering: internal/state may import only internal/atomicfile:"; echo "$deps" | sed 's/^/  /'; fail=1; }
check  agent          "^$mod/(cmd|master)(/|$)" "the pass does not know the command line or the master"
# Only cmd/pull-agent wires the agent.
users=$(go list -f '{{.ImportPath}}: {{join .Imports " "}}' ./... | grep -E " $mod/agent( |$)" | cut -d: -f1 | grep -vE "^$mod/(cmd/pull-agent|agent)$" || true)
[ -z "$users" ] || { echo "layering: only cmd/pull-agent may import agent; also:"; echo "$users" | sed 's/^/  /'; fail=1; }
exit $fail
