package spool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TryLease hands out up to max queued messages without waiting; it may
// return none. Each leased message is invisible to other leases until it is
// acked, nacked, or its lease times out (then it comes back like a Nack).
//
// Order: the highest-priority lane with messages first, FIFO by id within a
// lane; while a higher lane has a backlog, Options.LowerLaneShare of the
// leases go round-robin to lower lanes so none starves. Expired messages are
// never leased: they are handed to the writer to drop or dead-letter.
func (s *Spool) TryLease(max int) ([]Item, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: lease max %d", ErrInvalid, max)
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	kick := s.expireLeasesLocked(now)
	var items []Item
	err := s.view(func(tx *bolt.Tx) error {
		var it [Lanes]laneIter
		nowN := now.UnixNano()
		ready := func(l int) bool {
			if s.cur.lanes[l][0] == 0 {
				return false
			}
			ok, k := s.peek(&it[l], l, tx, nowN)
			kick = kick || k
			return ok
		}
		for len(items) < max {
			top := -1
			for l := range Lanes {
				if ready(l) {
					top = l
					break
				}
			}
			if top < 0 {
				break
			}
			lane := top
			if share := s.opts.LowerLaneShare; share > 0 && top < Lanes-1 {
				span := Lanes - 1 - top
				for j := range span {
					l := top + 1 + (s.rr+j)%span
					if !ready(l) {
						continue
					}
					s.shareTotal++
					if s.shareLower+1 <= share*s.shareTotal {
						lane = l
						s.shareLower++
						s.rr++
					}
					break
				}
				if s.shareTotal > 1<<20 {
					s.shareTotal, s.shareLower = s.shareTotal/2, s.shareLower/2
				}
			}
			items = append(items, s.take(&it[lane], lane, now))
		}
		return nil
	})
	if kick {
		s.poke()
	}
	return items, err
}

// Lease is TryLease that waits until at least one message is available, ctx
// is done (ctx.Err()) or the spool closes (ErrClosed).
func (s *Spool) Lease(ctx context.Context, max int) ([]Item, error) {
	for {
		s.mu.Lock()
		avail := s.avail
		s.mu.Unlock()
		items, err := s.TryLease(max)
		if err != nil || len(items) > 0 {
			return items, err
		}
		select {
		case <-avail:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

type laneIter struct {
	c    *bolt.Cursor
	k, v []byte
	r    record
}

// peek positions it on the lane's next leasable message. Damaged and expired
// records met on the way are marked (so no other Lease takes them) and queued
// for the writer; kick reports that the writer has work.
func (s *Spool) peek(it *laneIter, lane int, tx *bolt.Tx, now int64) (ok, kick bool) {
	if it.c == nil {
		it.c = tx.Bucket(bktLanes[lane]).Cursor()
		it.k, it.v = it.c.Seek(u64(s.cursor[lane]))
	}
	for ; it.k != nil; it.k, it.v = it.c.Next() {
		id := idOf(it.k)
		if _, leased := s.leases[id]; leased {
			continue
		}
		r, err := decodeRecord(it.k, it.v)
		switch {
		case err != nil:
			s.pendDead[id] = err.Error()
		case r.expires != 0 && r.expires <= now:
			s.pendExpire = append(s.pendExpire, id)
		default:
			// Targets, not increments: the writer may already have stored
			// the bump while pendBump still holds it.
			r.attempts = max(r.attempts, s.pendBump[id])
			it.r = r
			return true, kick
		}
		s.leases[id] = &lease{lane: uint8(lane), expiring: true}
		kick = true
	}
	return false, kick
}

func (s *Spool) take(it *laneIter, lane int, now time.Time) Item {
	id := idOf(it.k)
	item := it.r.item(id)
	ls := &lease{lane: uint8(lane), deadline: now.Add(s.opts.LeaseTimeout), attempts: item.Attempts}
	s.leases[id] = ls
	s.leaseQ = append(s.leaseQ, leaseRef{id, ls})
	s.cursor[lane] = id + 1
	it.k, it.v = it.c.Next()
	return item
}

// expireLeasesLocked returns leases past their deadline to the queue, like
// a Nack: at once in memory (so this very Lease can hand them out again), and
// their Attempts increment through the writer (pendBump). s.mu must be held.
//
// Leases are made with one timeout, so their deadlines grow in the order
// of s.leaseQ: only its head is looked at, and entries of leases that ended
// (acked, nacked) are dropped when they reach it. Cost: the leases that
// expire or ended, not all that are out.
func (s *Spool) expireLeasesLocked(now time.Time) bool {
	n := 0
	for len(s.leaseQ) > 0 {
		r := s.leaseQ[0]
		if cur, ok := s.leases[r.id]; ok && cur == r.l {
			if !now.After(r.l.deadline) {
				break
			}
			delete(s.leases, r.id)
			if r.id < s.cursor[r.l.lane] {
				s.cursor[r.l.lane] = r.id
			}
			s.pendBump[r.id] = max(s.pendBump[r.id], r.l.attempts+1)
			s.ctr.nacked++
			n++
		}
		s.leaseQ[0] = leaseRef{}
		s.leaseQ = s.leaseQ[1:]
	}
	if n > 0 {
		close(s.avail)
		s.avail = make(chan struct{})
	}
	return n > 0
}

// leaseRef is an entry of s.leaseQ: the lease given for id.
type leaseRef struct {
	id uint64
	l  *lease
}

func (s *Spool) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// housekeep runs in the writer: lease timeouts, the TTL sweep, forgetting
// old dedupe keys and retained messages, each in bounded batches.
func (s *Spool) housekeep() {
	if time.Since(s.lastDrop) >= dropResidentEvery {
		// Pages read by leasing stay mapped (resident) until memory is
		// short; a drained backlog would leave the whole file resident.
		s.lastDrop = time.Now()
		s.dbmu.RLock()
		s.dropResident()
		s.dbmu.RUnlock()
	}
	now := s.now()
	nowN := now.UnixNano()
	s.mu.Lock()
	s.expireLeasesLocked(now)
	s.mu.Unlock()
	var expired []uint64
	var sweep bool
	_ = s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktExpiry).Cursor()
		for k, _ := c.First(); k != nil && len(expired) < sweepBatch && int64(idOf(k[:8])) <= nowN; k, _ = c.Next() {
			expired = append(expired, idOf(k[8:]))
		}
		if k, _ := tx.Bucket(bktDedupeExp).Cursor().First(); k != nil && int64(idOf(k[:8])) <= nowN {
			sweep = true
		}
		if s.opts.RetainDelivered > 0 {
			if k, v := tx.Bucket(bktDelivered).Cursor().First(); v != nil {
				if r, err := decodeRecord(k, v); err != nil || r.stamp <= nowN-int64(s.opts.RetainDelivered) {
					sweep = true
				}
			}
		}
		return nil
	})
	s.mu.Lock()
	for _, id := range expired {
		if _, leased := s.leases[id]; !leased {
			s.leases[id] = &lease{expiring: true}
			s.pendExpire = append(s.pendExpire, id)
		}
	}
	s.mu.Unlock()
	var batch []*op
	if sweep {
		batch = append(batch, &op{kind: opSweep, done: make(chan struct{})})
	}
	s.commit(batch)
}

