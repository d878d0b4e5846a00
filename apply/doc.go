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
// # Safe by construction
//
// Every decky container is rendered with `cap_drop: [ALL]`,
// `security_opt: [no-new-privileges:true]` and pids/memory/CPU limits
// (swap limited to the memory limit):
//
//   - The base gets back NET_ADMIN alone (DECNET's base holds it for the
//     OS-fingerprint work inside the decky's own network namespace) and
//     the fixed [BaseLimits]: 32 pids, 64 MiB, 0.25 CPU.
//   - A service gets back exactly the catalog's cap_add, nothing of
//     Docker's default set (so no NET_RAW, MKNOD, DAC_OVERRIDE, SETFCAP,
//     ... unless declared): NET_RAW only with the catalog's reason, never
//     NET_ADMIN. Its limits come from the catalog ([DefaultServiceLimits]:
//     256 pids, 256 MiB, 1 CPU); read_only: true gives it a read-only root
//     with a 16 MiB noexec /tmp. A decoy binding a port below 1024 needs
//     no capability: Docker sets net.ipv4.ip_unprivileged_port_start=0 in
//     the base's namespace, which the services share.
//   - Declared ports are never published on the worker (the decky holds
//     its own LAN address); they are carried in engine.LabelPorts, so they
//     are hashed and visible to status, and probed by the LAN check.
//
// All of these are in the per-container hash, so a change rolls out.
//
// # Builds never reach a network
//
// Before an image is built, its Dockerfile is read and every image it
// names (FROM, COPY --from, RUN --mount from=) is resolved: scratch, an
// earlier stage, an image present on the worker, or an image built from
// the same repository in the pass (built first). `# syntax=` directives,
// ADD from URLs or git, FROM --platform and FROM variables that no ARG
// default or build argument resolves are refused. A refusal
// ([BuildRefusedError], file:line and image) fails the deckies needing the
// image before the Engine is asked anything. The build runs with network
// "none" for RUN steps and never pulls.
//
// # Verified from the LAN
//
// With [Options].LANCheck set, success also means that each declared TCP
// port of each service (check: true, the default) accepts a connection at
// the decky's own address, from the worker ([DialChecker]); UDP ports are
// listed, never probed. A port that does not answer within the deadline
// fails the decky with an error naming the service and the port (22/tcp).
//
// [CheckIdentity] looks at running deckies the same way on every resync:
// each address must answer ARP (asked through a [Resolver] from the host
// helper link) with exactly the decky's derived MAC, then its declared
// TCP ports must accept a connection. A [Drift] the decky itself can put
// right (no ARP answer, another MAC, a closed port) is repaired by
// recreating the whole decky ([DiffInput].Drifted turns unchanged into
// repair); a second machine answering for the address is reported only,
// never fought over.
//
// # Boundaries
//
// apply does not fetch git, parse YAML, detect networks or send reports.
// It reaches Docker only through the [Engine] interface (satisfied by
// package engine) and removes deckies only through package reaper.
package apply
