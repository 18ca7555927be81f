package spooltest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ferrymq/ferry/spool"
)

// Memory is an in-memory fake of *spool.Spool with the same semantics and no
// durability: lanes 0..9 FIFO by id, a minimum share for lower lanes, Nack to
// the original position, lease expiry, dedupe by time and count, TTL, caps
// with the four overflow policies (bytes are len(Data)), DLQ, retention and
// Replay, and the Stats counters. Time comes from Options.Now; leases and TTLs
// are checked when Lease, TryLease or Stats run. It is safe for concurrent use.
//
// Restart simulates a process restart: leases are forgotten, counters reset,
// contents kept.
type Memory struct {
	mu      sync.Mutex
	opts    spool.Options
	now     func() time.Time
	closed  bool
	changed chan struct{} // closed and replaced on every state change

	nextID   uint64
	lanes    [spool.Lanes][]*memMsg // each sorted by id; leased ones included
	dlq      []spool.DeadLetter     // sorted by id
	retained []memRetained          // sorted by id

	dedupe      map[string]memDedupe
	dedupeOrder []memDedupeKey // insertion order; may hold stale entries

	served, servedLower uint64 // picks made while lower lanes waited
	st                  spool.Stats
}

type memMsg struct {
	item     spool.Item
	leased   bool
	deadline time.Time
}

type memRetained struct {
	item        spool.Item
	deliveredAt time.Time
}

type memDedupeKey struct {
	key string
	id  uint64
}

type memDedupe struct {
	id uint64
	at time.Time
}

// NewMemory returns an empty fake configured like spool.Open would be.
func NewMemory(opts spool.Options) *Memory {
	if opts.FsyncInterval == 0 {
		opts.FsyncInterval = 100 * time.Millisecond
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 1 << 30
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = 1 << 20
	}
	if opts.BlockTimeout == 0 {
		opts.BlockTimeout = 5 * time.Second
	}
	if opts.DedupeWindow == 0 {
		opts.DedupeWindow = 10 * time.Minute
	}
	if opts.DedupeMaxEntries == 0 {
		opts.DedupeMaxEntries = 1_000_000
	}
	if opts.LeaseTimeout == 0 {
		opts.LeaseTimeout = 30 * time.Second
	}
	if opts.LowerLaneShare == 0 {
		opts.LowerLaneShare = 0.1
	}
	m := &Memory{opts: opts, now: opts.Now, changed: make(chan struct{}), dedupe: map[string]memDedupe{}}
	if m.now == nil {
		m.now = time.Now
	}
	return m
}

// Restart closes m if it is open, forgets its leases (the messages become
// available again, Attempts unchanged), resets the counters and opens it
// again, like a process restart of the bbolt spool. It returns m.
func (m *Memory) Restart() *Memory {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		close(m.changed)
	}
	for l := range m.lanes {
		for _, msg := range m.lanes[l] {
			msg.leased = false
		}
	}
	m.st = spool.Stats{}
	m.served, m.servedLower = 0, 0
	m.closed = false
	m.changed = make(chan struct{})
	return m
}

