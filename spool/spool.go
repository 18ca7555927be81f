package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrExpired: the entry's ExpiresAt has already passed; nothing was stored.
var ErrExpired = errors.New("spool: message already expired")

const (
	defaultMaxBytes      = 1 << 30
	defaultMaxMessage    = 1 << 20
	defaultBlockTimeout  = 5 * time.Second
	defaultDedupeWindow  = 10 * time.Minute
	defaultDedupeEntries = 1_000_000
	defaultLeaseTimeout  = 30 * time.Second
	defaultLowerShare    = 0.1
	defaultFsyncInterval = 100 * time.Millisecond
	defaultLockTimeout   = time.Second

	maxBatchOps     = 4096    // operations in one write transaction
	maxBatchBytes   = 8 << 20 // data bytes in one write transaction
	sweepBatch      = 1000    // keys deleted per housekeeping transaction and per bulk operation
	housekeepPeriod = time.Second
	opsQueue        = 4096
	lingerMin       = 50 * time.Microsecond // see run
	lingerMax       = time.Millisecond
)

// Spool is a durable priority queue in one bbolt file. It is safe for
// concurrent use; see doc.go for the concurrency rules.
type Spool struct {
	path string
	opts Options
	log  *slog.Logger
	now  func() time.Time

	dbmu sync.RWMutex // read: any use of db; write: swapping it (Compact)
	db   *bolt.DB

	closeMu sync.RWMutex // read: sending on ops; write: Close
	closed  bool
	ops     chan *op
	kick    chan struct{}
	done    chan struct{}

	salvage *SalvageReport

	// Owned by the writer goroutine.
	parked      []*op // Block policy: Puts waiting for room, in arrival order
	parkedFreed bool  // a commit freed space since the parked Puts were last tried
	unparking   bool  // the batch being committed is the parked Puts
	lastCommit  time.Duration
	nextID      uint64
	dirty       bool // Interval durability: committed but not yet fsync'd
	lastSync    time.Time

	mu         sync.Mutex // guards the fields below
	cur        counts     // committed totals
	leases     map[uint64]*lease
	cursor     [Lanes]uint64     // every unleased queued id of a lane is >= its cursor
	pendBump   map[uint64]uint32 // attempts a message must have at least (expired leases), waiting for the writer
	pendExpire []uint64          // expired messages found by Lease
	pendDead   map[uint64]string
	avail      chan struct{} // closed and replaced when messages become leasable
	full       bool
	ctr        counters
	shareTotal float64 // leases made while a lower lane also had messages
	shareLower float64 // of those, leases given to a lower lane
	rr         int     // round robin among lower lanes
}

type lease struct {
	lane     uint8
	deadline time.Time
	attempts uint32 // Attempts of the leased item
	expiring bool   // handed to the writer (expired message, lease timeout or bad record): skip
}

type counters struct {
	accepted, duplicates, acked, nacked, dead, rejected uint64
	dropped                                             [dropReasons]uint64
	commits, commitOps, syncs                           uint64
	commitTime                                          time.Duration
}

