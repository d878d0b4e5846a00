// Package sync (imported as fleetsync everywhere in this module, since its
// name shadows the standard library's) keeps a local copy of the fleet
// repository and hands out the files of one commit.
//
// # Contract
//
// [Syncer.Sync] asks each remote, in order, for its ref advertisement and
// uses the first that answers. When the advertised commit is the one
// already held locally, nothing else is transferred. Otherwise it fetches
// the new commit into a copy of the local clone (its packs hard-linked), so
// the remote sends only the objects the clone lacks, checks ancestry and
// signatures on it exactly as on a fresh clone, and swaps it in; a clone
// killed half-way is never used. Anything but an accepted commit or a
// refusal on complete evidence (a failed fetch, missing or corrupt
// objects, history beyond the clone's shallow edge) falls back to a fresh
// shallow, single-branch clone, which decides as before. The local copy
// does not grow with the number of passes: after a bounded number of
// fetches into it, the next new commit is cloned afresh. A local copy that
// cannot be read is detected, logged and replaced.
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