// notify wakes Lease and blocked Put waiters. Called with mu held.
func (m *Memory) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// Put stores e, see spool.Spool.Put.
func (m *Memory) Put(ctx context.Context, e spool.Entry) (spool.PutResult, error) {
	switch {
	case int(e.Priority) >= spool.Lanes:
		return spool.PutResult{}, fmt.Errorf("spool: put: priority %d: %w", e.Priority, spool.ErrInvalid)
	case len(e.Data) == 0:
		return spool.PutResult{}, fmt.Errorf("spool: put: empty data: %w", spool.ErrInvalid)
	case len(e.Data) > m.opts.MaxMessageBytes:
		return spool.PutResult{}, fmt.Errorf("spool: put: %d bytes: %w", len(e.Data), spool.ErrTooLarge)
	case len(e.DedupeKey) > 1024:
		return spool.PutResult{}, fmt.Errorf("spool: put: dedupe key of %d bytes: %w", len(e.DedupeKey), spool.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return spool.PutResult{}, err
	}
	var deadline time.Time // Block policy, real time
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		if m.closed {
			return spool.PutResult{}, spool.ErrClosed
		}
		now := m.now()
		if r, dup := m.lookupDedupe(e.DedupeKey, now); dup {
			m.st.Duplicates++
			return r, nil
		}
		if m.fits(len(e.Data)) {
			break
		}
		m.st.Full = true
		switch m.opts.Overflow {
		case spool.Reject:
			m.st.Rejected++
			return spool.PutResult{}, fmt.Errorf("spool: put: %w", spool.ErrFull)
		case spool.DropOldest, spool.DropLowestPriority:
			if !m.dropOne(e.Priority) {
				m.st.Rejected++
				return spool.PutResult{}, fmt.Errorf("spool: put: %w", spool.ErrFull)
			}
			continue
		default: // Block
			if deadline.IsZero() {
				deadline = time.Now().Add(m.opts.BlockTimeout)
			}
			wait := time.Until(deadline)
			if wait <= 0 {
				m.st.Rejected++
				return spool.PutResult{}, fmt.Errorf("spool: put: blocked %v: %w", m.opts.BlockTimeout, spool.ErrFull)
			}
			ch := m.changed
			m.mu.Unlock()
			timer := time.NewTimer(wait)
			var err error
			select {
			case <-ch:
			case <-timer.C:
			case <-ctx.Done():
				err = ctx.Err()
			}
			timer.Stop()
			m.mu.Lock()
			if err != nil {
				m.st.Rejected++
				return spool.PutResult{}, err
			}
		}
	}
	m.st.Full = false
	now := m.now()
	m.nextID++
	msg := &memMsg{item: spool.Item{
		ID: m.nextID, Priority: e.Priority, EnqueuedAt: now, ExpiresAt: e.ExpiresAt, Data: slices.Clone(e.Data),
	}}
	m.lanes[e.Priority] = append(m.lanes[e.Priority], msg)
	m.st.Accepted++
	if e.DedupeKey != "" && m.opts.DedupeWindow > 0 {
		m.dedupe[e.DedupeKey] = memDedupe{id: msg.item.ID, at: now}
		m.dedupeOrder = append(m.dedupeOrder, memDedupeKey{e.DedupeKey, msg.item.ID})
		m.trimDedupe()
	}
	m.notify()
	return spool.PutResult{ID: msg.item.ID}, nil
}

func (m *Memory) lookupDedupe(key string, now time.Time) (spool.PutResult, bool) {
	if key == "" || m.opts.DedupeWindow <= 0 {
		return spool.PutResult{}, false
	}
	d, ok := m.dedupe[key]
	if !ok {
		return spool.PutResult{}, false
	}
	if !now.Before(d.at.Add(m.opts.DedupeWindow)) {
		delete(m.dedupe, key)
		return spool.PutResult{}, false
	}
	return spool.PutResult{ID: d.id, Duplicate: true}, true
}

// trimDedupe forgets the oldest keys beyond DedupeMaxEntries. dedupeOrder
// may hold stale occurrences (swept or re-added keys): an occurrence only
// deletes the key when it is the key's current entry.
func (m *Memory) trimDedupe() {
	for len(m.dedupe) > m.opts.DedupeMaxEntries && len(m.dedupeOrder) > 0 {
		o := m.dedupeOrder[0]
		m.dedupeOrder = m.dedupeOrder[1:]
		if d, ok := m.dedupe[o.key]; ok && d.id == o.id {
			delete(m.dedupe, o.key)
		}
	}
}

func (m *Memory) sweepDedupe(now time.Time) {
	for k, d := range m.dedupe {
		if !now.Before(d.at.Add(m.opts.DedupeWindow)) {
			delete(m.dedupe, k)
		}
	}
	if len(m.dedupeOrder) > 2*len(m.dedupe)+64 {
		m.dedupeOrder = slices.DeleteFunc(m.dedupeOrder, func(o memDedupeKey) bool {
			d, ok := m.dedupe[o.key]
			return !ok || d.id != o.id
		})
	}
}

