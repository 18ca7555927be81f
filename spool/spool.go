package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

	maxBatchOps       = 4096    // operations in one write transaction
	maxBatchBytes     = 8 << 20 // data bytes in one write transaction
	maxAckIDs         = 8192    // acked and nacked ids in one write transaction
	ackLinger         = 5 * time.Millisecond
	pinMargin         = 4*maxBatchBytes + 64<<20 // see repin
	sweepBatch        = 1000                     // keys deleted per housekeeping transaction and per bulk operation
	housekeepPeriod   = time.Second
	dropResidentEvery = 10 * time.Second // see housekeep
	opsQueue          = 4096
	lingerMin         = 50 * time.Microsecond // see run
	lingerMax         = time.Millisecond
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

	salvage     *SalvageReport // the salvage this Open did
	lastSalvage *SalvageReport // the one that made the file (read at Open)
	checkedSums [Lanes + 2]uint64
	leakedLock  bool // bbolt panicked at Open holding the file's lock

	// txnHook, when set (tests only), runs in the writer before each write
	// transaction.
	txnHook atomic.Pointer[func()]

	failedErr atomic.Pointer[error] // the writer stopped (see failure.go)

	// Owned by the writer goroutine.
	parked      []*op // Block policy: Puts waiting for room, in arrival order
	parkedFreed bool  // a commit freed space since the parked Puts were last tried
	unparking   bool  // the batch being committed is the parked Puts
	lastCommit  time.Duration
	nextID      uint64
	dirty       bool // Interval durability: committed but not yet fsync'd
	lastSync    time.Time
	lastDrop    time.Time // dropResident, see housekeep
	pin         *bolt.Tx  // Interval durability: a read transaction on the last fsync'd state
	txid        uint64    // bbolt's id of the last committed transaction
	refuseNew   bool      // the next transaction answers new messages "full" without trying (disk full)

	diskFull                      bool // a write found the disk full, and none stored a message since
	freedInFile                   bool // diskFull, and a commit freed pages inside the file since: try the next Put
	nextProbe                     time.Time
	diskFullSince, diskFullLogged time.Time
	mapFloor                      int64 // Interval: the memory map is at least this large (0: none, nothing is pinned)
	dataSize                      int64 // the data size after the last commit

	mu           sync.Mutex // guards the fields below
	cur          counts     // committed totals
	leases       map[uint64]*lease
	leaseQ       []leaseRef        // leases handed out, in the order of their deadlines
	cursor       [Lanes]uint64     // every unleased queued id of a lane is >= its cursor
	pendBump     map[uint64]uint32 // attempts a message must have at least (expired leases), waiting for the writer
	pendExpire   []uint64          // expired messages found by Lease
	pendDead     map[uint64]string
	avail        chan struct{} // closed and replaced when messages become leasable
	parkedNow    chan struct{} // closed and replaced when a commit parked Puts
	full         bool
	diskFullStat bool // diskFull, for Stats
	ctr          counters
	shareTotal   float64 // leases made while a lower lane also had messages
	shareLower   float64 // of those, leases given to a lower lane
	rr           int     // round robin among lower lanes
	state        [StateKinds]StateStats
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
	commitHist                                          [len(CommitBuckets) + 1]uint64
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
	if err := checkAddressSpace(opts.MaxBytes, maxInt); err != nil {
		return nil, err
	}
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

		parkedNow: make(chan struct{}),
	}
	s.reserveFloor()
	if err := s.open(); err != nil {
		s.releaseFloor()
		return nil, err
	}
	s.warnSpace()
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
	o.MaxSize = s.boltMaxSize()
	// In Interval durability the file is mapped large from the start, so
	// that the pin (see repin) does not have to give way to a growing map:
	// address space, not memory (pages are resident only when read).
	o.InitialMmapSize = int(s.mapFloor)
	return o
}

// boltMaxSize is bbolt's ceiling for the file (0: none). It sits well above
// our cap: the spool reaches its own, controlled full state first, and
// deletes (which need fresh pages in a copy-on-write tree) still have room
// when it is full.
func (s *Spool) boltMaxSize() int {
	if s.opts.MaxBytes <= 0 {
		return 0
	}
	return int(min(int64(maxInt), 2*s.opts.MaxBytes+64<<20))
}

