package spool

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

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
	refused   bool // Reject: a Put of this transaction was refused: later ones are too
	diskFull  bool // the disk is full: new messages are answered "full" without a write
	txid      uint64
	reserved  []*reservation
	size      int64 // the file's data size after the transaction
	st        stateTxn
	listed    dedupeList // dedupe keys recorded by this transaction, for dedupe_exp
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
	case opBatch:
		return t.putBatch(o)
	case opState:
		return t.stateOp(o)
	}
	return fmt.Errorf("spool: unknown op %d", o.kind)
}

func (t *txn) put(o *op) error {
	e := &o.e
	s := t.s
	dedupe := e.DedupeKey != "" && s.opts.DedupeWindow > 0
	var db *bolt.Bucket
	// The key's entry as this message found it: one lookup serves the
	// duplicate check and the renewal below (nothing in between touches
	// the dedupe index).
	var had bool
	var oldExp int64
	if dedupe {
		db = t.tx.Bucket(bktDedupe)
		if v := db.Get([]byte(e.DedupeKey)); len(v) == 16 {
			had, oldExp = true, int64(idOf(v[:8]))
			if !e.DedupeRecordOnly && oldExp > t.now {
				o.res = PutResult{ID: idOf(v[8:]), Duplicate: true}
				t.ctr.duplicates++
				return nil
			}
		}
	}
	if len(e.State) > 0 && !t.stateFits(e.State) {
		o.err = fmt.Errorf("%w (the message carries local state)", ErrStateFull)
		t.ctr.rejected++
		t.st.delta[e.State[0].Kind].Refused++
		return nil
	}
	r := record{kind: kindQueued, priority: e.Priority, enqueued: t.now, expires: nano(e.ExpiresAt), data: e.Data}
	need := int64(r.size() + 8)
	if s.opts.Overflow == Block && t.parking {
		o.park = true
		return nil
	}
	if t.diskFull {
		if s.opts.Overflow == Block {
			o.park, t.parking, t.full = true, true, true
			return nil
		}
		o.err = fmt.Errorf("%w: the disk is full", ErrFull)
		t.ctr.rejected++
		t.full = true
		return nil
	}
	if t.refused {
		// An ack earlier in this transaction may have made room, but a
		// later message must not be stored ahead of an earlier refused one.
		o.err = fmt.Errorf("%w (a message before it in the same commit was refused)", ErrFull)
		t.ctr.rejected++
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
			t.refused = s.opts.Overflow == Reject
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
		if !had {
			t.c.dedupe++
		}
		// A renewed key keeps its older dedupe_exp listing: the sweep
		// forgets a key only at the expiry its entry holds now.
		if err := db.Put(key, timeKey(exp, u64(id))); err != nil {
			return err
		}
		if err := t.listed.add(t.tx, exp, id, key); err != nil {
			return err
		}
		if t.c.dedupe > int64(s.opts.DedupeMaxEntries) {
			if err := t.forgetOldestDedupe(); err != nil {
				return err
			}
		}
	}
	if len(e.State) > 0 {
		// Checked by stateFits above: nothing is refused here.
		if _, err := t.applyState(e.State); err != nil {
			return err
		}
	}
	o.res = PutResult{ID: id}
	t.ctr.accepted++
	t.added = true
	return nil
}

// forgetOldestDedupe forgets the keys listed in the oldest dedupe_exp
// entries until the count is under the cap again (or no entry is left):
// an entry lists up to one transaction's keys, so the count may end up to
// that many under it.
func (t *txn) forgetOldestDedupe() error {
	xb := t.tx.Bucket(bktDedupeExp)
	for t.c.dedupe > int64(t.s.opts.DedupeMaxEntries) {
		k, v := xb.Cursor().First()
		if k == nil {
			return nil
		}
		if err := t.forgetListed(xb, k, v); err != nil {
			return err
		}
	}
	return nil
}

