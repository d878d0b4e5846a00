// Package state is the agent's small persistent memory in the state
// directory: the addresses it chose, what it last applied and verified,
// and each decky's failures at its current desired hash. It is written
// atomically after every pass, so a crash loses at most that pass.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/decnet/pull-agent/internal/atomicfile"
)

// Version of the file layout.
const Version = 1

// File is the state file's name inside the state directory.
const File = "state.json"

// Address is a decky's chosen address on the decoy LAN.
type Address struct {
	IP  netip.Addr `json:"ip"`
	MAC string     `json:"mac"`
}

// Failure counts a decky's failed attempts at one desired hash.
type Failure struct {
	Hash  string `json:"hash"`
	Count int    `json:"count"`
	Error string `json:"error"`
	// Quarantined is set when Count reached the retry budget at Hash: the
	// decky is left alone (and was reported once) until its desired hash
	// changes. Stored as "reported" for compatibility with older files.
	Quarantined bool      `json:"reported"`
	Last        time.Time `json:"last"`
}

// State is the agent's memory between passes.
type State struct {
	Version    int          `json:"version"`
	Host       string       `json:"host"`
	Subnet     netip.Prefix `json:"subnet,omitzero"` // LAN the addresses belong to
	LastCommit string       `json:"last_commit,omitempty"`
	LastRemote string       `json:"last_remote,omitempty"`
	// Verified names who signed the last fetched commit, or "none" when no
	// trust policy is configured.
	Verified    string             `json:"verified,omitempty"`
	LastFetchOK time.Time          `json:"last_fetch_ok,omitzero"`
	LastApply   time.Time          `json:"last_apply,omitzero"`
	LastClean   bool               `json:"last_clean"` // last pass converged every decky
	Addresses   map[string]Address `json:"addresses"`
	Applied     map[string]string  `json:"applied"` // decky -> hash applied and verified
	Failures    map[string]Failure `json:"failures"`
}

// New returns the empty state of host: what Load returns when there is no
// state file yet.
func New(host string) *State {
	return &State{Version: Version, Host: host, Addresses: map[string]Address{}, Applied: map[string]string{}, Failures: map[string]Failure{}}
}

// Load reads the state file in dir; a missing file gives an empty state.
func Load(dir, host string) (*State, error) {
	s := New(host)
	data, err := os.ReadFile(filepath.Join(dir, File))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(data, s); err != nil {
			return nil, fmt.Errorf("state file %s is corrupt (%v); move it away to start afresh", filepath.Join(dir, File), err)
		}
		if s.Host != host {
			return nil, fmt.Errorf("state directory %s belongs to host %q, not %q; use another --state-dir", dir, s.Host, host)
		}
	}
	if s.Addresses == nil {
		s.Addresses = map[string]Address{}
	}
	if s.Applied == nil {
		s.Applied = map[string]string{}
	}
	if s.Failures == nil {
		s.Failures = map[string]Failure{}
	}
	return s, nil
}

// Save writes the state atomically.
func (s *State) Save(dir string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, File), data, 0o600)
}

// Previous returns the addresses to keep sticky on subnet: addresses of
// another subnet are forgotten (the LAN changed under the worker).
func (s *State) Previous(subnet netip.Prefix) map[string]netip.Addr {
	out := map[string]netip.Addr{}
	for name, a := range s.Addresses {
		if subnet.Contains(a.IP) {
			out[name] = a.IP
		}
	}
	return out
}

// Clone returns a deep copy, so a pure function can derive a new state
// without touching the one the caller holds.
func (s *State) Clone() *State {
	c := *s
	c.Addresses = make(map[string]Address, len(s.Addresses))
	for k, v := range s.Addresses {
		c.Addresses[k] = v
	}
	c.Applied = make(map[string]string, len(s.Applied))
	for k, v := range s.Applied {
		c.Applied[k] = v
	}
	c.Failures = make(map[string]Failure, len(s.Failures))
	for k, v := range s.Failures {
		c.Failures[k] = v
	}
	return &c
}

// Quarantined reports whether decky used up its retry budget at hash. It
// is the one place "quarantined" is derived: the pass's record step sets
// Failure.Quarantined, and the diff, status and heartbeat all read it
// through here (or through Failure.Quarantined for "at any hash").
func (s *State) Quarantined(decky, hash string) bool {
	f, ok := s.Failures[decky]
	return ok && f.Quarantined && f.Hash == hash
}
