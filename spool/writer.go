package spool

import (
	"errors"
	"fmt"
	"runtime"
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
)

// op is one request to the writer goroutine. The writer fills the result
// fields and closes done after the transaction that carried it committed
// (or failed).
type op struct {
	kind   opKind
	e      Entry
	ids    []uint64
	reason string
	all    bool   // bulk operations: every entry
	since  int64  // replay
	after  uint64 // replay continuation

	res      PutResult
	n        int
	more     bool
	err      error
	skip     bool      // excluded from a retried transaction (already answered)
	park     bool      // Block policy: no room yet, wait in s.parked (not answered)
	deadline time.Time // parked: answered ErrFull at this time
	done     chan struct{}

	before, afterSize int64 // compact
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
		batch = batch[:0]
		select {
		case o, ok := <-s.ops:
			if !ok {
				s.syncIfDirty(true)
				s.answerParked(len(s.parked), ErrClosed)
				return
			}
			batch = s.drain(append(batch, o))
			// The producers answered by the previous commit are about to
			// send again; yielding while the batch is smaller than the last
			// one lets them join this batch instead of the next (without
			// it, batches alternate between two halves of the producers and
			// each message waits for two commits). The wait is bounded by
			// half the last commit's duration (lingerMin..lingerMax): it
			// never costs more than it can save. Not DB.Batch's 10 ms
			// timer: an idle spool commits at once.
			if len(batch) < prev {
				limit := min(max(s.lastCommit/2, lingerMin), lingerMax)
				for t0 := time.Now(); len(batch) < prev && time.Since(t0) < limit; {
					runtime.Gosched()
					batch = s.drain(batch)
				}
			}
			prev = len(batch)
		case <-s.kick:
		case <-tick.C:
			s.housekeep()
			s.syncIfDirty(false)
			s.expireParked()
			s.unpark()
			continue
		}
		s.commitBatch(batch)
		s.unpark()
	}
}

// Parking (the Block policy). A Put that does not fit is not answered: it
// waits in s.parked, and so does every Put after it while any waits, so
// that waiting never lets a later message overtake an earlier one (G3: a
// pipelining producer's messages are stored in the order it sent them).
// After a commit that freed space the parked Puts are retried in order;
// the first that still does not fit stops the rest. A parked Put is
// answered ErrFull when it has waited BlockTimeout.

// unpark retries the parked Puts after space was freed.
func (s *Spool) unpark() {
	if len(s.parked) == 0 || !s.parkedFreed {
		return
	}
	s.parkedFreed = false
	batch := s.parked
	s.parked = nil
	s.unparking = true
	s.commit(batch)
	s.unparking = false
}

// expireParked answers the Puts that waited BlockTimeout. Deadlines grow
// along the queue, so only its head needs looking at.
func (s *Spool) expireParked() {
	now := time.Now()
	n := 0
	for n < len(s.parked) && !now.Before(s.parked[n].deadline) {
		n++
	}
	if n > 0 {
		s.mu.Lock()
		s.ctr.rejected += uint64(n)
		s.mu.Unlock()
		s.answerParked(n, fmt.Errorf("%w (waited %s for space)", ErrFull, s.opts.BlockTimeout))
	}
}

func (s *Spool) answerParked(n int, err error) {
	for _, o := range s.parked[:n] {
		o.err = err
		close(o.done)
	}
	s.parked = append(s.parked[:0], s.parked[n:]...)
}

func (s *Spool) drain(batch []*op) []*op {
	bytes := 0
	for len(batch) < maxBatchOps && bytes < maxBatchBytes {
		select {
		case o, ok := <-s.ops:
			if !ok {
				return batch
			}
			batch = append(batch, o)
			bytes += len(o.e.Data)
			if o.kind == opCompact {
				return batch
			}
		default:
			return batch
		}
	}
	return batch
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
}

// txn is the state of one write transaction. Changes to shared in-memory
// state are collected here and applied only after the commit succeeded.
type txn struct {
	s      *Spool
	tx     *bolt.Tx
	c      counts
	nextID uint64
	now    int64
	ctr    counters

	unlease   []uint64
	resets    [][2]uint64 // lane, id: cursor moves back
	added     bool        // something became leasable
	freed     bool        // space was freed
	full      bool
	evictFrom [Lanes]uint64
	parking   bool // a Put of this transaction was parked: later ones park too
	reserved  []*reservation
}