func (m *Memory) counts() (msgs, bytes int64) {
	for _, lane := range m.lanes {
		for _, msg := range lane {
			msgs++
			bytes += int64(len(msg.item.Data))
		}
	}
	for _, d := range m.dlq {
		bytes += int64(len(d.Data))
	}
	for _, r := range m.retained {
		bytes += int64(len(r.item.Data))
	}
	return msgs, bytes
}

func (m *Memory) fits(n int) bool {
	msgs, bytes := m.counts()
	if m.opts.MaxMessages > 0 && msgs+1 > m.opts.MaxMessages {
		return false
	}
	if m.opts.MaxBytes >= 0 && bytes+int64(n) > m.opts.MaxBytes {
		return false
	}
	return true
}

// dropOne deletes one message per the overflow policy; false if none may go.
func (m *Memory) dropOne(incoming uint8) bool {
	if m.opts.Overflow == spool.DropOldest {
		best := -1
		for l, lane := range m.lanes {
			if len(lane) > 0 && (best < 0 || lane[0].item.ID < m.lanes[best][0].item.ID) {
				best = l
			}
		}
		if best < 0 {
			return false
		}
		m.lanes[best] = m.lanes[best][1:]
		m.st.Dropped[spool.DropReasonOldest]++
		return true
	}
	for l := spool.Lanes - 1; l >= int(incoming); l-- {
		if len(m.lanes[l]) > 0 {
			m.lanes[l] = m.lanes[l][1:]
			m.st.Dropped[spool.DropReasonLowestPriority]++
			return true
		}
	}
	return false
}

// Lease hands out up to max messages, blocking until at least one is
// available, see spool.Spool.Lease.
func (m *Memory) Lease(ctx context.Context, max int) ([]spool.Item, error) {
	if max <= 0 {
		return nil, fmt.Errorf("spool: lease: max %d: %w", max, spool.ErrInvalid)
	}
	// The injected clock does not signal, so poll it as well.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, spool.ErrClosed
		}
		items := m.leaseLocked(max)
		ch := m.changed
		m.mu.Unlock()
		if len(items) > 0 {
			return items, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		case <-tick.C:
		}
	}
}