// Open opens or creates the spool at path.
//
// A file that another process holds fails with ErrLocked after
// Options.LockTimeout. A bbolt file without Ferry's meta bucket fails with
// ErrNotSpool, a newer format with ErrVersion; neither file is touched. A
// damaged spool is salvaged: every readable message is copied into a fresh
// file at path, the damaged file is renamed aside, and Salvaged reports what
// was kept and lost.
func Open(path string, opts Options) (*Spool, error) {
	opts = withDefaults(opts)
	s := &Spool{
		path:     path,
		opts:     opts,
		log:      opts.Logger,
		now:      opts.Now,
		ops:      make(chan *op, opsQueue),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		leases:   make(map[uint64]*lease),
		pendDead: make(map[uint64]string),
		pendBump: make(map[uint64]uint32),
		avail:    make(chan struct{}),
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	go s.run()
	return s, nil
}

func withDefaults(o Options) Options {
	if o.FsyncInterval <= 0 {
		o.FsyncInterval = defaultFsyncInterval
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = defaultMaxBytes
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = defaultMaxMessage
	}
	if o.BlockTimeout <= 0 {
		o.BlockTimeout = defaultBlockTimeout
	}
	if o.DedupeWindow == 0 {
		o.DedupeWindow = defaultDedupeWindow
	}
	if o.DedupeMaxEntries <= 0 {
		o.DedupeMaxEntries = defaultDedupeEntries
	}
	if o.LeaseTimeout <= 0 {
		o.LeaseTimeout = defaultLeaseTimeout
	}
	if o.LowerLaneShare == 0 {
		o.LowerLaneShare = defaultLowerShare
	}
	if o.LowerLaneShare > 1 {
		o.LowerLaneShare = 1
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = defaultLockTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

func (s *Spool) boltOptions() *bolt.Options {
	o := &bolt.Options{
		Timeout:        s.opts.LockTimeout,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		NoGrowSync:     false,
	}
	if s.opts.MaxBytes > 0 {
		// bbolt's own ceiling sits well above our cap: the spool reaches its
		// own, controlled full state first, and deletes (which need fresh
		// pages in a copy-on-write tree) still have room when it is full.
		o.MaxSize = int(min(int64(maxInt), 2*s.opts.MaxBytes+64<<20))
	}
	return o
}

const maxInt = int(^uint(0) >> 1)

// open opens the bbolt file, salvaging it when it is damaged. The file is
// checked under its lock before bbolt sees it, so a spool in use by a
// running gateway is never mistaken for a damaged one.
func (s *Spool) open() error {
	for attempt := 0; ; attempt++ {
		err := s.checked(func() error { return s.check() })
		if err == nil {
			err = s.openChecked()
			if err == nil {
				return nil
			}
		}
		var ce *CorruptionError
		if !errors.As(err, &ce) {
			return err
		}
		if attempt > 0 {
			return fmt.Errorf("spool: %s is still damaged after salvage: %w", s.path, err)
		}
		s.log.Error("spool damaged, salvaging", "path", s.path, "err", ce.Err)
		var rep *SalvageReport
		err = s.checked(func() error {
			var err error
			rep, err = salvage(s.path, s.opts, ce.Err)
			return err
		})
		if err != nil {
			if errors.Is(err, ErrLocked) {
				return err
			}
			return fmt.Errorf("spool: salvage %s: %w (cause: %w)", s.path, err, ce)
		}
		s.salvage = rep
		s.log.Warn("spool salvaged", "path", s.path, "kept", rep.Kept, "lost", rep.Lost, "damaged", rep.Damaged, "raw_scan", rep.RawScan)
	}
}

// check validates an existing file before bbolt opens it.
func (s *Spool) check() error {
	fi, err := os.Stat(s.path)
	if err != nil || fi.Size() == 0 {
		return nil // bbolt creates it
	}
	if err := checkHeader(s.path); err != nil {
		return err
	}
	return checkTree(s.path)
}

// checked runs fn holding the file's lock (the one bbolt takes), so that
// nothing writes the file meanwhile; ErrLocked after LockTimeout.
func (s *Spool) checked(fn func() error) error {
	f, err := os.OpenFile(s.path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return fn()
	}
	if err != nil {
		return fmt.Errorf("spool: open %s: %w", s.path, err)
	}
	defer func() { _ = f.Close() }()
	deadline := time.Now().Add(s.opts.LockTimeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("spool: lock %s: %w", s.path, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s (is a gateway running?)", ErrLocked, s.path)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }()
	return fn()
}

// openChecked opens the checked file with bbolt and loads the meta bucket.
func (s *Spool) openChecked() error {
	db, err := s.openBolt()
	if err != nil {
		return err
	}
	clean, err := s.load(db)
	if err == nil && (s.opts.Verify == VerifyAlways || (s.opts.Verify == VerifyAuto && !clean)) {
		err = verify(db)
	}
	if err != nil {
		_ = db.Close()
		return err
	}
	s.db = db
	return s.markOpen()
}

// openBolt opens the file, turning bbolt's errors and panics on a damaged
// file into a *CorruptionError.
func (s *Spool) openBolt() (db *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, &CorruptionError{Path: s.path, Err: fmt.Errorf("bbolt: %v", r)}
		}
	}()
	db, err = bolt.Open(s.path, 0o600, s.boltOptions())
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s (is a gateway running?)", ErrLocked, s.path)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, &CorruptionError{Path: s.path, Err: err}
	}
	return nil, fmt.Errorf("spool: open %s: %w", s.path, err)
}

// load creates or checks the buckets and reads the counters. It reports
// whether the last session closed cleanly.
func (s *Spool) load(db *bolt.DB) (clean bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptionError{Path: s.path, Err: fmt.Errorf("bbolt: %v", r)}
		}
	}()
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bktMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return fmt.Errorf("%w: %s has no %q bucket", ErrNotSpool, s.path, bktMeta)
			}
			var err error
			if meta, err = tx.CreateBucket(bktMeta); err != nil {
				return err
			}
			clean = true
			_ = meta.Put(keyMagic, []byte(magic))
			_ = meta.Put(keyFormat, u64(formatVersion))
			_ = meta.Put(keyNextID, u64(1))
			_ = meta.Put(keyCounts, (&counts{}).encode())
			if err := meta.Put(keyClean, []byte{1}); err != nil {
				return err
			}
		} else {
			if string(meta.Get(keyMagic)) != magic {
				return fmt.Errorf("%w: %s: bad magic", ErrNotSpool, s.path)
			}
			f := meta.Get(keyFormat)
			if len(f) != 8 {
				return &CorruptionError{Path: s.path, Err: errors.New("format version missing")}
			}
			if v := idOf(f); v > formatVersion {
				return fmt.Errorf("%w: %s has format %d, this build reads up to %d", ErrVersion, s.path, v, formatVersion)
			}
			c := meta.Get(keyClean)
			clean = len(c) == 1 && c[0] == 1
		}
		for _, name := range append(bktLanes[:], bktExpiry, bktDedupe, bktDedupeExp, bktDLQ, bktDelivered) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		n := meta.Get(keyNextID)
		if len(n) != 8 {
			return &CorruptionError{Path: s.path, Err: errors.New("next_id missing")}
		}
		s.nextID = idOf(n)
		c, err := decodeCounts(meta.Get(keyCounts))
		if err != nil {
			return &CorruptionError{Path: s.path, Err: err}
		}
		s.cur = c
		return nil
	})
	return clean, err
}

