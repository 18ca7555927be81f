package spool

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

type opKind uint8

const (
	opPut opKind = iota
	opAck
	opNack
	opDead
	opRequeue
	opPurge
	opReplay
	opCompact
	opSweep // housekeeping, from the writer itself
	opBatch // PutBatch: several Puts, all or none (batch.go)
	opState // local broker state (state.go)
)

// op is one request to the writer goroutine. The writer fills the result
// fields and closes done after the transaction that carried it committed
// (or failed).
type op struct {
	kind   opKind
	e      Entry
	batch  *batchPut // opBatch
	ids    []uint64
	reason string
	all    bool      // bulk operations: every entry
	since  int64     // replay
	after  uint64    // replay continuation
	stOps  []StateOp // opState (state.go)

	res      PutResult
	n        int
	more     bool
	err      error
	skip     bool      // excluded from a retried transaction (already answered)
	park     bool      // Block policy: no room yet, wait in s.parked (not answered)
	deadline time.Time // parked: answered ErrFull at this time
	done     chan struct{}

	// A Put whose caller's ctx ends while it is queued or parked is
	// withdrawn: answered with ctx's error and never stored. The writer
	// claims a Put (idle → claimed) before it applies it; the caller
	// withdraws one (idle → withdrawn) only if the writer has not, else it
	// waits for the answer of the transaction that holds it.
	state     atomic.Int32
	wasParked atomic.Bool // it waited in s.parked at least once

	before, afterSize int64 // compact
}

// Put states (op.state).
const (
	opIdle      int32 = iota // queued or parked: the caller may withdraw it
	opClaimed                // in the transaction being committed
	opWithdrawn              // the caller gave up first: never applied
)

// claim takes o for a transaction; false when its caller withdrew it.
func (o *op) claim() bool {
	return o.state.CompareAndSwap(opIdle, opClaimed) || o.state.Load() == opClaimed
}

// run is the writer goroutine: it owns every write transaction. It takes one
// operation, drains whatever else is already waiting (group commit), applies
// them all in one transaction, and answers them in order after the commit.
func (s *Spool) run() {
	defer close(s.done)
	period := min(housekeepPeriod, s.opts.FsyncInterval)
	tick := time.NewTicker(period)
	defer tick.Stop()
	batch := make([]*op, 0, 64)
	prev := 0 // size of the previous batch
	for {
		if s.Err() != nil {
			s.failedLoop()
			return
		}
		batch = batch[:0]
		select {
		case o, ok := <-s.ops:
			if !ok {
				s.syncIfDirty(true)
				s.answerParked(len(s.parked), ErrClosed, false)
				s.unpin()
				return
			}
			batch = s.drain(append(batch, o))
			// The producers answered by the previous commit are about to
			// send again; waiting while the batch is smaller than the last
			// one lets them join this batch instead of the next (without
			// it, batches alternate between two halves of the producers and
			// each message waits for two commits). The wait is bounded by
			// half the last commit's duration (lingerMin..lingerMax): it
			// never costs more than it can save. Not DB.Batch's 10 ms
			// timer: an idle spool commits at once.
			if len(batch) < prev {
				batch = s.linger(batch, prev, min(max(s.lastCommit/2, lingerMin), lingerMax))
			}
			batch = s.lingerAcks(batch)
			prev = len(batch)
		case <-s.kick:
			s.pruneParked()
		case <-tick.C:
			s.housekeep()
			s.syncIfDirty(false)
			s.expireParked()
			if s.diskFull && !time.Now().Before(s.nextProbe) {
				s.parkedFreed = true // try the parked Puts: room may have freed
			}
			s.unpark()
			continue
		}
		s.commitBatch(batch)
		s.unpark()
	}
}