// forgetListed forgets the keys of dedupe_exp entry k, v that still expire
// at its time (a key renewed since is listed again, later), then the entry.
func (t *txn) forgetListed(xb *bolt.Bucket, k, v []byte) error {
	k, v = append([]byte(nil), k...), append([]byte(nil), v...)
	if len(k) < 8 {
		return xb.Delete(k) // not an entry of ours
	}
	db := t.tx.Bucket(bktDedupe)
	at := string(k[:8])
	err := eachListed(k, v, func(key []byte) error {
		if cur := db.Get(key); len(cur) == 16 && string(cur[:8]) == at {
			if err := db.Delete(key); err != nil {
				return err
			}
			t.c.dedupe--
		}
		return nil
	})
	if err != nil {
		return err
	}
	return xb.Delete(k)
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
	if err := fillPages(t.tx, bktLanes[r.priority]).Put(u64(id), v); err != nil {
		return err
	}
	if r.expires != 0 {
		if err := fillPages(t.tx, bktExpiry).Put(timeKey(r.expires, u64(id)), []byte{r.priority}); err != nil {
			return err
		}
	}
	t.c.addLane(r.priority, id, int64(len(v)+8))
	return nil
}

// removeQueued deletes id from lane and returns its record (data copied).
func (t *txn) removeQueued(lane uint8, id uint64) (record, error) {
	r, _, err := t.removeIfQueued(lane, id)
	return r, err
}

// removeIfQueued is removeQueued that also reports whether id was there:
// one cursor seek finds, reads and deletes it.
func (t *txn) removeIfQueued(lane uint8, id uint64) (record, bool, error) {
	c := t.tx.Bucket(bktLanes[lane]).Cursor()
	key := u64(id)
	k, v := c.Seek(key)
	if k == nil || idOf(k) != id || len(k) != 8 {
		return record{}, false, nil
	}
	size := int64(len(v) + 8)
	r, derr := decodeRecord(key, v)
	if derr == nil {
		r.data = append([]byte(nil), r.data...)
	} else {
		r = record{kind: kindQueued, priority: lane, data: append([]byte(nil), v...), text: derr.Error()}
	}
	if err := c.Delete(); err != nil {
		return r, true, err
	}
	if derr == nil && r.expires != 0 {
		if err := t.tx.Bucket(bktExpiry).Delete(timeKey(r.expires, key)); err != nil {
			return r, true, err
		}
	}
	t.c.delLane(lane, id, size)
	t.unlease = append(t.unlease, id)
	t.freed = true
	return r, true, nil
}

func (t *txn) ack(ids []uint64) error {
	retain := t.s.opts.RetainDelivered > 0
	// The lanes of leased ids, under one lock.
	lanes := make([]int, len(ids))
	t.s.mu.Lock()
	for i, id := range ids {
		lanes[i] = -1
		if l, ok := t.s.leases[id]; ok {
			lanes[i] = int(l.lane)
		}
	}
	t.s.mu.Unlock()
	for i, id := range ids {
		var r record
		found := false
		if lanes[i] >= 0 {
			var err error
			if r, found, err = t.removeIfQueued(uint8(lanes[i]), id); err != nil {
				return err
			}
		}
		if !found {
			lane, ok := t.laneOf(id)
			if !ok {
				t.unlease = append(t.unlease, id)
				continue
			}
			var err error
			if r, err = t.removeQueued(lane, id); err != nil {
				return err
			}
		}
		t.ctr.acked++
		if retain {
			r.kind, r.stamp, r.text = kindDelivered, t.now, ""
			v := r.encode(id)
			if err := fillPages(t.tx, bktDelivered).Put(u64(id), v); err != nil {
				return err
			}
			t.c.addRet(id, int64(len(v)+8))
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
		b := fillPages(t.tx, bktLanes[lane])
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
	b := fillPages(t.tx, bktLanes[lane])
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
	if err := fillPages(t.tx, bktDLQ).Put(u64(id), v); err != nil {
		return err
	}
	t.c.addDLQ(id, int64(len(v)+8))
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
		t.c.delDLQ(idOf(k), size)
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
		t.c.delRet(idOf(k), size)
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
		t.c.delRet(idOf(k), sizes[i])
		t.freed = true
	}
	return len(keys), nil
}