// markOpen records that the file is in use, so that a crash before Close
// is known at the next Open (and triggers verification with VerifyAuto).
func (s *Spool) markOpen() error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bktMeta).Put(keyClean, []byte{0}) })
	if err != nil {
		_ = s.db.Close()
		return fmt.Errorf("spool: open %s: %w", s.path, err)
	}
	s.lastSync = s.now()
	return nil
}

// verify walks the whole file and reports the first problem bbolt finds.
func verify(db *bolt.DB) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptionError{Path: db.Path(), Err: fmt.Errorf("bbolt: %v", r)}
		}
	}()
	return db.View(func(tx *bolt.Tx) error {
		var first error
		for e := range tx.Check() {
			if first == nil {
				first = e
			}
		}
		if first != nil {
			return &CorruptionError{Path: db.Path(), Err: first}
		}
		return nil
	})
}

// Path returns the file's path.
func (s *Spool) Path() string { return s.path }

// Salvaged returns the salvage report when Open had to recover a damaged
// file, nil otherwise.
func (s *Spool) Salvaged() *SalvageReport { return s.salvage }

// Close commits the operations already submitted, fails later ones with
// ErrClosed, marks the file cleanly closed and closes it. Close is
// idempotent.
func (s *Spool) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	close(s.ops)
	s.closeMu.Unlock()
	<-s.done
	s.mu.Lock()
	close(s.avail) // wake blocked Lease calls: they see closed and return
	s.avail = make(chan struct{})
	s.mu.Unlock()

	s.dbmu.Lock()
	defer s.dbmu.Unlock()
	s.db.NoSync = false
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bktMeta).Put(keyClean, []byte{1}) })
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("spool: close %s: %w", s.path, err)
	}
	return nil
}

func (s *Spool) isClosed() bool {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	return s.closed
}