// mapFloor is the memory map size an Interval spool of bbolt ceiling
// maxSize wants up front: all of it on 64-bit, up to mapShare32 on 32-bit.
func mapFloor(maxSize, maxInt int64) int64 {
	if maxInt > 1<<32 {
		if maxSize > 0 {
			return maxSize
		}
		return min(maxInt, 64<<30) // 64 GiB on 64-bit
	}
	if maxSize > 0 {
		return min(maxSize, mapShare32)
	}
	return mapShare32
}

// On 32-bit a process has 2–3 GiB of address space for everything, and a
// gateway holds a spool per upstream: the up-front maps of its Interval
// spools share mapBudget32, at most mapShare32 each. A spool that finds
// the budget spent maps nothing up front and pins nothing: it fsyncs
// every commit, as in Sync durability (slower, never less safe).
const (
	mapBudget32 = 1 << 30
	mapShare32  = 256 << 20
)

var mapBudget struct {
	sync.Mutex
	used int64 // bytes of mapBudget32 held by open spools
}

// grantFloor is the map floor a spool that wants want bytes gets with used
// bytes of the budget taken, on a platform whose largest int is maxInt: 0
// when what is left could not hold a pin (see repin).
func grantFloor(want, used, maxInt int64) int64 {
	if maxInt > 1<<32 {
		return want
	}
	if g := min(want, mapBudget32-used); g > pinMargin {
		return g
	}
	return 0
}

// reserveFloor takes this spool's map floor from the process's budget
// (Interval durability only); releaseFloor gives it back.
func (s *Spool) reserveFloor() {
	if s.opts.Durability != Interval || s.mapFloor != 0 {
		return
	}
	mapBudget.Lock()
	defer mapBudget.Unlock()
	s.mapFloor = grantFloor(mapFloor(int64(s.boltMaxSize()), int64(maxInt)), mapBudget.used, int64(maxInt))
	if int64(maxInt) <= 1<<32 {
		mapBudget.used += s.mapFloor
	}
	if s.mapFloor == 0 {
		s.log.Warn("spool: durability interval fsyncs every commit: the 32-bit address space for up-front memory maps is taken by the other spools of this process",
			"path", s.path, "budget_bytes", mapBudget32)
	}
}

func (s *Spool) releaseFloor() {
	if int64(maxInt) > 1<<32 {
		return
	}
	mapBudget.Lock()
	mapBudget.used -= s.mapFloor
	mapBudget.Unlock()
	s.mapFloor = 0
}

const maxInt = int(^uint(0) >> 1)

// Max32BitBytes is the largest MaxBytes on a 32-bit platform: bbolt maps
// the whole file into memory, the map grows to twice the data and more,
// and a 32-bit process has about 2 GiB of address space for everything.
const Max32BitBytes = 1 << 30

// checkAddressSpace refuses a cap the platform (largest int maxInt) cannot
// map: no cap at all, or more than Max32BitBytes, on 32-bit.
func checkAddressSpace(maxBytes int64, maxInt int) error {
	if int64(maxInt) > 1<<32 {
		return nil
	}
	if maxBytes <= 0 || maxBytes > Max32BitBytes {
		return fmt.Errorf("%w: MaxBytes %d on a 32-bit platform: at most %d (1 GiB), the memory map of a bigger file does not fit in the address space", ErrInvalid, maxBytes, Max32BitBytes)
	}
	return nil
}

// open opens the bbolt file, salvaging it when it is damaged. The file is
// checked under its lock before bbolt sees it, so a spool in use by a
// running gateway is never mistaken for a damaged one.
func (s *Spool) open() error {
	for attempt := 0; ; attempt++ {
		err := s.checked(s.check)
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
		s.log.Error("spool damaged, salvaging", "path", s.path, "err", ce)
		var rep *SalvageReport
		run := func() error {
			var err error
			rep, err = salvage(s.path, s.opts, ce)
			return err
		}
		err = s.checked(run)
		if errors.Is(err, ErrLocked) && s.leakedLock && heldByThisProcess(s.path) {
			// bbolt panicked after it locked the file: its map keeps the
			// lock, and no other process can hold it. Salvage moves the
			// file aside; the fresh one is not locked.
			err = run()
		}
		if err != nil {
			if errors.Is(err, ErrLocked) {
				return err
			}
			return fmt.Errorf("spool: salvage %s: %w (cause: %w)", s.path, err, ce)
		}
		s.salvage = rep
		s.log.Warn("spool salvaged", "path", s.path, "kept", rep.Kept, "lost", rep.LostText(),
			"state_kept", rep.StateKept, "state_lost", rep.StateLostText(), "damaged_file", rep.Damaged, "raw_scan", rep.RawScan)
	}
}

