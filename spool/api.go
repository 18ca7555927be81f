package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Lanes is the number of priority lanes: 0 (highest) … 9 (lowest).
const Lanes = 10

// Durability says when a Put returns relative to fsync.
type Durability uint8

const (
	// Sync: Put returns after the transaction holding the message is
	// fsync'd. Concurrent Puts share one transaction (group commit).
	Sync Durability = iota
	// Interval: Put returns after the transaction is written to the OS; the
	// file is fsync'd at most every Options.FsyncInterval. A power cut (not a
	// process crash) can lose the last FsyncInterval of acknowledged
	// messages.
	Interval
)

// Overflow is the policy applied when a Put would exceed MaxBytes or
// MaxMessages.
type Overflow uint8

const (
	// Block: Put waits up to Options.BlockTimeout for space, then fails with
	// ErrFull.
	Block Overflow = iota
	// Reject: Put fails at once with ErrFull.
	Reject
	// DropOldest: the oldest messages (lowest id, any lane) are deleted to
	// make room; each is counted in Stats.Dropped[DropReasonOldest].
	DropOldest
	// DropLowestPriority: messages of the lowest-priority non-empty lane,
	// oldest first, are deleted to make room, but never from a lane of higher
	// priority than the incoming message: if only those are left, Put fails
	// with ErrFull. Counted in Stats.Dropped[DropReasonLowestPriority].
	DropLowestPriority
)

// ExpiryAction says what happens to a message whose ExpiresAt has passed.
type ExpiryAction uint8

const (
	ExpireDrop       ExpiryAction = iota // delete, count in Stats.Dropped[DropReasonExpired]
	ExpireDeadLetter                     // move to the DLQ with reason "expired"
)

// Drop reasons, indexes into Stats.Dropped.
const (
	DropReasonExpired = iota
	DropReasonOldest
	DropReasonLowestPriority
	dropReasons
)

// DropReasonNames are the metric label values of the drop reasons.
var DropReasonNames = [dropReasons]string{"expired", "drop_oldest", "drop_lowest_priority"}

// Options configure a Spool. The zero value is usable: every zero field
// takes the default written next to it.
type Options struct {
	Durability    Durability
	FsyncInterval time.Duration // Interval durability only; default 100ms

	MaxBytes        int64         // cap on stored bytes (queue + DLQ + retained); default 1 GiB; <0: no cap
	MaxMessages     int64         // cap on queued messages; 0: no cap
	MaxMessageBytes int           // largest Entry.Data; default 1 MiB
	Overflow        Overflow      // default Block
	BlockTimeout    time.Duration // Block policy; default 5s

	DedupeWindow     time.Duration // how long a dedupe key is remembered; default 10m; <0: off
	DedupeMaxEntries int           // cap on remembered keys, oldest forgotten first (one commit's keys together); default 1,000,000

	LeaseTimeout time.Duration // a leased message not acked or nacked within this comes back; default 30s
	// LowerLaneShare is the minimum share (0..1) of leased messages that go
	// to lower lanes while a higher lane has a backlog, so that lower lanes
	// are never starved forever. Default 0.1; <0: strict priority.
	LowerLaneShare float64

	// StateMaxBytes caps each kind of local state (keys, values and 12
	// bytes of record header); 0: no cap. It is not part of MaxBytes.
	StateMaxBytes [StateKinds]int64

	Expired         ExpiryAction  // default ExpireDrop
	RetainDelivered time.Duration // keep acked messages this long for Replay; 0: off

	// LockTimeout bounds the wait for the file lock held by another process;
	// default 1s, after which Open fails with ErrLocked.
	LockTimeout time.Duration
	// Verify is when Open checks the whole file for damage: VerifyAuto
	// (default) after an unclean shutdown only, VerifyAlways, VerifyNever.
	Verify Verify

	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now; tests inject a clock
}

// Verify selects when Open checks the file (see Options.Verify).
type Verify uint8

const (
	VerifyAuto Verify = iota
	VerifyAlways
	VerifyNever
)

