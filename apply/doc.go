// Package apply turns a host's relocalized desired deckies into running
// containers through the Compose library, touching exactly what changed.
//
// # Pipeline
//
//   - [ResolveImages] decides the image of every catalog entry: a reference
//     used as is, or a build context tagged by its content hash.
//   - [Render] (pure) renders each decky in DECNET's Compose shape, one base
//     container holding the decky's address and MAC on the decoy network and
//     one container per service sharing the base's network namespace, and
//     hashes the normalized inputs of every container.
//   - [Diff] (pure) compares the rendering with the containers on the Engine
//     and returns a typed [ChangeSet]: create, update (which services,
//     whether the base is recreated), repair, remove, unchanged, failed.
//   - [Applier.Apply] applies the change set decky by decky with bounded
//     parallelism, so one broken decky never stops the others, and reports
//     success only after an observed steady state.
//
// # Boundaries
//
// apply does not fetch git, parse YAML, detect networks or send reports.
// It reaches Docker only through the [Engine] interface (satisfied by
// package engine) and removes deckies only through package reaper.
package apply