// check validates an existing file before bbolt opens it.
func (s *Spool) check() error {
	fi, err := os.Stat(s.path)
	if err != nil || skipCheckForTest {
		return nil // bbolt creates it
	}
	if fi.Size() == 0 {
		// An existing file of no bytes: truncated (its messages are gone),
		// or its creation was cut short. Either way it is reported and
		// moved aside, never silently started over.
		return &CorruptionError{Path: s.path, Err: errors.New("the file is empty (0 bytes): truncated, or its creation was cut short")}
	}
	if err := checkHeader(s.path); err != nil {
		return err
	}
	c, err := checkedTree(s.path)
	if err == nil {
		s.checkedSums = c.found.sums
	}
	return err
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
	db, file, err := s.openBolt()
	if err != nil {
		return err
	}
	clean, err := s.load(db)
	if err == nil && (s.opts.Verify == VerifyAlways || (s.opts.Verify == VerifyAuto && !clean)) {
		err = verify(db)
	}
	if err != nil {
		var bp *boltPanic
		if errors.As(err, &bp) {
			// bbolt may hold its own locks after a panic: do not wait for
			// them in db.Close. Closing its file releases the file lock
			// unless its map keeps it (see open).
			_ = file.Close()
			s.leakedLock = true
		} else {
			_ = db.Close()
		}
		return err
	}
	s.db = db
	if err := s.markOpen(); err != nil {
		return err
	}
	_ = db.View(func(tx *bolt.Tx) error { s.dataSize, s.txid = tx.Size(), uint64(tx.ID()); return nil })
	s.dropResident()
	s.repin()
	return nil
}

// dropResident releases the pages of bbolt's map of the file that Open
// read (after an unclean shutdown bbolt walks every page to rebuild its
// freelist, and Verify walks them again): they count as the process's
// resident memory, a backlog of a million messages is a gigabyte of it.
// The file stays in the page cache; what is read again is mapped again.
// Nothing else uses the map yet (the writer has not started).
func (s *Spool) dropResident() {
	fi, err := os.Stat(s.path)
	if err != nil || fi.Size() == 0 {
		return
	}
	addr := s.db.Info().Data
	n := uintptr(fi.Size()) &^ uintptr(os.Getpagesize()-1)
	if addr == 0 || n == 0 {
		return
	}
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, addr, n, syscall.MADV_DONTNEED)
}

// boltPanic is a panic of bbolt's, recovered.
type boltPanic struct{ v any }

func (p *boltPanic) Error() string { return fmt.Sprintf("bbolt: %v", p.v) }

// openBolt opens the file, turning bbolt's errors and panics on a damaged
// file into a *CorruptionError. It returns bbolt's file as well: after a
// panic inside bbolt, closing it is the only safe way to release the lock.
func (s *Spool) openBolt() (db *bolt.DB, file *os.File, err error) {
	o := s.boltOptions()
	o.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	defer func() {
		if r := recover(); r != nil {
			if file != nil {
				// Releases bbolt's lock, unless its map of the file
				// (which no one can unmap now) keeps it: see open.
				_ = file.Close()
				s.leakedLock = true
			}
			db, err = nil, &CorruptionError{Path: s.path, Err: &boltPanic{r}}
		}
	}()
	db, err = bolt.Open(s.path, 0o600, o)
	switch {
	case err == nil:
		return db, file, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, nil, fmt.Errorf("%w: %s (is a gateway running?)", ErrLocked, s.path)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, nil, &CorruptionError{Path: s.path, Err: err}
	}
	return nil, nil, fmt.Errorf("spool: open %s: %w", s.path, err)
}

