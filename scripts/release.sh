#!/usr/bin/env bash
# Builds the release binaries of pull-agent (`just release`): static
# (CGO_ENABLED=0; the SQLite driver is pure Go) and -trimpath, for
# linux/amd64 and linux/arm64, named pull-agent_<version>_linux_<arch>,
# stamped with version, commit and build date (internal/buildinfo; read
# back with `pull-agent version --json`), and a SHA256SUMS file
# (`sha256sum -c SHA256SUMS` checks them).
#
# Reproducible: the build date is SOURCE_DATE_EPOCH when set, else the
# commit's time, never the clock; the same commit builds the same bytes.
#
# Environment: DIST output directory (default dist/), VERSION (default
# `git describe --tags --always --dirty`), ARCHS (default "amd64 arm64").
# `scripts/release.sh --ldflags` prints only the stamping flags (just build
# uses them).
set -euo pipefail
cd "$(dirname "$0")/.."

pkg=github.com/decnet/pull-agent/internal/buildinfo
commit=$(git rev-parse HEAD)
# A build from a modified tree says so (tracked files only).
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
version=${VERSION:-$(git describe --tags --always --dirty)}
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD)}
date=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
ldflags="-X $pkg.version=$version -X $pkg.commit=$commit -X $pkg.buildDate=$date"

if [ "${1:-}" = --ldflags ]; then
  echo "$ldflags"
  exit 0
fi

dist=${DIST:-dist}
mkdir -p "$dist"
files=()
for arch in ${ARCHS:-amd64 arm64}; do
  name="pull-agent_${version}_linux_${arch}"
  echo "release: $dist/$name"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w $ldflags" -o "$dist/$name" ./cmd/pull-agent
  files+=("$name")
done
(cd "$dist" && sha256sum "${files[@]}" >SHA256SUMS)
echo "release: $dist/SHA256SUMS (version $version, commit $commit, built $date)"
