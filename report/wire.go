package report

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

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
	// Verified names who signed the applied commit (the signer's key or
	// identity as the trust policy printed it), or "none" when no trust
	// policy is configured; empty when the agent does not say.
	Verified string `json:"verified,omitempty"`
	// Suspended is true while the agent deliberately applies nothing (an
	// operator's suspension), so the master does not mistake a frozen
	// host for a converged one.
	Suspended bool `json:"suspended,omitempty"`
	// Decommissioned is true in the last heartbeat of an agent that
	// removed everything it owned (decommission: true) and stopped.
	Decommissioned bool `json:"decommissioned,omitempty"`
	// Delivery summarises the sender's recent trouble reaching the master
	// (filled in by [Sender.Flush]; the caller need not set it).
	Delivery    *DeliveryStatus `json:"delivery,omitempty"`
	Status      Status          `json:"status"`
	GeneratedAt time.Time       `json:"generated_at,omitzero"`
}

// Body is one POST to the master: DECNET's HeartbeatRequest shape.
type Body struct {
	Heartbeat
	Lifecycle []Event `json:"lifecycle"`
}

// DeliveryStatus is what the sender knows about reaching the master. It is
// returned by [Sender.Status], stored in the outbox (delivery.json, read by
// [Outbox.Delivery] for the status command) and sent in the heartbeat.
type DeliveryStatus struct {
	// LastAttempt is when the sender last posted (or tried to).
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// LastSuccess is when the master last answered 2xx.
	LastSuccess time.Time `json:"last_success,omitzero"`
	// LastHTTPStatus is the last answer's status code; 0 when the last
	// attempt got no answer (connection refused, TLS, timeout).
	LastHTTPStatus int `json:"last_http_status,omitempty"`
	// LastError says why the last attempt failed; empty after a success.
	LastError string `json:"last_error,omitempty"`
	// ConsecutiveFailures counts attempts since the last 2xx answer.
	ConsecutiveFailures int `json:"consecutive_failures"`
	// AuthFailing is true while the last answer was 401, 403 or 407: the
	// agent's credentials (token, client certificate, proxy account) are
	// wrong or missing. Events stay queued until they are fixed.
	AuthFailing bool `json:"auth_failing,omitempty"`
	// Delivered and SetAside count events since this outbox was created:
	// acknowledged by the master, and set aside on the master's per-event
	// verdict.
	Delivered uint64 `json:"delivered"`
	SetAside  uint64 `json:"set_aside,omitempty"`
	// StuckSeq is the sequence number of a single event the master refuses
	// as too large (413) even alone; it stays queued, blocking those after
	// it, until the master's limit is raised. 0 when none.
	StuckSeq uint64 `json:"stuck_seq,omitempty"`
}

// String is a one-line summary for the status command and logs: "ok", or
// what is failing and since how many attempts.
func (d DeliveryStatus) String() string {
	var s string
	switch {
	case d.LastAttempt.IsZero():
		s = "no attempt yet"
	case d.ConsecutiveFailures == 0 && d.LastError == "":
		s = "ok"
	case d.AuthFailing:
		s = fmt.Sprintf("credentials refused (%d failed attempts): %s", d.ConsecutiveFailures, d.LastError)
	case d.ConsecutiveFailures > 0:
		s = fmt.Sprintf("failing (%d failed attempts): %s", d.ConsecutiveFailures, d.LastError)
	default:
		s = d.LastError
	}
	if !d.LastSuccess.IsZero() {
		s += "; last success " + d.LastSuccess.UTC().Format(time.RFC3339)
	}
	if d.StuckSeq != 0 {
		s += fmt.Sprintf("; event seq %d too large for the master", d.StuckSeq)
	}
	return s
}

// Refusal is the master's per-event verdict: the JSON body of a 422
// Unprocessable Entity answer (Content-Type application/json) saying which
// events of the posted body are malformed. The master stores nothing of a
// body it answers with a Refusal. The agent sets aside exactly the events
// named here that were in the body it posted (matched by event_id and seq)
// and resends the rest; see docs/report-protocol.md.
type Refusal struct {
	Error    string          `json:"error"`
	Rejected []RejectedEvent `json:"rejected"`
}

// RejectedEvent names one malformed event and why it is refused.
type RejectedEvent struct {
	EventID string `json:"event_id"`
	Seq     uint64 `json:"seq"`
	Field   string `json:"field,omitempty"`
	Reason  string `json:"reason"`
}

// RefusalStatus is the status code of a per-event verdict.
const RefusalStatus = http.StatusUnprocessableEntity

// WriteRefusal answers a report with the per-event verdict r: status 422
// and r as JSON. For the master.
func WriteRefusal(w http.ResponseWriter, r Refusal) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(RefusalStatus)
	_ = json.NewEncoder(w).Encode(r)
}
