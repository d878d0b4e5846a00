// Package desired reads and validates a fleet repository: the operator's
// declaration of which deckies every worker should run.
//
// # Format
//
// A fleet repository holds one fleet.yaml (format version, fleet-wide
// defaults, the distro and service catalogs) and one hosts/<host>.yaml per
// worker (that worker's deckies, optional network overrides and ip_pool).
// docs/fleet-repo.md describes every field.
//
// # Contract
//
// [Load] (and [LoadContext], which stops when its context ends) parses a
// repository given as an [io/fs.FS] and returns either a fully validated
// [Fleet] or an [Errors] value listing every problem found, each naming
// file, line and field. Parsing is strict: unknown keys, wrong scalar
// types, duplicate keys and path tricks (absolute paths, "..", symlinks
// that leave the repository) are errors, never silently ignored.
//
// # Hostile input
//
// A repository is input from a network. Its size is bounded
// ([MaxFileSize], [MaxHostFiles], [MaxRepoYAMLBytes]), only regular files
// are opened (checked before opening, so a named pipe cannot block), and
// one node budget for the whole repository ([BudgetBase] plus
// [BudgetPerByte] per byte read) bounds what aliases and merge keys can
// expand to. A repository over a limit fails with that one error: nothing
// of it is ever read as "fewer deckies".
//
// # Catalog safety settings
//
// Services carry what rendering needs to make decoys safe by construction:
// capabilities from an allowlist ([ServiceCapabilities]; NET_RAW only with
// a reason, NET_ADMIN never), resource [Limits] with defaults applied,
// ReadOnly and Check. Hosts carry the operator's switches: the [Prune]
// override of the prune guard ([Prune.Allows]), Suspend and Decommission.
//
// # Boundaries
//
// The package is pure: it performs no I/O beyond reading the fs.FS it is
// given, keeps no global state and never panics on any input, so it can be
// fuzzed (FuzzLoad). It must not import Docker, git, networking or any other
// package of this module except through values passed in. Relocalizing
// addresses against the live host is the job of package relocalize.
package desired