// load creates or checks the buckets and reads the counters. It reports
// whether the last session closed cleanly.
func (s *Spool) load(db *bolt.DB) (clean bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptionError{Path: s.path, Err: &boltPanic{r}}
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
			} else if v < formatVersion {
				// From now on it holds records of this format: an older
				// build must refuse it rather than take them for damage.
				if err := meta.Put(keyFormat, u64(formatVersion)); err != nil {
					return err
				}
			}
			c := meta.Get(keyClean)
			clean = len(c) == 1 && c[0] == 1
			if v := meta.Get(keySalvage); v != nil {
				var rep SalvageReport
				if json.Unmarshal(v, &rep) == nil {
					s.lastSalvage = &rep
				}
			}
		}
		for _, name := range append(append(bktLanes[:], bktExpiry, bktDedupe, bktDedupeExp, bktDLQ, bktDelivered), bktState[:]...) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		s.loadState(tx)
		n := meta.Get(keyNextID)
		if len(n) != 8 {
			return &CorruptionError{Path: s.path, Err: errors.New("next_id missing")}
		}
		s.nextID = idOf(n)
		c, err := decodeCounts(meta.Get(keyCounts))
		if err != nil {
			return &CorruptionError{Path: s.path, Err: err}
		}
		if _, _, cc, err := decodeCommit(meta.Get(keyCommit)); err == nil {
			c.sums = cc.sums
		} else {
			c.sums = s.checkedSums // a file from before commit records: as Open's check added them up
		}
		s.cur = c
		return stamp(tx, s.nextID, &s.cur) // this is a commit too
	})
	return clean, err
}

