package report

import "time"

// Event is one lifecycle result of one decky.
type Event struct {
	EventID    string `json:"event_id"` // idempotency key
	Seq        uint64 `json:"seq"`      // per-host, strictly increasing
	Host       string `json:"host"`
	DeckyName  string `json:"decky_name"`
	Operation  string `json:"operation"` // deploy, mutate, teardown, repair
	Status     string `json:"status"`    // running, succeeded, failed, quarantined
	Error      string `json:"error,omitempty"`
	Commit     string `json:"commit,omitempty"`
	ConfigHash string `json:"config_hash,omitempty"`
	// Note explains an address that differs from the repository's or from
	// the first choice (relocalized, moved after a conflict on the LAN).
	Note      string    `json:"note,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// CompletedAt is DECNET's field: UTC ISO-8601 with offset.
	CompletedAt time.Time `json:"completed_at,omitzero"`
}

// DeckyStatus is one decky as the heartbeat describes it.
type DeckyStatus struct {
	Name       string   `json:"name"`
	IP         string   `json:"ip,omitempty"`
	MAC        string   `json:"mac,omitempty"`
	Services   []string `json:"services"`
	Hostname   string   `json:"hostname,omitempty"`
	Archetype  string   `json:"archetype,omitempty"`
	NmapOS     string   `json:"nmap_os,omitempty"`
	Distro     string   `json:"distro,omitempty"`
	HostUUID   string   `json:"host_uuid,omitempty"`
	ConfigHash string   `json:"config_hash,omitempty"`
}

// Runtime is one decky's observed state: DECNET's {running, services}
// plus the base container and an aggregate state.
type Runtime struct {
	Running  bool              `json:"running"`
	State    string            `json:"state"` // running, degraded, failed, absent, quarantined
	Base     string            `json:"base,omitempty"`
	Services map[string]string `json:"services"`
	Error    string            `json:"error,omitempty"`
}

// Status is DECNET's heartbeat "status" object.
type Status struct {
	Deployed bool               `json:"deployed"`
	Deckies  []DeckyStatus      `json:"deckies"`
	Runtime  map[string]Runtime `json:"runtime,omitempty"`
}

// Heartbeat is the agent's current state.
type Heartbeat struct {
	HostUUID      string    `json:"host_uuid"`
	Host          string    `json:"host"`
	AgentVersion  string    `json:"agent_version"`
	Commit        string    `json:"commit,omitempty"`       // last applied commit
	Remote        string    `json:"remote,omitempty"`       // redacted URL that served it
	LastFetchOK   time.Time `json:"last_fetch_ok,omitzero"` // last successful fetch
	LastApply     time.Time `json:"last_apply,omitzero"`    // last completed apply
	PassError     string    `json:"pass_error,omitempty"`   // why the last pass could not run
	OutboxDepth   int       `json:"outbox_depth"`           // events not yet acknowledged
	OutboxRejects int       `json:"outbox_rejected"`        // events the master refused
	Status        Status    `json:"status"`
	GeneratedAt   time.Time `json:"generated_at,omitzero"`
}

// Body is one POST to the master: DECNET's HeartbeatRequest shape.
type Body struct {
	Heartbeat
	Lifecycle []Event `json:"lifecycle"`
}
