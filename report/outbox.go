package report

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
// event named by its zero-padded sequence number, plus the latest heartbeat
// and the sender's delivery status. Writes are atomic (temp file, fsync,
// rename, directory fsync), so a crash leaves every event either fully
// present or absent.
//
// Every method is safe for concurrent use: a /healthz or metrics goroutine
// may call Depth, Rejected or Delivery while a pass adds and sends events.
type Outbox struct {
	dir  string
	host string
	log  *slog.Logger
	// MaxEvents bounds the queue (0: unbounded). Set it before the outbox
	// is shared; OutboxOptions.MaxEvents is the race-free way.
	MaxEvents int

	mu   stdsync.Mutex
	next uint64 // next sequence number
}

const (
	seqFile       = "seq"
	heartbeatFile = "heartbeat.json"
	deliveryFile  = "delivery.json"
	rejectedDir   = "rejected"
	eventSuffix   = ".json"
	reasonSuffix  = ".reason"
	tmpPrefix     = ".tmp-" // internal/atomicfile's temporary files
)

// OutboxOptions configure OpenOutboxWith. The zero value is a reader's
// open: nothing is removed, nothing is logged.
type OutboxOptions struct {
	// Log receives what the outbox does on its own: leftovers removed at
	// open, corrupt event files set aside. Nil discards.
	Log *slog.Logger
	// MaxEvents bounds the queue; 0 means DefaultMaxEvents, negative
	// means unbounded.
	MaxEvents int
	// Owner says the caller is the one writer of this outbox (it holds the
	// state directory's lock): temporary files left by a crash (.tmp-*) are
	// removed at open. Leave it false in readers such as `status`, which
	// run beside a daemon whose writes in progress use such files.
	Owner bool
}

// OpenOutbox opens (creating) the outbox in dir for host, as a reader that
// may also write: it removes no leftovers and logs nothing. The agent that
// owns the outbox uses OpenOutboxWith with Owner set.
func OpenOutbox(dir, host string) (*Outbox, error) {
	return OpenOutboxWith(dir, host, OutboxOptions{})
}

