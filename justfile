# Recipes for contributors. `just --list` shows them all.
# just itself: `npm install -g rust-just` (Debian 12 does not package it).

set shell := ["bash", "-euo", "pipefail", "-c"]
export GIT_CONFIG_GLOBAL := "/dev/null"

# Build pull-agent and the decoy into bin/
build:
    mkdir -p bin
    go build -ldflags "$(scripts/release.sh --ldflags)" -o bin/pull-agent ./cmd/pull-agent
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/decoy ./cmd/decoy

# Static, stamped binaries for linux amd64 and arm64 and SHA256SUMS in dist/ (VERSION=v1.2.0 to name it)
release:
    ./scripts/release.sh

# Every test, as CI runs it (installs and starts Docker when absent)
test *args:
    ./scripts/test.sh {{args}}

# Tests of the pure and storage packages: no Docker, no root needed
unit:
    go test -count=1 ./agent ./internal/state ./internal/cliconf ./desired ./relocalize ./report ./master ./apply

# The pass and the daemon loop under the race detector (no Docker needed)
race:
    go test -race -count=1 ./agent

# End-to-end tests on the real Engine, veth LANs and git remotes
e2e:
    ./scripts/test.sh -run 'EndToEnd|Integration' 

# Benchmarks, each reported as a ratio against a baseline measured in the same run
bench benchtime="20x":
    BENCHTIME={{benchtime}} ./scripts/bench.sh

# Scale figures beside same-run baselines (docs/benchmarks.md): sections start bigrepo apply noop fleet; SCALE_DECKIES="10 50 250", FLEET_AGENTS=200
scale *sections:
    ./scripts/scale.sh {{sections}}

# Fault scenarios on real components, full size (docs/reliability.md); FAULTS_DOCKERD=1 adds a dockerd restart
faults:
    ./scripts/faults.sh

# Fuzz every fuzz target of the module for a while each (CI: 10s each in scripts/test.sh)
fuzz time="60s":
    for t in $(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sed -E 's#^(.*)/[^/]*:func (Fuzz.*)$#\1:\2#' | sort -u); do echo "== $t"; go test "${t%%:*}" -run '^$' -fuzz "^${t#*:}\$" -fuzztime {{time}}; done

# gofmt, go vet and the layering rules of docs/architecture.md
lint:
    test -z "$(gofmt -l $(git ls-files '*.go'))" || { gofmt -l $(git ls-files '*.go'); exit 1; }
    go vet ./...
    ./scripts/layering.sh
    ./scripts/layering.sh --self-test
    ./packaging/verify.sh

# Check the example fleet repository as a fleet repo's CI would
validate:
    go run ./cmd/pull-agent validate examples/fleet-repo

# The whole loop on this machine: simulated LAN, example fleet, master, agent
demo:
    ./scripts/demo.sh