// sweep forgets expired dedupe keys and retained messages past their time.
func (t *txn) sweep() error {
	xb := t.tx.Bucket(bktDedupeExp)
	for n := 0; n < sweepBatch; {
		k, v := xb.Cursor().First()
		if k == nil || (len(k) >= 8 && int64(idOf(k[:8])) > t.now) {
			break
		}
		n += max(1, len(v)/64) // about the keys an entry lists
		if err := t.forgetListed(xb, k, v); err != nil {
			return err
		}
	}
	if t.s.opts.RetainDelivered > 0 {
		if _, err := t.sweepRetained(false, sweepBatch); err != nil {
			return err
		}
	}
	return nil
}

// Compact rewrites the file without its free pages (bbolt files never
// shrink by themselves) and returns the sizes before and after. Writers and
// leases wait while it runs; leases already handed out stay valid.
func (s *Spool) Compact(ctx context.Context) (before, after int64, err error) {
	o := &op{kind: opCompact}
	err = s.submit(ctx, o)
	return o.before, o.afterSize, err
}

func (s *Spool) compact() (before, after int64, err error) {
	s.dbmu.Lock()
	defer s.dbmu.Unlock()
	if fi, err := os.Stat(s.path); err == nil {
		before = fi.Size()
	}
	tmp := s.path + ".compact"
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType, NoSync: true})
	if err != nil {
		return before, 0, fmt.Errorf("spool: compact: %w", err)
	}
	err = bolt.Compact(dst, s.db, 64<<20)
	if err == nil {
		// The copy has transaction ids of its own.
		err = dst.Update(func(tx *bolt.Tx) error { return stamp(tx, s.nextID, &s.cur) })
	}
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return before, 0, fmt.Errorf("spool: compact: %w", err)
	}
	s.unpin()
	if err := s.db.Close(); err != nil {
		return before, 0, fmt.Errorf("spool: compact: close: %w", err)
	}
	renameErr := os.Rename(tmp, s.path)
	if renameErr == nil {
		syncDir(filepath.Dir(s.path))
	}
	db, err := bolt.Open(s.path, 0o600, s.boltOptions())
	if err != nil {
		return before, 0, fmt.Errorf("spool: compact: reopen: %w", err)
	}
	s.db = db
	s.dirty = false
	_ = db.View(func(tx *bolt.Tx) error { s.dataSize, s.txid = tx.Size(), uint64(tx.ID()); return nil })
	s.repinLocked()
	if renameErr != nil {
		return before, before, fmt.Errorf("spool: compact: %w", renameErr)
	}
	if fi, err := os.Stat(s.path); err == nil {
		after = fi.Size()
	}
	s.log.Info("spool compacted", "path", s.path, "before_bytes", before, "after_bytes", after)
	return before, after, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
