package report

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	stdsync "sync"

	"github.com/decnet/pull-agent/internal/atomicfile"
)

// DefaultMaxEvents bounds the outbox; see Outbox.Add for the policy.
const DefaultMaxEvents = 100000

// ErrOutboxFull is returned by Add when the outbox holds MaxEvents events.
var ErrOutboxFull = errors.New("report outbox is full")

// Outbox is a durable FIFO of events in a directory: one JSON file per
// event named by its zero-padded sequence number, plus the latest heartbeat.
// Writes are atomic (temp file, fsync, rename, directory fsync), so a crash
// leaves every event either fully present or absent.
type Outbox struct {
	dir       string
	host      string
	MaxEvents int

	mu   stdsync.Mutex
	next uint64 // next sequence number
}

const (
	seqFile       = "seq"
	heartbeatFile = "heartbeat.json"
	rejectedDir   = "rejected"
	eventSuffix   = ".json"
)

// OpenOutbox opens (creating) the outbox in dir for host.
func OpenOutbox(dir, host string) (*Outbox, error) {
	if err := os.MkdirAll(filepath.Join(dir, rejectedDir), 0o700); err != nil {
		return nil, err
	}
	o := &Outbox{dir: dir, host: host, MaxEvents: DefaultMaxEvents}
	// The next number is above both the stored counter and every event on
	// disk: an event file written just before a crash that lost the counter
	// update is never renumbered, so the master sees no duplicate and no gap.
	n, _ := readUint(filepath.Join(dir, seqFile))
	for _, d := range []string{dir, filepath.Join(dir, rejectedDir)} {
		seqs, err := listSeqs(d)
		if err != nil {
			return nil, err
		}
		if len(seqs) > 0 && seqs[len(seqs)-1] > n {
			n = seqs[len(seqs)-1]
		}
	}
	o.next = n + 1
	return o, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

func listSeqs(dir string) ([]uint64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, eventSuffix) || name == heartbeatFile {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSuffix(name, eventSuffix), 10, 64); err == nil {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

func eventName(seq uint64) string { return fmt.Sprintf("%020d%s", seq, eventSuffix) }

// Add assigns the event its ID and sequence number and stores it durably;
// only then may anything try to send it. When the outbox already holds
// MaxEvents events, Add refuses with ErrOutboxFull rather than dropping an
// older event: lifecycle history is never lost silently, and the caller
// logs the refusal (the decky's state still reaches the master through the
// heartbeat).
func (o *Outbox) Add(e Event) (Event, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.MaxEvents > 0 {
		seqs, err := listSeqs(o.dir)
		if err != nil {
			return e, err
		}
		if len(seqs) >= o.MaxEvents {
			return e, fmt.Errorf("%w (%d events); dropping event for %s %s", ErrOutboxFull, len(seqs), e.DeckyName, e.Operation)
		}
	}
	e.Seq = o.next
	e.Host = o.host
	if e.EventID == "" {
		e.EventID = newID()
	}
	data, err := json.Marshal(e)
	if err != nil {
		return e, err
	}
	if err := atomicfile.Write(filepath.Join(o.dir, eventName(e.Seq)), data, 0o600); err != nil {
		return e, fmt.Errorf("failed to store event: %w", err)
	}
	o.next++
	// The counter only matters once the outbox drains; losing this write
	// is harmless (see OpenOutbox).
	_ = atomicfile.Write(filepath.Join(o.dir, seqFile), []byte(strconv.FormatUint(e.Seq, 10)), 0o600)
	return e, nil
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = (b[6] & 0x0f) | 0x40 // UUIDv4 layout, for masters that expect one
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Pending returns up to max stored events in sequence order (all if max<=0).
func (o *Outbox) Pending(max int) ([]Event, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	seqs, err := listSeqs(o.dir)
	if err != nil {
		return nil, err
	}
	if max > 0 && len(seqs) > max {
		seqs = seqs[:max]
	}
	out := make([]Event, 0, len(seqs))
	for _, s := range seqs {
		data, err := os.ReadFile(filepath.Join(o.dir, eventName(s)))
		if err != nil {
			return nil, err
		}
		var e Event
		if err := json.Unmarshal(data, &e); err != nil {
			// A file that cannot be decoded can never be sent: set it aside.
			_ = os.Rename(filepath.Join(o.dir, eventName(s)), filepath.Join(o.dir, rejectedDir, eventName(s)))
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// Depth returns how many events wait to be sent.
func (o *Outbox) Depth() int {
	seqs, _ := listSeqs(o.dir)
	return len(seqs)
}

// Rejected returns how many events the master refused.
func (o *Outbox) Rejected() int {
	seqs, _ := listSeqs(filepath.Join(o.dir, rejectedDir))
	return len(seqs)
}

// Ack deletes delivered events.
func (o *Outbox) Ack(events []Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range events {
		if err := os.Remove(filepath.Join(o.dir, eventName(e.Seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return atomicfile.SyncDir(o.dir)
}

// Reject moves events the master refused out of the queue, keeping them.
func (o *Outbox) Reject(events []Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range events {
		if err := os.Rename(filepath.Join(o.dir, eventName(e.Seq)), filepath.Join(o.dir, rejectedDir, eventName(e.Seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return atomicfile.SyncDir(o.dir)
}

// SetHeartbeat stores the latest heartbeat; only the newest is kept.
func (o *Outbox) SetHeartbeat(h Heartbeat) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(o.dir, heartbeatFile), data, 0o600)
}

// Heartbeat returns the stored heartbeat, if any.
func (o *Outbox) Heartbeat() (Heartbeat, bool) {
	var h Heartbeat
	data, err := os.ReadFile(filepath.Join(o.dir, heartbeatFile))
	if err != nil || json.Unmarshal(data, &h) != nil {
		return h, false
	}
	return h, true
}