// markOpen records that the file is in use, so that a crash before Close
// is known at the next Open (and triggers verification with VerifyAuto).
func (s *Spool) markOpen() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := stamp(tx, s.nextID, &s.cur); err != nil {
			return err
		}
		return tx.Bucket(bktMeta).Put(keyClean, []byte{0})
	})
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
			err = &CorruptionError{Path: db.Path(), Err: &boltPanic{r}}
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
	select {
	case <-s.done:
	case <-time.After(closeBound):
		// The writer is stuck inside bbolt (a write that never returns):
		// its waiters keep waiting on their contexts; shutdown goes on.
		return fmt.Errorf("spool: close %s: the writer did not finish within %s", s.path, closeBound)
	}
	s.mu.Lock()
	close(s.avail) // wake blocked Lease calls: they see closed and return
	s.avail = make(chan struct{})
	s.mu.Unlock()

	failed := s.Err()
	err := closeBounded(func() error {
		s.dbmu.Lock()
		defer s.dbmu.Unlock()
		// The map is gone once bbolt's Close returns (not if it never
		// does: then the budget stays taken).
		defer s.releaseFloor()
		if failed != nil {
			return s.db.Close() // no last commit: bbolt is not to be trusted
		}
		s.db.NoSync = false
		// The last commit writes bbolt's freelist (the spool runs without
		// one): the next Open reads it instead of walking every page a
		// second time, after its own check has verified it.
		s.db.NoFreelistSync = false
		err := s.db.Update(func(tx *bolt.Tx) error {
			if err := stamp(tx, s.nextID, &s.cur); err != nil {
				return err
			}
			return tx.Bucket(bktMeta).Put(keyClean, []byte{1})
		})
		if cerr := s.db.Close(); err == nil {
			err = cerr
		}
		return err
	})
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
	if err := s.Err(); err != nil {
		return err
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
//
// When ctx ends before the entry was taken into a transaction (it is still
// queued, or parked waiting for room under the Block policy), it is
// withdrawn: wait returns ctx's error (for a parked one, ErrFull wrapping
// it) and the entry is never stored. Once a transaction holds it, wait
// returns that transaction's answer. A producer that cancels the entries
// behind a refused one therefore keeps its order: none of them is stored
// after the refusal it was told about.
func (s *Spool) PutAsync(ctx context.Context, e Entry) (wait func() (PutResult, error)) {
	if err := s.validate(&e); err != nil {
		return func() (PutResult, error) { return PutResult{}, err }
	}
	if err := ctx.Err(); err != nil {
		return func() (PutResult, error) { return PutResult{}, err }
	}
	o := &op{kind: opPut, e: e}
	err := s.enqueue(ctx, o)
	return func() (PutResult, error) {
		if err != nil {
			return PutResult{}, err
		}
		return s.awaitPut(ctx, o)
	}
}

// awaitPut waits for o's answer, withdrawing o when ctx ends first and the
// writer does not hold it.
func (s *Spool) awaitPut(ctx context.Context, o *op) (PutResult, error) {
	select {
	case <-o.done:
		return o.res, o.err
	case <-ctx.Done():
	}
	for {
		s.mu.Lock()
		parked := s.parkedNow // before the CAS: a park after it closes this
		s.mu.Unlock()
		if o.state.CompareAndSwap(opIdle, opWithdrawn) {
			if !o.wasParked.Load() {
				return PutResult{}, ctx.Err()
			}
			s.mu.Lock()
			s.ctr.rejected++
			s.mu.Unlock()
			s.poke() // let the writer drop it from the parked queue
			return PutResult{}, fmt.Errorf("%w (no room before the caller gave up): %w", ErrFull, ctx.Err())
		}
		select {
		case <-o.done:
			return o.res, o.err
		case <-parked:
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
	case len(e.State) > 0 && s.checkStateOps(e.State) != nil:
		return s.checkStateOps(e.State)
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
//
// Ack returns after the transaction that removed them was fsync'd: an Ack
// that returned is not undone by a crash or a power cut. Acks are committed
// in batches: one waits up to a few milliseconds for others, or for a Put
// whose commit it joins.
func (s *Spool) Ack(ctx context.Context, ids ...uint64) error {
	return s.submitIDs(ctx, opAck, ids)
}

// submitIDs submits ids in operations of at most maxAckIDs each and waits
// for all of them.
func (s *Spool) submitIDs(ctx context.Context, kind opKind, ids []uint64) error {
	var ops []*op
	for len(ids) > 0 {
		n := min(len(ids), maxAckIDs)
		o := &op{kind: kind, ids: ids[:n]}
		ids = ids[n:]
		if err := s.enqueue(ctx, o); err != nil {
			if len(ops) == 0 {
				return err
			}
			break
		}
		ops = append(ops, o)
	}
	var first error
	for _, o := range ops {
		if err := s.await(ctx, o); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Nack returns leased messages to their original position, so they are
// leased again before anything newer in their lane; their Attempts grow by
// one. Unknown ids are ignored.
func (s *Spool) Nack(ctx context.Context, ids ...uint64) error {
	return s.submitIDs(ctx, opNack, ids)
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
	if err := s.Err(); err != nil {
		return err // bbolt may hold its locks: do not wait for them
	}
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
		Leased:          leased,
		DLQMessages:     c.dlq,
		DLQBytes:        c.dlqB,
		Retained:        c.ret,
		RetainedBytes:   c.retB,
		DedupeEntries:   c.dedupe,
		Full:            s.full,
		DiskFull:        s.diskFullStat,
		Salvage:         s.lastSalvage,
		Accepted:        k.accepted,
		Duplicates:      k.duplicates,
		Acked:           k.acked,
		Nacked:          k.nacked,
		DeadLettered:    k.dead,
		Rejected:        k.rejected,
		Dropped:         k.dropped,
		Commits:         k.commits,
		CommitOps:       k.commitOps,
		CommitTime:      k.commitTime,
		CommitDurations: k.commitHist,
		Syncs:           k.syncs,
	}
	s.mu.Unlock()
	if err := s.Err(); err != nil {
		st.Failure = err.Error()
	}
	for i, l := range c.lanes {
		st.Lanes[i] = LaneStats{Messages: l[0], Bytes: l[1]}
		st.Messages += l[0]
		st.Bytes += l[1]
	}
	_ = s.view(func(tx *bolt.Tx) error {
		// What ls and du see: bbolt grows the file in steps of up to
		// AllocSize (16 MiB) beyond the pages in use (tx.Size), and Compact
		// reports this size too.
		st.FileSize = tx.Size()
		if fi, err := os.Stat(s.path); err == nil {
			st.FileSize = fi.Size()
		}
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

// skipCheckForTest hands bbolt files unchecked (tests only: to make bbolt
// panic at Open).
var skipCheckForTest bool

// heldByThisProcess reports whether /proc/locks lists a lock on the file at
// path held by this process.
func heldByThisProcess(path string) bool {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		return false
	}
	major := (st.Dev>>8)&0xfff | (st.Dev>>32)&^0xfff
	minor := st.Dev&0xff | (st.Dev>>12)&^0xff
	want := fmt.Sprintf("%02x:%02x:%d", major, minor, st.Ino)
	pid := strconv.Itoa(os.Getpid())
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "FLOCK" && f[4] == pid && f[5] == want {
			return true
		}
	}
	return false
}