// Entry is what a producer puts.
type Entry struct {
	Priority  uint8     // 0 (highest) … 9
	ExpiresAt time.Time // zero: never
	DedupeKey string    // empty: no de-duplication; at most 1024 bytes
	// DedupeRecordOnly: store e whatever its key, and remember the key
	// (pointing at e from now on) for a later Put that checks it. For a
	// first send whose key the sender reuses once it is acknowledged (an
	// MQTT packet id): the key names the latest send, never an old one.
	DedupeRecordOnly bool
	Data             []byte // the encoded message; 1 … MaxMessageBytes bytes
	// State is local broker state changed in the same transaction as the
	// message (a retained publish), so that the message's acknowledgement
	// also means its state is durable. A Put whose State would exceed
	// StateMaxBytes is refused with ErrStateFull (BestEffort ops are
	// skipped instead); a duplicate changes no state.
	State []StateOp
}

// isTooBig reports whether e can never fit under maxBytes.
func (e *Entry) isTooBig(maxBytes int64) bool {
	return maxBytes > 0 && int64(recMinV2+len(e.Data)+8) > maxBytes
}

// PutResult tells what Put did.
type PutResult struct {
	ID        uint64 // the stored message's id; for a duplicate, the original's
	Duplicate bool   // the dedupe key was seen inside the window: nothing stored
}

// Item is a leased (or listed) message.
type Item struct {
	ID         uint64
	Priority   uint8
	Attempts   uint32 // deliveries that ended in Nack or lease expiry
	EnqueuedAt time.Time
	ExpiresAt  time.Time
	Data       []byte
}

// DeadLetter is a message in the DLQ.
type DeadLetter struct {
	Item
	Reason string
	DeadAt time.Time
}

// LaneStats are the vitals of one lane.
type LaneStats struct {
	Messages int64
	Bytes    int64
	Oldest   time.Time // EnqueuedAt of the head; zero when empty
}

// Stats is a snapshot of the spool's state and counters since Open. It is
// cheap: counts are kept in memory and in the same transactions as the data.
type Stats struct {
	Lanes         [Lanes]LaneStats
	Messages      int64 // queued (all lanes, leased included)
	Bytes         int64
	Leased        int
	DLQMessages   int64
	DLQBytes      int64
	Retained      int64 // delivered messages kept for replay
	RetainedBytes int64
	DedupeEntries int64
	Full          bool   // the last Put hit a cap (or the disk was full)
	DiskFull      bool   // a write found the file system full; new messages are refused (or wait, under Block) until one is stored again
	FileSize      int64  // size of the file on disk (as ls shows it; Compact's before/after)
	Failure       string // why the spool stopped working (see Spool.Err); "" while it works

	// Salvage is the report of the salvage that made this file (by this
	// process or an earlier one); nil if it never was salvaged.
	Salvage *SalvageReport

	// Counters since Open.
	Accepted     uint64
	Duplicates   uint64
	Acked        uint64
	Nacked       uint64 // explicit Nacks and expired leases
	DeadLettered uint64
	Rejected     uint64 // Puts refused with ErrFull
	Dropped      [dropReasons]uint64
	Commits      uint64        // write transactions
	CommitOps    uint64        // operations in them (CommitOps/Commits = mean batch)
	CommitTime   time.Duration // total time in Update incl. fsync
	Syncs        uint64        // fsyncs issued: two per synced commit (bbolt: pages, then the meta page), and Interval's tick
	// CommitDurations counts commits by duration (fsync included):
	// CommitDurations[i] those up to CommitBuckets[i], the last one the
	// rest. Not cumulative.
	CommitDurations [len(CommitBuckets) + 1]uint64
}

