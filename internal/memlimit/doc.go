// Package memlimit gives the agent a soft memory limit (the Go runtime's
// GOMEMLIMIT) when the environment sets none, and hands memory back to the
// system after a pass.
//
// The agent is a small daemon beside hundreds of decoy containers on a
// worker of a few cores and little memory. Go's collector alone grows the
// heap to twice what is live after each cycle; a pass that briefly holds a
// fleet repository, a container listing and Compose projects leaves the
// process's RSS at that high-water mark for hours. Two things keep it near
// the process-start floor instead (docs/benchmarks.md, "Memory"):
//
//   - SetDefault, once at start: a soft limit derived from the cgroup's
//     memory limit when the agent runs under one (90% of the tightest
//     memory.max (v2) or memory.limit_in_bytes (v1) from its own cgroup up
//     to the root), else DefaultLimit (256 MiB). GOMEMLIMIT in the
//     environment always wins, and GOMEMLIMIT=off disables the limit. The
//     limit is soft: the runtime collects harder as the heap nears it (and
//     caps that effort at about half the CPU), it never fails an
//     allocation.
//   - AfterPass, after each daemon pass: a collection that returns freed
//     pages to the system (runtime/debug.FreeOSMemory), so nothing a pass
//     held stays resident while the daemon idles until the next one.
package memlimit
