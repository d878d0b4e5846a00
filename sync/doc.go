// Package sync (imported as fleetsync everywhere in this module, since its
// name shadows the standard library's) keeps a local copy of the fleet
// repository and hands out the files of one commit.
//
// # Contract
//
// [Syncer.Sync] asks each remote, in order, for its ref advertisement and
// uses the first that answers. When the advertised commit is the one
// already held locally, nothing else is transferred. Otherwise it makes a
// fresh shallow, single-branch clone into a temporary directory and swaps it
// in, so the local copy never grows with the number of passes and a clone
// killed half-way is never used. A local copy that cannot be read is
// detected, logged and replaced.
//
// The returned [Snapshot] reads files straight from git objects (no
// checkout): it is an [io/fs.FS] for package desired, gives each build
// context a content hash (its git tree hash) and writes a context to disk
// only when an image must be built ([Snapshot.Materialize]).
//
// # Boundaries
//
// fleetsync knows git and the state directory only. It does not parse the
// fleet format (package desired) or touch Docker, and it never writes
// credentials or URL user-info into logs or errors ([Redact]).
package sync