// TryLease is Lease without waiting.
func (m *Memory) TryLease(max int) ([]spool.Item, error) {
	if max <= 0 {
		return nil, fmt.Errorf("spool: lease: max %d: %w", max, spool.ErrInvalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, spool.ErrClosed
	}
	return m.leaseLocked(max), nil
}

// housekeep returns expired leases, removes TTL-expired messages and forgets
// expired retained messages and dedupe keys.
func (m *Memory) housekeep(now time.Time) {
	changed := false
	for l := range m.lanes {
		kept := m.lanes[l][:0]
		for _, msg := range m.lanes[l] {
			if msg.leased && !now.Before(msg.deadline) {
				msg.leased = false
				msg.item.Attempts++
				m.st.Nacked++
				changed = true
			}
			if !msg.leased && !msg.item.ExpiresAt.IsZero() && !now.Before(msg.item.ExpiresAt) {
				if m.opts.Expired == spool.ExpireDeadLetter {
					m.addDLQ(msg.item, "expired", now)
				} else {
					m.st.Dropped[spool.DropReasonExpired]++
				}
				changed = true
				continue
			}
			kept = append(kept, msg)
		}
		clear(m.lanes[l][len(kept):])
		m.lanes[l] = kept
	}
	if m.opts.RetainDelivered > 0 {
		m.retained = slices.DeleteFunc(m.retained, func(r memRetained) bool {
			return !now.Before(r.deliveredAt.Add(m.opts.RetainDelivered))
		})
	}
	m.sweepDedupe(now)
	if changed {
		m.notify()
	}
}

func (m *Memory) addDLQ(it spool.Item, reason string, now time.Time) {
	d := spool.DeadLetter{Item: it, Reason: reason, DeadAt: now}
	i, _ := slices.BinarySearchFunc(m.dlq, it.ID, func(d spool.DeadLetter, id uint64) int { return cmpID(d.ID, id) })
	m.dlq = slices.Insert(m.dlq, i, d)
	m.st.DeadLettered++
}

func cmpID(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// head returns the first unleased message of lane l.
func (m *Memory) head(l int) *memMsg {
	for _, msg := range m.lanes[l] {
		if !msg.leased {
			return msg
		}
	}
	return nil
}

func (m *Memory) leaseLocked(max int) []spool.Item {
	now := m.now()
	m.housekeep(now)
	var out []spool.Item
	for len(out) < max {
		high := -1
		for l := range m.lanes {
			if m.head(l) != nil {
				high = l
				break
			}
		}
		if high < 0 {
			break
		}
		pick := m.head(high)
		// The lower lane next in line is the one whose head is oldest.
		var lower *memMsg
		for l := high + 1; l < spool.Lanes; l++ {
			if h := m.head(l); h != nil && (lower == nil || h.item.ID < lower.item.ID) {
				lower = h
			}
		}
		if lower != nil && m.opts.LowerLaneShare > 0 {
			if float64(m.servedLower+1) <= m.opts.LowerLaneShare*float64(m.served+1) {
				pick = lower
				m.servedLower++
			}
			m.served++
		}
		pick.leased = true
		pick.deadline = now.Add(m.opts.LeaseTimeout)
		it := pick.item
		it.Data = slices.Clone(it.Data)
		out = append(out, it)
	}
	return out
}

// find returns the lane and index of queued message id, or -1.
func (m *Memory) find(id uint64) (lane, idx int) {
	for l, msgs := range m.lanes {
		if i, ok := slices.BinarySearchFunc(msgs, id, func(msg *memMsg, id uint64) int { return cmpID(msg.item.ID, id) }); ok {
			return l, i
		}
	}
	return -1, -1
}

// Ack removes messages (retaining them when RetainDelivered is on); unknown
// ids are ignored.
func (m *Memory) Ack(ctx context.Context, ids ...uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return spool.ErrClosed
	}
	now := m.now()
	for _, id := range ids {
		l, i := m.find(id)
		if l < 0 {
			continue
		}
		msg := m.lanes[l][i]
		m.lanes[l] = slices.Delete(m.lanes[l], i, i+1)
		m.st.Acked++
		if m.opts.RetainDelivered > 0 {
			r := memRetained{item: msg.item, deliveredAt: now}
			j, _ := slices.BinarySearchFunc(m.retained, id, func(r memRetained, id uint64) int { return cmpID(r.item.ID, id) })
			m.retained = slices.Insert(m.retained, j, r)
		}
	}
	m.notify()
	return nil
}

// Nack returns leased messages to their position with Attempts+1; ids that
// are not leased are ignored.
func (m *Memory) Nack(ctx context.Context, ids ...uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return spool.ErrClosed
	}
	for _, id := range ids {
		l, i := m.find(id)
		if l < 0 || !m.lanes[l][i].leased {
			continue
		}
		msg := m.lanes[l][i]
		msg.leased = false
		msg.item.Attempts++
		m.st.Nacked++
	}
	m.notify()
	return nil
}

// DeadLetter moves a queued (leased or not) message to the DLQ.
func (m *Memory) DeadLetter(ctx context.Context, id uint64, reason string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return spool.ErrClosed
	}
	l, i := m.find(id)
	if l < 0 {
		return fmt.Errorf("spool: dead-letter %d: %w", id, spool.ErrNotFound)
	}
	msg := m.lanes[l][i]
	m.lanes[l] = slices.Delete(m.lanes[l], i, i+1)
	m.addDLQ(msg.item, reason, m.now())
	m.notify()
	return nil
}

