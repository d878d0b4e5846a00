package engine

import (
	"errors"
	"net/netip"
	"time"
)

// ErrNotOwned is returned when an operation would touch a container or
// network that does not carry this agent's owner label.
var ErrNotOwned = errors.New("not owned by this agent")

// Container is what the agent needs to know about one container.
type Container struct {
	ID      string
	Name    string // without the leading slash
	Image   string
	Labels  map[string]string
	State   string // created, running, restarting, exited, paused, dead
	Status  string // human text, e.g. "Exited (1) 3 seconds ago"
	Created time.Time
	// Networks maps network name to the container's IPv4 address on it.
	Networks map[string]netip.Addr
}

// Owner returns the container's owner label ("" when foreign).
func (c Container) Owner() string { return c.Labels[LabelOwner] }

// Decky returns the decky the container belongs to ("" when none).
func (c Container) Decky() string { return c.Labels[LabelDecky] }

// State is a container's detailed runtime state, for steady-state checks.
type State struct {
	ID           string
	Name         string
	Status       string // running, restarting, exited, ...
	Running      bool
	Restarting   bool
	ExitCode     int
	Error        string
	RestartCount int
	StartedAt    time.Time
	Health       string // "" when the image has no health check
	OOMKilled    bool
}

// NetworkSpec is the desired decoy network.
type NetworkSpec struct {
	Name    string
	Driver  string // macvlan or ipvlan
	Parent  string // parent interface
	Subnet  netip.Prefix
	Gateway netip.Addr
}