// reservation marks a message this transaction is about to delete (drop
// policy, dead letter) as taken, so that no Lease hands it out between the
// decision and the commit.
type reservation struct {
	id uint64
	l  *lease
}

// reserve takes id for this transaction unless it is leased.
func (t *txn) reserve(id uint64, lane uint8) bool {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if _, leased := t.s.leases[id]; leased {
		return false
	}
	l := &lease{lane: lane, expiring: true}
	t.s.leases[id] = l
	t.reserved = append(t.reserved, &reservation{id, l})
	return true
}

// release gives back reservations that were not used (a plan that did not
// make enough room, a failed commit).
func (s *Spool) release(rs []*reservation) {
	if len(rs) == 0 {
		return
	}
	s.mu.Lock()
	for _, r := range rs {
		if s.leases[r.id] == r.l {
			delete(s.leases, r.id)
		}
	}
	s.mu.Unlock()
}

func (s *Spool) commit(batch []*op) {
	s.mu.Lock()
	expires, dead := s.pendExpire, s.pendDead
	s.pendExpire = nil
	if len(dead) > 0 {
		s.pendDead = make(map[uint64]string)
	}
	// pendBump stays visible to Lease until the commit, then is removed
	// unless a later expiry raised it meanwhile.
	bumps := make(map[uint64]uint32, len(s.pendBump))
	for id, n := range s.pendBump {
		bumps[id] = n
	}
	base := s.cur
	s.mu.Unlock()
	if len(batch) == 0 && len(bumps) == 0 && len(expires) == 0 && len(dead) == 0 {
		return
	}
	internal := func(t *txn) error {
		for id, n := range bumps {
			if err := t.bump(id, n); err != nil {
				return err
			}
		}
		for _, id := range expires {
			if err := t.expire(id); err != nil {
				return err
			}
		}
		for id, why := range dead {
			if err := t.corrupt(id, why); err != nil {
				return err
			}
		}
		return nil
	}

	// Acks and nacks are not fsync'd on their own: losing one to a power
	// cut only re-delivers a message (at-least-once allows that), and the
	// next synced commit or the housekeeping tick (FsyncInterval) makes them
	// durable. This halves the fsyncs of a drain, which SD cards feel.
	noSync := s.opts.Durability == Interval || ackOnly(batch)
	s.db.NoSync = noSync
	start := time.Now()
	t, err := s.runTxn(base, batch, internal)
	if err != nil && t != nil {
		s.release(t.reserved) // rolled back: nothing reserved was deleted
	}
	if errors.Is(err, berrors.ErrMaxSizeReached) {
		// The file hit bbolt's ceiling: refuse this batch's new messages and
		// commit the rest (acks free space).
		for _, o := range batch {
			if o.kind == opPut || o.kind == opReplay || o.kind == opRequeue {
				o.skip, o.err, o.res, o.park = true, fmt.Errorf("%w: file reached its size limit", ErrFull), PutResult{}, false
			}
		}
		t, err = s.runTxn(base, batch, internal)
		if err != nil && t != nil {
			s.release(t.reserved)
		}
	}
	elapsed := time.Since(start)
	s.lastCommit = elapsed
	if err != nil {
		err = fmt.Errorf("spool: commit: %w", err)
		s.log.Error("spool commit failed", "path", s.path, "err", err, "ops", len(batch))
		s.mu.Lock()
		// Internal work is retried later (bumps were never taken out).
		s.pendExpire = append(s.pendExpire, expires...)
		for id, why := range dead {
			s.pendDead[id] = why
		}
		s.mu.Unlock()
		for _, o := range batch {
			if !o.skip {
				o.err = err
			}
			close(o.done)
		}
		return
	}
	s.dirty = noSync
	s.nextID = t.nextID

	s.mu.Lock()
	s.cur = t.c
	for id, n := range bumps {
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
	k.commitOps += uint64(len(batch))
	k.commitTime += elapsed
	if !noSync {
		k.syncs += 2 // bbolt: data pages, then the meta page
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
	s.mu.Unlock()
	if t.freed && (len(s.parked) > 0 || s.unparking) {
		s.parkedFreed = true
	}
	now := time.Now()
	for _, o := range batch {
		if o.park {
			if o.deadline.IsZero() {
				o.deadline = now.Add(s.opts.BlockTimeout)
			}
			s.parked = append(s.parked, o)
			continue
		}
		close(o.done)
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
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	defer func() {
		if r := recover(); r != nil {
			err = &CorruptionError{Path: s.path, Err: fmt.Errorf("bbolt: %v", r)}
		}
	}()
	err = s.db.Update(func(tx *bolt.Tx) error {
		t = &txn{s: s, tx: tx, c: base, nextID: s.nextID, now: s.now().UnixNano(),
			parking: len(s.parked) > 0 && !s.unparking}
		if err := internal(t); err != nil {
			return err
		}
		for _, o := range batch {
			if o.skip {
				continue
			}
			o.err, o.n, o.more, o.res, o.park = nil, 0, false, PutResult{}, false
			if err := t.apply(o); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bktMeta)
		if err := meta.Put(keyNextID, u64(t.nextID)); err != nil {
			return err
		}
		return meta.Put(keyCounts, t.c.encode())
	})
	return t, err
}

func (t *txn) apply(o *op) error {
	switch o.kind {
	case opPut:
		return t.put(o)
	case opAck:
		return t.ack(o.ids)
	case opNack:
		return t.nack(o.ids)
	case opDead:
		return t.deadLetter(o)
	case opRequeue, opPurge:
		return t.dlqBulk(o)
	case opReplay:
		return t.replay(o)
	case opSweep:
		return t.sweep()
	}
	return fmt.Errorf("spool: unknown op %d", o.kind)
}

func (t *txn) put(o *op) error {
	e := &o.e
	s := t.s
	dedupe := e.DedupeKey != "" && s.opts.DedupeWindow > 0
	var db *bolt.Bucket
	if dedupe {
		db = t.tx.Bucket(bktDedupe)
		if v := db.Get([]byte(e.DedupeKey)); len(v) == 16 && int64(idOf(v[:8])) > t.now {
			o.res = PutResult{ID: idOf(v[8:]), Duplicate: true}
			t.ctr.duplicates++
			return nil
		}
	}
	r := record{kind: kindQueued, priority: e.Priority, enqueued: t.now, expires: nano(e.ExpiresAt), data: e.Data}
	need := int64(r.size() + 8)
	if s.opts.Overflow == Block && t.parking {
		o.park = true
		return nil
	}
	if ok, err := t.makeRoom(need, e.Priority); err != nil || !ok {
		if err == nil && s.opts.Overflow == Block && (s.opts.MaxBytes <= 0 || need <= s.opts.MaxBytes) {
			o.park, t.parking, t.full = true, true, true
			return nil
		}
		if err == nil {
			o.err = ErrFull
			t.ctr.rejected++
			t.full = true
		}
		return err
	}
	id := t.nextID
	t.nextID++
	if err := t.addQueued(id, &r); err != nil {
		return err
	}
	if dedupe {
		exp := t.now + int64(s.opts.DedupeWindow)
		key := []byte(e.DedupeKey)
		if old := db.Get(key); len(old) == 16 {
			if err := t.tx.Bucket(bktDedupeExp).Delete(timeKey(int64(idOf(old[:8])), key)); err != nil {
				return err
			}
		} else {
			t.c.dedupe++
		}
		if err := db.Put(key, append(u64(uint64(exp)), u64(id)...)); err != nil {
			return err
		}
		if err := t.tx.Bucket(bktDedupeExp).Put(timeKey(exp, key), nil); err != nil {
			return err
		}
		if t.c.dedupe > int64(s.opts.DedupeMaxEntries) {
			if err := t.forgetOldestDedupe(); err != nil {
				return err
			}
		}
	}
	o.res = PutResult{ID: id}
	t.ctr.accepted++
	t.added = true
	return nil
}

func (t *txn) forgetOldestDedupe() error {
	xb := t.tx.Bucket(bktDedupeExp)
	k, _ := xb.Cursor().First()
	if k == nil {
		return nil
	}
	k = append([]byte(nil), k...)
	if err := t.tx.Bucket(bktDedupe).Delete(k[8:]); err != nil {
		return err
	}
	t.c.dedupe--
	return xb.Delete(k)
}

// over reports whether adding need bytes (and one message) breaks a cap.
func (t *txn) over(need int64) bool { return t.overWith(&t.c, need) }

func (t *txn) overWith(c *counts, need int64) bool {
	o := &t.s.opts
	return (o.MaxBytes > 0 && c.stored()+need > o.MaxBytes) ||
		(o.MaxMessages > 0 && c.messages()+1 > o.MaxMessages)
}

// makeRoom applies the overflow policy until need fits. Retained delivered
// messages go first (they were delivered already); then DropOldest or
// DropLowestPriority may delete queued messages that are not in flight.
func (t *txn) makeRoom(need int64, prio uint8) (bool, error) {
	o := &t.s.opts
	if o.MaxBytes > 0 && need > o.MaxBytes {
		return false, nil
	}
	for t.over(need) && t.c.ret > 0 {
		if n, err := t.sweepRetained(true, 64); err != nil || n == 0 {
			return false, err
		}
	}
	reason := DropReasonOldest
	switch o.Overflow {
	case DropOldest:
	case DropLowestPriority:
		reason = DropReasonLowestPriority
	default:
		return !t.over(need), nil
	}
	// Plan first, delete only if the plan makes enough room: a Put that is
	// refused in the end must not have dropped anything.
	proj := t.c
	from := t.evictFrom
	mark := len(t.reserved)
	type victim struct {
		lane uint8
		id   uint64
	}
	var plan []victim
	for t.overWith(&proj, need) {
		lane, id, ok := t.victim(reason, prio)
		if !ok {
			t.s.release(t.reserved[mark:])
			t.reserved = t.reserved[:mark]
			t.evictFrom = from
			return false, nil
		}
		size := int64(len(t.tx.Bucket(bktLanes[lane]).Get(u64(id))) + 8)
		proj.lanes[lane][0]--
		proj.lanes[lane][1] -= size
		plan = append(plan, victim{lane, id})
	}
	for _, v := range plan {
		if _, err := t.removeQueued(v.lane, v.id); err != nil {
			return false, err
		}
		t.ctr.dropped[reason]++
	}
	return true, nil
}

// victim finds the next message to drop: the oldest not in flight of any lane
// (DropOldest), or of the lowest-priority non-empty lane no higher than prio.
func (t *txn) victim(reason int, prio uint8) (uint8, uint64, bool) {
	head := func(lane uint8) (uint64, bool) {
		c := t.tx.Bucket(bktLanes[lane]).Cursor()
		for k, _ := c.Seek(u64(t.evictFrom[lane])); k != nil; k, _ = c.Next() {
			id := idOf(k)
			if !t.s.leased(id) {
				return id, true
			}
		}
		return 0, false
	}
	take := func(lane uint8, id uint64) bool { return t.reserve(id, lane) }
	if reason == DropReasonLowestPriority {
		for lane := Lanes - 1; lane >= int(prio); lane-- {
			if t.c.lanes[lane][0] == 0 {
				continue
			}
			if id, ok := head(uint8(lane)); ok && take(uint8(lane), id) {
				t.evictFrom[lane] = id + 1
				return uint8(lane), id, true
			}
		}
		return 0, 0, false
	}
	var best uint64
	bestLane := -1
	for lane := range Lanes {
		if t.c.lanes[lane][0] == 0 {
			continue
		}
		if id, ok := head(uint8(lane)); ok && (bestLane < 0 || id < best) {
			best, bestLane = id, lane
		}
	}
	if bestLane < 0 || !take(uint8(bestLane), best) {
		return 0, 0, false
	}
	t.evictFrom[bestLane] = best + 1
	return uint8(bestLane), best, true
}

func (s *Spool) leased(id uint64) bool {
	s.mu.Lock()
	_, ok := s.leases[id]
	s.mu.Unlock()
	return ok
}

// laneOf finds the lane holding id: from its lease, else by looking.
func (t *txn) laneOf(id uint64) (uint8, bool) {
	t.s.mu.Lock()
	l, ok := t.s.leases[id]
	t.s.mu.Unlock()
	key := u64(id)
	if ok && t.tx.Bucket(bktLanes[l.lane]).Get(key) != nil {
		return l.lane, true
	}
	for lane := range Lanes {
		if t.c.lanes[lane][0] > 0 && t.tx.Bucket(bktLanes[lane]).Get(key) != nil {
			return uint8(lane), true
		}
	}
	return 0, false
}

func (t *txn) addQueued(id uint64, r *record) error {
	v := r.encode(id)
	if err := t.tx.Bucket(bktLanes[r.priority]).Put(u64(id), v); err != nil {
		return err
	}
	if r.expires != 0 {
		if err := t.tx.Bucket(bktExpiry).Put(timeKey(r.expires, u64(id)), []byte{r.priority}); err != nil {
			return err
		}
	}
	t.c.lanes[r.priority][0]++
	t.c.lanes[r.priority][1] += int64(len(v) + 8)
	return nil
}

// removeQueued deletes id from lane and returns its record (data copied).
func (t *txn) removeQueued(lane uint8, id uint64) (record, error) {
	b := t.tx.Bucket(bktLanes[lane])
	key := u64(id)
	v := b.Get(key)
	if v == nil {
		return record{}, nil
	}
	size := int64(len(v) + 8)
	r, derr := decodeRecord(key, v)
	if derr == nil {
		r.data = append([]byte(nil), r.data...)
		if r.expires != 0 {
			if err := t.tx.Bucket(bktExpiry).Delete(timeKey(r.expires, key)); err != nil {
				return r, err
			}
		}
	} else {
		r = record{kind: kindQueued, priority: lane, data: append([]byte(nil), v...), text: derr.Error()}
	}
	if err := b.Delete(key); err != nil {
		return r, err
	}
	t.c.lanes[lane][0]--
	t.c.lanes[lane][1] -= size
	t.unlease = append(t.unlease, id)
	t.freed = true
	return r, nil
}

func (t *txn) ack(ids []uint64) error {
	retain := t.s.opts.RetainDelivered > 0
	for _, id := range ids {
		lane, ok := t.laneOf(id)
		if !ok {
			t.unlease = append(t.unlease, id)
			continue
		}
		r, err := t.removeQueued(lane, id)
		if err != nil {
			return err
		}
		t.ctr.acked++
		if retain {
			r.kind, r.stamp, r.text = kindDelivered, t.now, ""
			v := r.encode(id)
			if err := t.tx.Bucket(bktDelivered).Put(u64(id), v); err != nil {
				return err
			}
			t.c.ret++
			t.c.retB += int64(len(v) + 8)
		}
	}
	return nil
}

func (t *txn) nack(ids []uint64) error {
	for _, id := range ids {
		// Only a live lease can be nacked. A Nack from a holder whose lease
		// expired (the message went back, maybe to another holder) must not
		// cancel the current lease nor count the failure twice.
		t.s.mu.Lock()
		l, live := t.s.leases[id]
		live = live && !l.expiring
		t.s.mu.Unlock()
		if !live {
			continue
		}
		lane, ok := t.laneOf(id)
		t.unlease = append(t.unlease, id)
		if !ok {
			continue
		}
		b := t.tx.Bucket(bktLanes[lane])
		key := u64(id)
		r, err := decodeRecord(key, b.Get(key))
		if err != nil {
			continue // a bad record: the next Lease finds it and dead-letters it
		}
		r.attempts++
		if err := b.Put(key, r.encode(id)); err != nil {
			return err
		}
		t.resets = append(t.resets, [2]uint64{uint64(lane), id})
		t.added = true
		t.ctr.nacked++
	}
	return nil
}

// bump raises the attempts of a message whose lease expired to at least n
// (idempotent). The lease and cursor were already handled in memory.
func (t *txn) bump(id uint64, n uint32) error {
	lane, ok := t.laneOf(id)
	if !ok {
		return nil
	}
	b := t.tx.Bucket(bktLanes[lane])
	key := u64(id)
	r, err := decodeRecord(key, b.Get(key))
	if err != nil {
		return nil
	}
	if r.attempts >= n {
		return nil
	}
	r.data = append([]byte(nil), r.data...)
	r.attempts = n
	return b.Put(key, r.encode(id))
}

func (t *txn) toDLQ(id uint64, r record, reason string) error {
	r.kind, r.stamp, r.text = kindDead, t.now, reason
	v := r.encode(id)
	if err := t.tx.Bucket(bktDLQ).Put(u64(id), v); err != nil {
		return err
	}
	t.c.dlq++
	t.c.dlqB += int64(len(v) + 8)
	t.ctr.dead++
	return nil
}

func (t *txn) deadLetter(o *op) error {
	id := o.ids[0]
	lane, ok := t.laneOf(id)
	if !ok {
		o.err = fmt.Errorf("%w: message %d", ErrNotFound, id)
		return nil
	}
	// Not leased (an operator's request): take it so that no Lease hands it
	// out before the commit. Leased: the holder is the one dead-lettering.
	t.reserve(id, lane)
	r, err := t.removeQueued(lane, id)
	if err != nil {
		return err
	}
	return t.toDLQ(id, r, o.reason)
}

// expire handles one expired message found by Lease or the sweep.
func (t *txn) expire(id uint64) error {
	lane, ok := t.laneOf(id)
	if !ok {
		t.unlease = append(t.unlease, id)
		return nil
	}
	r, err := t.removeQueued(lane, id)
	if err != nil {
		return err
	}
	if t.s.opts.Expired == ExpireDeadLetter {
		return t.toDLQ(id, r, "expired")
	}
	t.ctr.dropped[DropReasonExpired]++
	return nil
}

// corrupt moves a record that failed its checksum to the DLQ, raw.
func (t *txn) corrupt(id uint64, why string) error {
	lane, ok := t.laneOf(id)
	if !ok {
		t.unlease = append(t.unlease, id)
		return nil
	}
	r, err := t.removeQueued(lane, id)
	if err != nil {
		return err
	}
	t.s.log.Error("spool record damaged, dead-lettered", "path", t.s.path, "msg_id", id, "err", why)
	return t.toDLQ(id, r, "damaged record: "+why)
}

// dlqBulk requeues or purges up to sweepBatch dead letters.
func (t *txn) dlqBulk(o *op) error {
	b := t.tx.Bucket(bktDLQ)
	var keys [][]byte
	if o.all {
		c := b.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < sweepBatch; k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
		}
		o.more = len(keys) == sweepBatch
	} else {
		for _, id := range o.ids {
			keys = append(keys, u64(id))
		}
	}
	for _, k := range keys {
		v := b.Get(k)
		if v == nil {
			continue
		}
		size := int64(len(v) + 8)
		if o.kind == opRequeue {
			r, err := decodeRecord(k, v)
			if err != nil {
				continue // unreadable: only a purge removes it
			}
			r.data = append([]byte(nil), r.data...)
			r.kind, r.stamp, r.text, r.attempts, r.expires = kindQueued, 0, "", 0, 0
			if t.over(int64(r.size() + 8)) {
				o.more = false
				break
			}
			if err := t.addQueued(idOf(k), &r); err != nil {
				return err
			}
			t.resets = append(t.resets, [2]uint64{uint64(r.priority), idOf(k)})
			t.added = true
		}
		if err := b.Delete(k); err != nil {
			return err
		}
		t.c.dlq--
		t.c.dlqB -= size
		t.freed = true
		o.n++
	}
	return nil
}

// replay re-enqueues up to sweepBatch retained messages.
func (t *txn) replay(o *op) error {
	b := t.tx.Bucket(bktDelivered)
	c := b.Cursor()
	var keys [][]byte
	cutoff := t.now - int64(t.s.opts.RetainDelivered)
	for k, v := c.Seek(u64(o.after + 1)); k != nil && len(keys) < sweepBatch; k, v = c.Next() {
		if r, err := decodeRecord(k, v); err == nil && r.enqueued >= o.since && r.stamp > cutoff {
			keys = append(keys, append([]byte(nil), k...))
		}
		o.after = idOf(k)
		o.more = true
	}
	if len(keys) < sweepBatch {
		if k, _ := c.Next(); k == nil {
			o.more = false
		}
	}
	for _, k := range keys {
		v := b.Get(k)
		r, err := decodeRecord(k, v)
		if err != nil {
			continue
		}
		size := int64(len(v) + 8)
		r.data = append([]byte(nil), r.data...)
		r.kind, r.stamp, r.attempts, r.expires = kindQueued, 0, 0, 0
		if err := b.Delete(k); err != nil {
			return err
		}
		t.c.ret--
		t.c.retB -= size
		id := t.nextID
		t.nextID++
		if err := t.addQueued(id, &r); err != nil {
			return err
		}
		t.added = true
		o.n++
	}
	return nil
}

// sweepRetained deletes up to max retained messages, oldest first: those
// older than RetainDelivered, or any when force (to make room).
func (t *txn) sweepRetained(force bool, max int) (int, error) {
	b := t.tx.Bucket(bktDelivered)
	cutoff := t.now - int64(t.s.opts.RetainDelivered)
	var keys [][]byte
	var sizes []int64
	c := b.Cursor()
	for k, v := c.First(); k != nil && len(keys) < max; k, v = c.Next() {
		if !force {
			if r, err := decodeRecord(k, v); err == nil && r.stamp > cutoff {
				break
			}
		}
		keys = append(keys, append([]byte(nil), k...))
		sizes = append(sizes, int64(len(v)+8))
	}
	for i, k := range keys {
		if err := b.Delete(k); err != nil {
			return i, err
		}
		t.c.ret--
		t.c.retB -= sizes[i]
		t.freed = true
	}
	return len(keys), nil
}