// DLQ lists up to max dead letters with id > afterID.
func (m *Memory) DLQ(afterID uint64, max int) ([]spool.DeadLetter, error) {
	if max <= 0 {
		return nil, fmt.Errorf("spool: dlq: max %d: %w", max, spool.ErrInvalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, spool.ErrClosed
	}
	var out []spool.DeadLetter
	for _, d := range m.dlq {
		if d.ID > afterID && len(out) < max {
			d.Data = slices.Clone(d.Data)
			out = append(out, d)
		}
	}
	return out, nil
}

// takeDLQ removes the named dead letters (all when ids is empty). It returns
// them and ErrNotFound if some id was not in the DLQ.
func (m *Memory) takeDLQ(ids []uint64) ([]spool.DeadLetter, error) {
	if len(ids) == 0 {
		out := m.dlq
		m.dlq = nil
		return out, nil
	}
	var out []spool.DeadLetter
	var missing []uint64
	for _, id := range ids {
		i, ok := slices.BinarySearchFunc(m.dlq, id, func(d spool.DeadLetter, id uint64) int { return cmpID(d.ID, id) })
		if !ok {
			missing = append(missing, id)
			continue
		}
		out = append(out, m.dlq[i])
		m.dlq = slices.Delete(m.dlq, i, i+1)
	}
	if len(missing) > 0 {
		return out, fmt.Errorf("spool: dlq ids %v: %w", missing, spool.ErrNotFound)
	}
	return out, nil
}

// Requeue moves dead letters back to their lanes at their original
// position, with Attempts and ExpiresAt cleared.
func (m *Memory) Requeue(ctx context.Context, ids ...uint64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, spool.ErrClosed
	}
	moved, err := m.takeDLQ(ids)
	for _, d := range moved {
		it := d.Item
		it.Attempts, it.ExpiresAt = 0, time.Time{} // the operator overrides attempts and TTL
		l := it.Priority
		i, _ := slices.BinarySearchFunc(m.lanes[l], it.ID, func(msg *memMsg, id uint64) int { return cmpID(msg.item.ID, id) })
		m.lanes[l] = slices.Insert(m.lanes[l], i, &memMsg{item: it})
	}
	m.notify()
	return len(moved), err
}

// PurgeDLQ deletes dead letters.
func (m *Memory) PurgeDLQ(ctx context.Context, ids ...uint64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, spool.ErrClosed
	}
	gone, err := m.takeDLQ(ids)
	m.notify()
	return len(gone), err
}

// Replay re-enqueues retained messages enqueued at or after since, with new
// ids and their original EnqueuedAt, in their original id order; they leave
// the retained set.
func (m *Memory) Replay(ctx context.Context, since time.Time) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, spool.ErrClosed
	}
	if m.opts.RetainDelivered <= 0 {
		return 0, fmt.Errorf("spool: replay: retention is off: %w", spool.ErrInvalid)
	}
	now := m.now()
	m.housekeep(now)
	n := 0
	m.retained = slices.DeleteFunc(m.retained, func(r memRetained) bool {
		if r.item.EnqueuedAt.Before(since) {
			return false
		}
		m.nextID++
		it := r.item
		it.ID, it.Attempts = m.nextID, 0
		m.lanes[it.Priority] = append(m.lanes[it.Priority], &memMsg{item: it})
		n++
		return true
	})
	m.notify()
	return n, nil
}

// Stats returns a snapshot; FileSize and the commit counters stay zero.
func (m *Memory) Stats() spool.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.housekeep(m.now())
	}
	s := m.st
	for l, msgs := range m.lanes {
		ls := &s.Lanes[l]
		for _, msg := range msgs {
			ls.Messages++
			ls.Bytes += int64(len(msg.item.Data))
			if msg.leased {
				s.Leased++
			}
		}
		if len(msgs) > 0 {
			ls.Oldest = msgs[0].item.EnqueuedAt
		}
		s.Messages += ls.Messages
		s.Bytes += ls.Bytes
	}
	for _, d := range m.dlq {
		s.DLQMessages++
		s.DLQBytes += int64(len(d.Data))
	}
	for _, r := range m.retained {
		s.Retained++
		s.RetainedBytes += int64(len(r.item.Data))
	}
	s.DedupeEntries = int64(len(m.dedupe))
	return s
}

// Close fails waiting Leases and Puts with ErrClosed; m keeps its contents
// for Restart.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		close(m.changed)
	}
	return nil
}
