// Package hostnet reads the worker's live network: which interface faces
// the decoy LAN, its IPv4 subnet, the gateway on that same interface and
// the worker's own addresses there.
//
// # Contract
//
// [Detector.Detect] uses netlink (never the text output of the ip command)
// and fails with a [*DetectError] that names the override to set when the
// answer is missing or ambiguous: no default route, several candidate
// interfaces, no IPv4 address.
//
// [Probe] is duplicate-address detection (RFC 5227 probes from 0.0.0.0):
// one ARP burst covers any number of addresses, answers are matched by
// sender address under one deadline per round, and a round that lost
// frames fails rather than call an address free. [Resolve] asks the LAN,
// from the host helper link and the worker's own address, which MAC
// answers for given decky addresses: the LAN's view of a decky's identity.
// A decky with a known MAC is asked at that MAC alone, and the rest of the
// LAN by a broadcast sent on the worker's NIC, so a check of n macvlan
// deckies costs about 2n frames, not the n*n of broadcasts from the helper.
// [Knocker] checks a decky's declared TCP ports by half-open handshakes
// from the helper link: the decoy's service is never woken and never
// sees a connection. [Detector.EnsureHelper] keeps that helper link.
//
// # Boundaries
//
// hostnet reads kernel state and sends ARP and TCP SYNs on the decoy LAN
// (SYNs only to the addresses it is given); the only
// link and routes it creates are the helper's. It does not create Docker
// networks and must not import Docker, apply or report. The pure
// address allocation it feeds lives in package relocalize.
package hostnet