// submit hands o to the writer and waits for its commit.
func (s *Spool) submit(ctx context.Context, o *op) error {
	if err := s.enqueue(ctx, o); err != nil {
		return err
	}
	return s.await(ctx, o)
}

// enqueue hands o to the writer. Operations enqueued one after another by
// one goroutine are applied in that order.
func (s *Spool) enqueue(ctx context.Context, o *op) error {
	o.done = make(chan struct{})
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.ops <- o:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Spool) await(ctx context.Context, o *op) error {
	select {
	case <-o.done:
		return o.err
	case <-ctx.Done():
		// The operation may still commit; the caller treats it as not done
		// (a producer re-sends, which dedupe absorbs).
		return ctx.Err()
	}
}

// Put stores e. In Sync durability it returns after e is fsync'd; with
// Interval after it is written. A duplicate (same DedupeKey inside the
// window) returns the original's id and Duplicate, storing nothing. When a
// cap is reached the overflow policy decides: ErrFull, a wait (Block), or
// room made by dropping older or lower-priority messages.
func (s *Spool) Put(ctx context.Context, e Entry) (PutResult, error) {
	return s.PutAsync(ctx, e)()
}

// PutAsync is Put in two steps, for a producer that keeps many messages in
// flight (a pipelining STOMP connection): it queues e for the writer and
// returns; wait blocks until e is committed and returns what Put would.
// Entries queued one after another by one goroutine are stored in that
// order, so their ids (and lease order) follow the calls, also when the
// Block policy makes them wait for room. wait must be called once.
func (s *Spool) PutAsync(ctx context.Context, e Entry) (wait func() (PutResult, error)) {
	if err := s.validate(&e); err != nil {
		return func() (PutResult, error) { return PutResult{}, err }
	}
	o := &op{kind: opPut, e: e}
	err := s.enqueue(ctx, o)
	return func() (PutResult, error) {
		if err != nil {
			return PutResult{}, err
		}
		select {
		case <-o.done:
			return o.res, o.err
		case <-ctx.Done():
			// The writer still owns o (it may be parked and stored later);
			// the caller treats the message as not stored and re-sends.
			return PutResult{}, ctx.Err()
		}
	}
}

func (s *Spool) validate(e *Entry) error {
	switch {
	case e.Priority >= Lanes:
		return fmt.Errorf("%w: priority %d, want 0..%d", ErrInvalid, e.Priority, Lanes-1)
	case len(e.Data) == 0:
		return fmt.Errorf("%w: empty data", ErrInvalid)
	case len(e.Data) > s.opts.MaxMessageBytes:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(e.Data), s.opts.MaxMessageBytes)
	case len(e.DedupeKey) > maxDedupeKey:
		return fmt.Errorf("%w: dedupe key of %d bytes, limit %d", ErrInvalid, len(e.DedupeKey), maxDedupeKey)
	case !e.ExpiresAt.IsZero() && !s.now().Before(e.ExpiresAt):
		return ErrExpired
	}
	return nil
}

// Ack removes delivered messages (or, with RetainDelivered, moves them to
// the retained set). Unknown ids are ignored: a message may have expired or
// been dropped while in flight.
func (s *Spool) Ack(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	return s.submit(ctx, &op{kind: opAck, ids: ids})
}

// Nack returns leased messages to their original position, so they are
// leased again before anything newer in their lane; their Attempts grow by
// one. Unknown ids are ignored.
func (s *Spool) Nack(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	return s.submit(ctx, &op{kind: opNack, ids: ids})
}

// DeadLetter moves a queued message to the DLQ with a reason.
func (s *Spool) DeadLetter(ctx context.Context, id uint64, reason string) error {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	return s.submit(ctx, &op{kind: opDead, ids: []uint64{id}, reason: reason})
}

