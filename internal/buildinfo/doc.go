// Package buildinfo says which build of pull-agent is running: version,
// commit and build date, stamped at link time by `just build` and
// `just release` (scripts/release.sh):
//
//	-ldflags "-X github.com/decnet/pull-agent/internal/buildinfo.version=v1.2.0
//	          -X github.com/decnet/pull-agent/internal/buildinfo.commit=<40 hex>
//	          -X github.com/decnet/pull-agent/internal/buildinfo.buildDate=2026-11-29T12:00:00Z"
//
// A plain `go build` or `go install` stamps nothing; the values then come
// from the VCS settings the Go toolchain embeds (runtime/debug.ReadBuildInfo:
// vcs.revision, vcs.time, vcs.modified), so any binary can still name its
// commit. `pull-agent version --json` prints an Info.
//
// # Boundaries
//
// It reads the binary's own build information only; no I/O.
package buildinfo
