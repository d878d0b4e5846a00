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
// # Boundaries
//
// hostnet only reads kernel state; it does not create links, routes or
// Docker networks and must not import Docker, apply or report. The pure
// address allocation it feeds lives in package relocalize.
package hostnet