// OpenOutboxWith opens (creating) the outbox in dir for host.
func OpenOutboxWith(dir, host string, opt OutboxOptions) (*Outbox, error) {
	if err := os.MkdirAll(filepath.Join(dir, rejectedDir), 0o700); err != nil {
		return nil, err
	}
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := &Outbox{dir: dir, host: host, log: log.With("component", "outbox"), MaxEvents: DefaultMaxEvents}
	switch {
	case opt.MaxEvents > 0:
		o.MaxEvents = opt.MaxEvents
	case opt.MaxEvents < 0:
		o.MaxEvents = 0
	}
	if opt.Owner {
		if err := o.removeLeftovers(); err != nil {
			return nil, err
		}
	}
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

// removeLeftovers deletes the temporary files of atomic writes that a crash
// interrupted. They are never part of the outbox: a write becomes visible
// only by its rename, so such a file is the half of a write that did not
// happen (the caller of that write never got a success).
func (o *Outbox) removeLeftovers() error {
	for _, d := range []string{o.dir, filepath.Join(o.dir, rejectedDir)} {
		entries, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		removed := 0
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tmpPrefix) || !e.Type().IsRegular() {
				continue
			}
			if err := os.Remove(filepath.Join(d, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("failed to remove a crash leftover in the outbox: %w", err)
			}
			o.log.Info("removed an interrupted write left by a crash", "file", filepath.Join(d, e.Name()))
			removed++
		}
		if removed > 0 {
			if err := atomicfile.SyncDir(d); err != nil {
				return err
			}
		}
	}
	return nil
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
		if !strings.HasSuffix(name, eventSuffix) || name == heartbeatFile || name == deliveryFile {
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

// Add assigns the event its ID and sequence number, caps its text fields
// (Event.Capped) and stores it durably; only then may anything try to send
// it. The stored event is returned. When the outbox already holds
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
	e = e.Capped()
	data, err := json.Marshal(e)
	if err != nil {
		return e, err
	}
	if err := atomicfile.Write(filepath.Join(o.dir, eventName(e.Seq)), data, 0o600); err != nil {
		return e, fmt.Errorf("failed to store event: %w", err)
	}
	o.next++
	// The counter only matters once the outbox drains. A process killed
	// before this write leaves the event file, whose number OpenOutbox
	// counts; Ack and SetAside then store the counter before that file goes,
	// so a number is never handed out twice.
	_ = o.storeCounterLocked(e.Seq)
	return e, nil
}

// storeCounterLocked makes the stored counter at least seq.
func (o *Outbox) storeCounterLocked(seq uint64) error {
	path := filepath.Join(o.dir, seqFile)
	if n, err := readUint(path); err == nil && n >= seq {
		return nil
	}
	return atomicfile.Write(path, []byte(strconv.FormatUint(seq, 10)), 0o600)
}

// keepCounterLocked stores the counter before events leave the queue: once
// their files are gone, it is the only memory of their numbers.
func (o *Outbox) keepCounterLocked(events []Event) error {
	var top uint64
	for _, e := range events {
		top = max(top, e.Seq)
	}
	if top == 0 {
		return nil
	}
	if err := o.storeCounterLocked(top); err != nil {
		return fmt.Errorf("failed to store the outbox counter: %w", err)
	}
	return nil
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = (b[6] & 0x0f) | 0x40 // UUIDv4 layout, for masters that expect one
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Pending returns up to limit stored events in sequence order (all if
// limit<=0). A file that cannot be decoded can never be sent: it is moved to
// rejected/ with a reason file beside it, and logged with its name.
func (o *Outbox) Pending(limit int) ([]Event, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	seqs, err := listSeqs(o.dir)
	if err != nil {
		return nil, err
	}
	out := []Event{} // "lifecycle": [], never null, on the wire
	for _, s := range seqs {
		if limit > 0 && len(out) == limit {
			break
		}
		path := filepath.Join(o.dir, eventName(s))
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var e Event
		if err := json.Unmarshal(data, &e); err != nil || e.Seq != s {
			if err == nil {
				err = fmt.Errorf("file holds seq %d", e.Seq)
			}
			o.log.Error("corrupt outbox event set aside in rejected/", "file", path, "seq", s, "err", err)
			if err := o.setAsideLocked(s, "corrupt outbox file: "+err.Error()); err != nil {
				return nil, err
			}
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// Depth returns how many events wait to be sent (0 when the directory
// cannot be read).
func (o *Outbox) Depth() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	seqs, _ := listSeqs(o.dir)
	return len(seqs)
}

// Rejected returns how many events are set aside in rejected/: refused one
// by one by the master's per-event verdict, or unreadable on disk.
func (o *Outbox) Rejected() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	seqs, _ := listSeqs(filepath.Join(o.dir, rejectedDir))
	return len(seqs)
}

// RejectedRecord is one event set aside in rejected/: the file as stored
// (it may be unreadable; capped at 16 KiB) and the reason kept beside it.
type RejectedRecord struct {
	Seq          uint64
	Data, Reason string
}

// RejectedRecords reads every event set aside, in sequence order, so that
// an agent about to delete its outbox (decommission) can log them.
func (o *Outbox) RejectedRecords() ([]RejectedRecord, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	rej := filepath.Join(o.dir, rejectedDir)
	seqs, err := listSeqs(rej)
	if err != nil {
		return nil, err
	}
	var out []RejectedRecord
	for _, s := range seqs {
		r := RejectedRecord{Seq: s}
		data, err := os.ReadFile(filepath.Join(rej, eventName(s)))
		if err != nil {
			return out, err
		}
		r.Data = string(data[:min(len(data), 16<<10)])
		if reason, err := os.ReadFile(filepath.Join(rej, strings.TrimSuffix(eventName(s), eventSuffix)+reasonSuffix)); err == nil {
			r.Reason = strings.TrimSpace(string(reason))
		}
		out = append(out, r)
	}
	return out, nil
}

// Ack deletes delivered events.
func (o *Outbox) Ack(events []Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.keepCounterLocked(events); err != nil {
		return err
	}
	for _, e := range events {
		if err := os.Remove(filepath.Join(o.dir, eventName(e.Seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return atomicfile.SyncDir(o.dir)
}

// Reject moves events out of the queue into rejected/, keeping them.
//
// Deprecated: use SetAside, which records why; the sender sets aside only
// the events a per-event verdict of the master names.
func (o *Outbox) Reject(events []Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range events {
		if err := o.setAsideLocked(e.Seq, ""); err != nil {
			return err
		}
	}
	return nil
}

// SetAside moves one event out of the queue into rejected/ and writes
// reason beside it (<seq>.reason), for an operator who wants to fix and
// resend it (move the .json file back and restart the agent).
func (o *Outbox) SetAside(e Event, reason string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.setAsideLocked(e.Seq, reason)
}

func (o *Outbox) setAsideLocked(seq uint64, reason string) error {
	if err := o.storeCounterLocked(seq); err != nil {
		return err
	}
	rej := filepath.Join(o.dir, rejectedDir)
	if reason != "" {
		name := strings.TrimSuffix(eventName(seq), eventSuffix) + reasonSuffix
		if err := atomicfile.Write(filepath.Join(rej, name), []byte(reason+"\n"), 0o600); err != nil {
			return err
		}
	}
	if err := os.Rename(filepath.Join(o.dir, eventName(seq)), filepath.Join(rej, eventName(seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := atomicfile.SyncDir(rej); err != nil {
		return err
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

// SetDelivery stores the sender's delivery status, for the status command
// (another process) and for the next run of the agent.
func (o *Outbox) SetDelivery(d DeliveryStatus) error {
	data, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(o.dir, deliveryFile), data, 0o600)
}

// Delivery returns the stored delivery status, if any.
func (o *Outbox) Delivery() (DeliveryStatus, bool) {
	var d DeliveryStatus
	data, err := os.ReadFile(filepath.Join(o.dir, deliveryFile))
	if err != nil || json.Unmarshal(data, &d) != nil {
		return d, false
	}
	return d, true
}