// linger waits up to limit for the batch to reach prev operations. It
// blocks on the queue rather than yielding in a loop: a spinning writer
// burnt a core's share at low rates (fixed 2,000 msg/s: about a third of
// the edge's CPU), where most batches are one message shorter than the
// last by chance.
func (s *Spool) linger(batch []*op, prev int, limit time.Duration) []*op {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for len(batch) < prev {
		select {
		case o, ok := <-s.ops:
			if !ok {
				return batch // the next receive sees the close
			}
			batch = s.drain(append(batch, o))
			if bytes, ids := batchSize(batch); bytes >= maxBatchBytes || ids >= maxAckIDs || batch[len(batch)-1].kind == opCompact {
				return batch // a full transaction, or one that ends at a compaction
			}
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// drain adds the operations already waiting to batch, up to the bounds of
// one transaction (operations, data bytes, acked ids).
func (s *Spool) drain(batch []*op) []*op {
	bytes, ids := batchSize(batch)
	for len(batch) < maxBatchOps && bytes < maxBatchBytes && ids < maxAckIDs {
		select {
		case o, ok := <-s.ops:
			if !ok {
				return batch
			}
			batch = append(batch, o)
			bytes += o.dataLen()
			if o.kind == opAck || o.kind == opNack {
				ids += len(o.ids)
			}
			if o.kind == opCompact {
				return batch
			}
		default:
			return batch
		}
	}
	return batch
}

func batchSize(batch []*op) (bytes, ids int) {
	for _, o := range batch {
		bytes += o.dataLen()
		if o.kind == opAck || o.kind == opNack {
			ids += len(o.ids)
		}
	}
	return bytes, ids
}

// lingerAcks holds a batch of only acks and nacks (Sync durability) up to
// ackLinger for more to join, or for a Put whose commit they can share:
// every commit is fsync'd (G1), and while a backlog drains acks come in
// many small calls. A Put ends the wait (it must not wait), so does
// reaching maxAckIDs: coalesced, synced, bounded in time and count.
func (s *Spool) lingerAcks(batch []*op) []*op {
	if s.opts.Durability != Sync || !ackOnly(batch) || len(batch) == 0 {
		return batch
	}
	timer := time.NewTimer(ackLinger)
	defer timer.Stop()
	for {
		if _, ids := batchSize(batch); ids >= maxAckIDs || len(batch) >= maxBatchOps || !ackOnly(batch) {
			return batch
		}
		select {
		case o, ok := <-s.ops:
			if !ok {
				return batch // the next receive sees the close
			}
			batch = s.drain(append(batch, o))
		case <-timer.C:
			return batch
		}
	}
}

// commitBatch runs the batch (compactions alone, after what precedes them).
func (s *Spool) commitBatch(batch []*op) {
	for i, o := range batch {
		if o.kind == opCompact {
			s.commit(batch[:i])
			o.before, o.afterSize, o.err = s.compact()
			close(o.done)
			s.commitBatch(batch[i+1:])
			return
		}
	}
	s.commit(batch)
}

func (s *Spool) syncIfDirty(force bool) {
	if !s.dirty || (!force && s.now().Sub(s.lastSync) < s.opts.FsyncInterval) {
		return
	}
	s.dbmu.RLock()
	err := s.db.Sync()
	s.dbmu.RUnlock()
	if err != nil {
		s.log.Error("spool fsync failed", "path", s.path, "err", err)
		return
	}
	s.dirty = false
	s.lastSync = s.now()
	s.mu.Lock()
	s.ctr.syncs++
	s.mu.Unlock()
	s.repin()
}

// Pinning (Interval durability). bbolt reuses a page freed by a commit as
// soon as no open transaction can read it. After a commit that was not
// fsync'd, that page may still belong to the last state that is on disk:
// overwriting it before the next fsync would leave a power cut with a
// damaged file rather than the last FsyncInterval lost. So the writer
// keeps a read transaction open on the last fsync'd state (the pin): its
// pages are not reused until the next fsync moves the pin. A read
// transaction also blocks bbolt from growing its memory map, which a
// commit of the same goroutine would wait for forever; the file is mapped
// at mapFloor bytes from the start, and when it comes within pinMargin of
// that, commits are fsync'd and nothing is pinned.

// repin moves the pin to the current (just fsync'd) state.
func (s *Spool) repin() {
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	s.repinLocked()
}

// repinLocked is repin for a caller that holds dbmu.
func (s *Spool) repinLocked() {
	s.unpin()
	if s.opts.Durability != Interval || s.mapFloor == 0 || s.dataSize+pinMargin >= s.mapFloor {
		return
	}
	if tx, err := s.db.Begin(false); err == nil {
		s.pin = tx
	}
}

func (s *Spool) unpin() {
	if s.pin != nil {
		_ = s.pin.Rollback()
		s.pin = nil
	}
}

// commit runs one write transaction: the batch and the writer's own
// pending work (expired leases, expired and damaged records). Its phases:
// collect the pending work, execute the transaction, then either publish
// its effects and answer the batch, or give the work back and fail it.
func (s *Spool) commit(batch []*op) {
	w := s.collect()
	if len(batch) == 0 && w.empty() {
		return
	}
	// Every commit is fsync'd, except in Interval durability while the
	// last fsync'd state is pinned (see repin).
	noSync := s.opts.Durability == Interval && s.pin != nil
	if noSync && s.dataSize+pinMargin >= s.mapFloor {
		s.syncIfDirty(true) // about to outgrow the map: sync, unpin
		s.unpin()
		noSync = false
		s.log.Warn("spool: durability interval now fsyncs every commit: the file outgrew the memory map taken up front (compact it to return)",
			"path", s.path, "file_bytes", s.dataSize, "map_bytes", s.mapFloor)
	}
	s.pruneParked()
	s.refuseNew = s.diskFullNow()
	start := time.Now()
	t, err := s.execute(batch, w, noSync)
	elapsed := time.Since(start)
	s.lastCommit = elapsed
	if err != nil {
		if s.fatal(err) {
			s.fail(batch, err)
			return
		}
		s.failCommit(batch, w, err)
		return
	}
	s.txid = t.txid
	if t.ctr.accepted > 0 {
		s.leaveDiskFull()
	} else if t.freed && s.diskFull {
		s.freedInFile = true // pages freed inside the file: a message may fit
	}
	s.publish(t, w, len(batch), elapsed, noSync)
	s.answer(batch, t.freed)
	if !noSync && s.opts.Durability == Interval {
		s.dirty = false
		s.lastSync = s.now()
		s.repin()
	}
}

// pending is the writer's own work taken into one transaction.
type pending struct {
	base    counts
	expires []uint64
	dead    map[uint64]string
	bumps   map[uint64]uint32
}

func (w *pending) empty() bool { return len(w.bumps) == 0 && len(w.expires) == 0 && len(w.dead) == 0 }

// apply does the pending work in t, before the batch.
func (w *pending) apply(t *txn) error {
	for id, n := range w.bumps {
		if err := t.bump(id, n); err != nil {
			return err
		}
	}
	for _, id := range w.expires {
		if err := t.expire(id); err != nil {
			return err
		}
	}
	for id, why := range w.dead {
		if err := t.corrupt(id, why); err != nil {
			return err
		}
	}
	return nil
}

// collect takes the work Lease and lease expiry left for the writer, and
// the committed counts the transaction starts from.
func (s *Spool) collect() *pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &pending{base: s.cur, expires: s.pendExpire, dead: s.pendDead}
	s.pendExpire = nil
	if len(w.dead) > 0 {
		s.pendDead = make(map[uint64]string)
	}
	// pendBump stays visible to Lease until the commit, then is removed
	// unless a later expiry raised it meanwhile.
	w.bumps = make(map[uint64]uint32, len(s.pendBump))
	for id, n := range s.pendBump {
		w.bumps[id] = n
	}
	return w
}

// execute runs the transaction. When the file hits bbolt's size ceiling it
// runs again without the batch's new messages (refused ErrFull), so that
// acks, which free space, still commit.
func (s *Spool) execute(batch []*op, w *pending, noSync bool) (*txn, error) {
	// A synced commit keeps bbolt's two fsyncs, the pages and then the
	// meta page, and the answers wait for both. With one fsync of both
	// together (2e25aa6), a power cut during it could leave the new meta
	// page without all its pages, which Open cannot tell from damage to a
	// commit that was answered: returning to the commit before lost such
	// damaged records without a word (TestDamagedLastCommitIsReported).
	// With two, a newest tree that fails the check is damage, and Open
	// salvages and reports it.
	s.db.NoSync = noSync
	t, err := s.runBatches(w.base, batch, w.apply)
	if err != nil && t != nil {
		s.release(t.reserved) // rolled back: nothing reserved was deleted
	}
	full := errors.Is(err, berrors.ErrMaxSizeReached)
	if !full && err != nil && isDiskFull(err) && !s.fatal(err) {
		full = true
		s.enterDiskFull(err)
	}
	if full {
		// Commit the rest (acks free space); the new messages get the
		// overflow policy's "full" answer.
		why := "the file reached its size limit"
		if s.diskFull {
			why = "the disk is full"
		}
		for _, o := range batch {
			if o.skip {
				continue
			}
			switch {
			case (o.kind == opPut || o.kind == opBatch) && s.opts.Overflow == Block && !o.tooBig(s.opts.MaxBytes):
				o.skip, o.err, o.res, o.park = true, nil, PutResult{}, true
			case o.kind == opPut || o.kind == opBatch || o.kind == opReplay || o.kind == opRequeue:
				o.skip, o.err, o.res, o.park = true, fmt.Errorf("%w: %s", ErrFull, why), PutResult{}, false
				if o.kind == opPut || o.kind == opBatch {
					s.mu.Lock()
					s.ctr.rejected++
					s.full = true
					s.mu.Unlock()
				}
			}
		}
		t, err = s.runBatches(w.base, batch, w.apply)
		if err != nil && t != nil {
			s.release(t.reserved)
		}
	}
	return t, err
}

// failCommit gives the pending work back for a later transaction and
// answers the batch with err.
func (s *Spool) failCommit(batch []*op, w *pending, err error) {
	if isDiskFull(err) {
		s.enterDiskFull(err) // logs, rate-limited
		err = fmt.Errorf("%w: the disk is full: %w", ErrFull, err)
	} else {
		err = fmt.Errorf("spool: commit: %w", err)
		s.log.Error("spool commit failed", "path", s.path, "err", err, "ops", len(batch))
	}
	s.mu.Lock()
	// Bumps were never taken out of pendBump.
	s.pendExpire = append(s.pendExpire, w.expires...)
	for id, why := range w.dead {
		s.pendDead[id] = why
	}
	s.mu.Unlock()
	for _, o := range batch {
		if !o.skip {
			o.err = err
		}
		close(o.done)
	}
}

// publish applies a committed transaction to the in-memory state: counts,
// leases, lane cursors, counters, the full flag, and wakes Lease when
// something became leasable.
func (s *Spool) publish(t *txn, w *pending, ops int, elapsed time.Duration, noSync bool) {
	s.dirty = s.dirty || noSync
	s.nextID = t.nextID
	s.dataSize = t.size
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = t.c
	s.publishState(t)
	for id, n := range w.bumps {
		if s.pendBump[id] <= n {
			delete(s.pendBump, id)
		}
	}
	for _, id := range t.unlease {
		delete(s.leases, id)
	}
	for _, r := range t.resets {
		if r[1] < s.cursor[r[0]] {
			s.cursor[r[0]] = r[1]
		}
	}
	k := &s.ctr
	k.accepted += t.ctr.accepted
	k.duplicates += t.ctr.duplicates
	k.acked += t.ctr.acked
	k.nacked += t.ctr.nacked
	k.dead += t.ctr.dead
	k.rejected += t.ctr.rejected
	for i := range k.dropped {
		k.dropped[i] += t.ctr.dropped[i]
	}
	k.commits++
	k.commitOps += uint64(ops)
	k.commitTime += elapsed
	b := 0
	for b < len(CommitBuckets) && elapsed > CommitBuckets[b] {
		b++
	}
	k.commitHist[b]++
	if !noSync {
		k.syncs += 2 // bbolt, in the Commit that returned: the pages, then the meta page
	}
	if t.full {
		s.full = true
	} else if t.freed || t.ctr.accepted > 0 {
		s.full = false
	}
	if t.added {
		close(s.avail)
		s.avail = make(chan struct{})
	}
}

// answer closes the done channel of every operation of a committed batch,
// except the Puts that were parked (Block policy): they join s.parked,
// where their callers may withdraw them again.
func (s *Spool) answer(batch []*op, freed bool) {
	if freed && (len(s.parked) > 0 || s.unparking) {
		s.parkedFreed = true
	}
	now := time.Now()
	parked := false
	for _, o := range batch {
		if o.park {
			o.skip = false // tried again, whole, when it is unparked
			if o.deadline.IsZero() {
				o.deadline = now.Add(s.opts.BlockTimeout)
			}
			s.parked = append(s.parked, o)
			o.wasParked.Store(true)
			o.state.Store(opIdle)
			parked = true
			continue
		}
		close(o.done)
	}
	if parked {
		// Wake callers whose ctx ended while their Put was in this
		// transaction: it is parked now, and theirs to withdraw.
		s.mu.Lock()
		close(s.parkedNow)
		s.parkedNow = make(chan struct{})
		s.mu.Unlock()
	}
}

func ackOnly(batch []*op) bool {
	for _, o := range batch {
		if o.kind != opAck && o.kind != opNack {
			return false
		}
	}
	return true
}

// runTxn applies the batch in one Update. Per-operation failures (ErrFull,
// ErrNotFound) are answered on the op and do not fail the transaction; an
// error from bbolt does.
func (s *Spool) runTxn(base counts, batch []*op, internal func(*txn) error) (t *txn, err error) {
	if h := s.txnHook.Load(); h != nil {
		(*h)()
	}
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptionError{Path: s.path, Err: fmt.Errorf("bbolt: %v", r)}
		}
	}()
	err = s.db.Update(func(tx *bolt.Tx) error {
		t = &txn{s: s, tx: tx, c: base, nextID: s.nextID, now: s.now().UnixNano(),
			parking: len(s.parked) > 0 && !s.unparking, diskFull: s.refuseNew, txid: uint64(tx.ID())}
		if err := internal(t); err != nil {
			return err
		}
		for _, o := range batch {
			if o.skip {
				t.holdBack(o)
				continue
			}
			if (o.kind == opPut || o.kind == opBatch) && !o.claim() {
				o.skip = true // withdrawn by its caller: never stored
				continue
			}
			o.err, o.n, o.more, o.res, o.park = nil, 0, false, PutResult{}, false
			if err := t.apply(o); err != nil {
				return err
			}
		}
		if err := t.listed.flush(tx); err != nil {
			return err
		}
		meta := tx.Bucket(bktMeta)
		if err := meta.Put(keyNextID, u64(t.nextID)); err != nil {
			return err
		}
		t.size = tx.Size()
		if err := stamp(tx, t.nextID, &t.c); err != nil {
			return err
		}
		return meta.Put(keyCounts, t.c.encode())
	})
	return t, err
}

// fillPages opens a bucket whose keys only grow with time (ids, expiry
// times: the lanes, dlq, delivered, expiry, dedupe_exp) for a Put, and lets
// bbolt fill its pages before it splits them: by default it splits a page
// half full, which for keys that only ever go to the end leaves every page
// half empty for good (the file was 2.5 times its data). Every Put into
// those buckets goes through it (bbolt keeps the setting on the bucket for
// the rest of the transaction). Setting it where a commit writes, not on
// all 14 buckets at the start of each commit, saves opening the buckets a
// commit never writes: 7-9 % of the CPU of a spool that commits one message
// at a time (BenchmarkPutSync/producers=1 profiles).
// Deletes need no setting: bbolt splits only a node that outgrew its page.
func fillPages(tx *bolt.Tx, name []byte) *bolt.Bucket {
	b := tx.Bucket(name)
	b.FillPercent = 1.0
	return b
}
