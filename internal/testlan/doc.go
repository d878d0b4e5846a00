// Package testlan builds throwaway simulated LANs for tests: a veth pair
// whose root-namespace end serves as the macvlan parent, and a network
// namespace on the other end playing a machine on the LAN. Everything
// lives in the documentation ranges (RFC 5737) and is removed by
// t.Cleanup; nothing leaves the machine.
//
// It also holds the gates that decide whether a test needing root, netns or
// a Docker Engine runs: outside CI they skip, in CI (CI=true) they fail, so a
// CI run can never pass by skipping the real tests.
package testlan
