package spool

import (
	"errors"
	"fmt"
	"log/slog"
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
	DedupeMaxEntries int           // cap on remembered keys, oldest forgotten first; default 1,000,000

	LeaseTimeout time.Duration // a leased message not acked or nacked within this comes back; default 30s
	// LowerLaneShare is the minimum share (0..1) of leased messages that go
	// to lower lanes while a higher lane has a backlog, so that lower lanes
	// are never starved forever. Default 0.1; <0: strict priority.
	LowerLaneShare float64

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
	Data      []byte    // the encoded message; 1 … MaxMessageBytes bytes
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
	Full          bool  // the last Put hit a cap
	FileSize      int64 // bytes on disk

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
	Syncs        uint64        // fsyncs issued (bbolt does two per synced commit)
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

// SalvageReport tells what Open recovered from a damaged file.
type SalvageReport struct {
	Damaged   string // where the damaged file was moved
	Cause     error  // what was wrong
	Kept      int    // messages (queue and DLQ) copied into the fresh file
	Lost      int    // records seen but unreadable; -1 when unknown
	RawScan   bool   // the tree was unusable: records were found by scanning pages, and some may be messages that were already delivered
	Completed time.Time
}

func (r *SalvageReport) String() string {
	return fmt.Sprintf("salvaged spool: kept %d messages, lost %d, damaged file moved to %s (cause: %v)", r.Kept, r.Lost, r.Damaged, r.Cause)
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

// CorruptionError reports damage found in a spool file.
type CorruptionError struct {
	Path string
	Err  error
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("spool: %s is damaged: %v", e.Path, e.Err)
}
func (e *CorruptionError) Unwrap() error { return e.Err }