// DLQ lists up to max dead letters with id > afterID, in id order.
func (s *Spool) DLQ(afterID uint64, max int) ([]DeadLetter, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: max %d", ErrInvalid, max)
	}
	var out []DeadLetter
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktDLQ).Cursor()
		for k, v := c.Seek(u64(afterID + 1)); k != nil && len(out) < max; k, v = c.Next() {
			r, err := decodeRecord(k, v)
			if err != nil {
				out = append(out, DeadLetter{Item: Item{ID: idOf(k), Data: append([]byte(nil), v...)}, Reason: "unreadable: " + err.Error()})
				continue
			}
			out = append(out, DeadLetter{Item: r.item(idOf(k)), Reason: r.text, DeadAt: fromNano(r.stamp)})
		}
		return nil
	})
	return out, err
}

// Requeue moves dead letters back to their lanes at their original
// position, with Attempts and expiry cleared (the operator overrides the
// TTL); no ids: all. Returns how many moved.
func (s *Spool) Requeue(ctx context.Context, ids ...uint64) (int, error) {
	return s.bulk(ctx, opRequeue, ids)
}

// PurgeDLQ deletes dead letters; no ids: all. Returns how many.
func (s *Spool) PurgeDLQ(ctx context.Context, ids ...uint64) (int, error) {
	return s.bulk(ctx, opPurge, ids)
}

// Replay re-enqueues retained delivered messages enqueued at or after since
// (Options.RetainDelivered must be on). They get new ids, keep their
// original EnqueuedAt, and leave the retained set until acked again.
func (s *Spool) Replay(ctx context.Context, since time.Time) (int, error) {
	total := 0
	var after uint64
	for {
		o := &op{kind: opReplay, since: nano(since), after: after}
		if err := s.submit(ctx, o); err != nil {
			return total, err
		}
		total += o.n
		if !o.more {
			return total, nil
		}
		after = o.after
	}
}

// bulk runs a DLQ operation in bounded transactions.
func (s *Spool) bulk(ctx context.Context, kind opKind, ids []uint64) (int, error) {
	total := 0
	for {
		o := &op{kind: kind, ids: ids, all: len(ids) == 0}
		if len(ids) > sweepBatch {
			o.ids, ids = ids[:sweepBatch], ids[sweepBatch:]
		} else {
			ids = nil
		}
		if err := s.submit(ctx, o); err != nil {
			return total, err
		}
		total += o.n
		if (o.all && !o.more) || (!o.all && len(ids) == 0) {
			return total, nil
		}
	}
}

// view runs fn in a read transaction, turning a bbolt panic on a damaged
// page into a *CorruptionError.
func (s *Spool) view(fn func(*bolt.Tx) error) (err error) {
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	if s.isClosed() {
		select {
		case <-s.done:
			return ErrClosed
		default:
		}
	}
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptionError{Path: s.path, Err: fmt.Errorf("bbolt: %v", r)}
		}
	}()
	return s.db.View(fn)
}

// Stats returns a snapshot of counts and counters.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	c, k := s.cur, s.ctr
	leased := 0
	for _, l := range s.leases {
		if !l.expiring {
			leased++
		}
	}
	st := Stats{
		Leased:        leased,
		DLQMessages:   c.dlq,
		DLQBytes:      c.dlqB,
		Retained:      c.ret,
		RetainedBytes: c.retB,
		DedupeEntries: c.dedupe,
		Full:          s.full,
		Accepted:      k.accepted,
		Duplicates:    k.duplicates,
		Acked:         k.acked,
		Nacked:        k.nacked,
		DeadLettered:  k.dead,
		Rejected:      k.rejected,
		Dropped:       k.dropped,
		Commits:       k.commits,
		CommitOps:     k.commitOps,
		CommitTime:    k.commitTime,
		Syncs:         k.syncs,
	}
	s.mu.Unlock()
	for i, l := range c.lanes {
		st.Lanes[i] = LaneStats{Messages: l[0], Bytes: l[1]}
		st.Messages += l[0]
		st.Bytes += l[1]
	}
	_ = s.view(func(tx *bolt.Tx) error {
		st.FileSize = tx.Size()
		for i := range st.Lanes {
			if st.Lanes[i].Messages == 0 {
				continue
			}
			if k, v := tx.Bucket(bktLanes[i]).Cursor().First(); k != nil {
				if r, err := decodeRecord(k, v); err == nil {
					st.Lanes[i].Oldest = fromNano(r.enqueued)
				}
			}
		}
		return nil
	})
	return st
}
