package spool

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
