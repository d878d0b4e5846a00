// Package relocalize turns a host's desired deckies, written for whatever
// LAN the operator had in mind, into addresses that are safe on the LAN the
// worker is actually on.
//
// # Contract
//
// [Allocate] is a pure, deterministic function: the same [Input] always
// gives the same [Result]. Addresses are sticky (a decky keeps its previous
// address while it stays valid), new deckies take the lowest free address
// of the pool in name order (never list order), and network, broadcast,
// gateway, the worker's own addresses, reserved addresses (held by
// containers the agent does not own, or found in use on the LAN) and
// addresses outside the pool are never handed out. An address held by the
// containers of one of the agent's own deckies ([Input.Held], in any
// state) is never handed to another decky: a decky being removed in the
// same pass, or failed but left running, keeps its address until its
// containers are gone (reserve and pick another, rather than remove
// first). A decky that cannot be placed gets its own error; the others are
// unaffected.
//
// [AllocateProbed] adds duplicate-address detection: every address used
// for the first time has been probed in this pass and found free. Probes
// go out in bursts (the needed addresses plus a look-ahead that doubles on
// conflicts), so a dense LAN costs a few rounds; a decky for which no free
// address is found fails with a [*PoolExhaustedError] counting what
// answered, or an [*UnprobedError] past the probe budget.
//
// Every decky also gets a stable, locally administered MAC address derived
// from the host and decky names ([MAC]), so recreating a decky does not
// change how it looks on the LAN.
//
// # Boundaries
//
// The package is pure and fuzzed (FuzzAllocate). Detecting the LAN (netlink),
// probing addresses (ARP) and persisting assignments are the caller's job
// (packages hostnet and cmd/pull-agent); this package must not import
// Docker, netlink, sockets or the file system.
package relocalize