// CommitBuckets are the upper bounds of Stats.CommitDurations: from a fast
// SSD's fsync to a struggling SD card's.
var CommitBuckets = [...]time.Duration{
	500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Oldest returns the EnqueuedAt of the oldest queued message, zero if none.
func (s *Stats) Oldest() time.Time {
	var o time.Time
	for _, l := range s.Lanes {
		if !l.Oldest.IsZero() && (o.IsZero() || l.Oldest.Before(o)) {
			o = l.Oldest
		}
	}
	return o
}

// SalvageReport tells what Open recovered from a damaged file. The report
// of the salvage that made a file is kept in it: Stats.Salvage shows it to
// every later reader (ferry spool stats, metrics) until the next salvage.
type SalvageReport struct {
	Damaged string `json:"damaged"` // where the damaged file was moved
	Cause   string `json:"cause"`   // what was wrong, and where
	Kept    int    `json:"kept"`    // messages (queue and DLQ) copied into the fresh file
	// Lost is how many messages were lost: exact, or with LostUnknown the
	// least number lost (records seen but unreadable, and what the counts
	// promised and no copy of was found).
	Lost        int  `json:"lost"`
	LostUnknown bool `json:"lost_unknown"`
	// RawScan: records were also found by scanning pages, so some may be
	// messages that were already delivered. Not set when only intact copies
	// of damaged records of a whole tree were looked for there.
	RawScan bool `json:"raw_scan"`
	// StateKept is the local state records (state.go) copied; the raw
	// page scan does not look for state.
	StateKept int `json:"state_kept"`
	// StateLost is the state records seen but unreadable in the newest
	// tree. StateDamaged names the kinds of state ("retained", "clients",
	// "subscriptions", "inflight") that may have lost more than those: a
	// page of their bucket could not be read, or (every kind) the newest
	// tree could not be walked at all, or a meta page was damaged (the
	// tree walked may be a commit older: its state is kept, and may be
	// stale). The state of a tree older than the newest readable one is
	// never brought back.
	StateLost    int       `json:"state_lost"`
	StateDamaged []string  `json:"state_damaged,omitempty"`
	Completed    time.Time `json:"completed"`
}

// LostText is Lost for people: "3", or "unknown, at least 3".
func (r *SalvageReport) LostText() string {
	if r.LostUnknown {
		return fmt.Sprintf("unknown, at least %d", r.Lost)
	}
	return fmt.Sprint(r.Lost)
}

// StateLostText is StateLost for people: "3", or "unknown, at least 3, of
// retained, clients" with StateDamaged.
func (r *SalvageReport) StateLostText() string {
	if len(r.StateDamaged) > 0 {
		return fmt.Sprintf("unknown, at least %d, of %s", r.StateLost, strings.Join(r.StateDamaged, ", "))
	}
	return fmt.Sprint(r.StateLost)
}

func (r *SalvageReport) String() string {
	state := ","
	if r.StateLost > 0 || len(r.StateDamaged) > 0 {
		state = fmt.Sprintf("; local state: kept %d, lost %s;", r.StateKept, r.StateLostText())
	}
	return fmt.Sprintf("salvaged spool: kept %d messages, lost %s%s damaged file moved to %s (cause: %s)", r.Kept, r.LostText(), state, r.Damaged, r.Cause)
}

// Errors. Callers compare with errors.Is.
var (
	// ErrFull: a cap is reached and the overflow policy refused the message.
	ErrFull = errors.New("spool: full")
	// ErrClosed: the spool is closed or closing.
	ErrClosed = errors.New("spool: closed")
	// ErrTooLarge: Entry.Data is longer than MaxMessageBytes.
	ErrTooLarge = errors.New("spool: message too large")
	// ErrInvalid: an argument is out of range (priority, empty data, nil).
	ErrInvalid = errors.New("spool: invalid argument")
	// ErrNotFound: no message with that id (in the DLQ, for DLQ operations).
	ErrNotFound = errors.New("spool: not found")
	// ErrLocked: another process holds the file (a running gateway).
	ErrLocked = errors.New("spool: file is locked by another process")
	// ErrNotSpool: the file is a bbolt database but not a Ferry spool.
	ErrNotSpool = errors.New("spool: not a ferry spool")
	// ErrVersion: the file was written by a newer Ferry.
	ErrVersion = errors.New("spool: unsupported format version")
)

// CorruptionError reports damage found in a spool file, and where: the
// bucket, key and page when known.
type CorruptionError struct {
	Path   string
	Bucket string // "" when unknown; "(root)" for the top level
	Key    []byte // nil when unknown
	Page   uint64 // 0 when unknown
	Err    error
}

func (e *CorruptionError) Error() string {
	var where []string
	if e.Bucket != "" {
		where = append(where, fmt.Sprintf("bucket %q", e.Bucket))
	}
	if e.Key != nil {
		where = append(where, fmt.Sprintf("key %x", e.Key))
	}
	if e.Page != 0 {
		where = append(where, fmt.Sprintf("page %d", e.Page))
	}
	if len(where) == 0 {
		return fmt.Sprintf("spool: %s is damaged: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("spool: %s is damaged (%s): %v", e.Path, strings.Join(where, ", "), e.Err)
}
func (e *CorruptionError) Unwrap() error { return e.Err }
