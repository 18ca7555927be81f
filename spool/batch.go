// Batches (PutBatch). A batch is several Puts stored in one write
// transaction, all or none: a STOMP transaction's SENDs, committed by its
// COMMIT. It rides the writer's group commit like any Put (one fsync covers
// it and whatever else shares the transaction), and each entry goes through
// what a Put goes through: dedupe, the caps and the overflow policy.
//
// bbolt has no savepoints, so a batch whose entry is refused cannot be
// undone inside the transaction: the transaction is rolled back
// (errBatchRefused) and run again without the batch, which is answered with
// that entry's refusal. Under Block, an entry that does not fit parks the
// whole batch, which is tried again, whole, when space frees (park.go). A
// batch refused or parked holds back the Puts after it in the transaction
// as a refused or parked Put does, so that no later message of the same
// producer is stored ahead of it.

package spool

import (
	"context"
	"errors"
	"fmt"
)

// MaxBatchEntries is the largest number of entries PutBatch takes.
const MaxBatchEntries = maxBatchOps

// batchPut is the state of an opBatch.
type batchPut struct {
	entries []Entry
	results []PutResult
}

// errBatchRefused rolls back a transaction in which a batch was refused.
type errBatchRefused struct {
	o      *op
	err    error // the refusal, for the batch's answer; nil when parked
	park   bool  // Block: no room yet, the batch waits whole
	failed int   // index of the entry refused
}

func (e *errBatchRefused) Error() string {
	return fmt.Sprintf("spool: batch refused at entry %d: %v", e.failed, e.err)
}

// PutBatch stores entries in one transaction, all or none, and returns
// each entry's result (ids in entries' order; a duplicate's is the
// original's). In Sync durability it returns after that transaction was
// fsync'd. When an entry is refused (invalid, too large, expired, full
// under the overflow policy) nothing of the batch is stored and the error
// names the entry and wraps its reason (errors.Is ErrFull, ErrTooLarge,
// ...). Under Block a batch that does not fit waits whole for room, up to
// BlockTimeout. At most MaxBatchEntries entries.
func (s *Spool) PutBatch(ctx context.Context, entries []Entry) ([]PutResult, error) {
	return s.PutBatchAsync(ctx, entries)()
}

// PutBatchAsync is PutBatch in two steps, as PutAsync is Put: it queues the
// batch for the writer and returns; wait blocks until it is committed. A
// batch and Puts queued one after another by one goroutine are stored in
// that order. Withdrawal on ctx follows PutAsync.
func (s *Spool) PutBatchAsync(ctx context.Context, entries []Entry) (wait func() ([]PutResult, error)) {
	refuse := func(err error) func() ([]PutResult, error) {
		return func() ([]PutResult, error) { return nil, err }
	}
	switch {
	case len(entries) == 0:
		return refuse(fmt.Errorf("%w: empty batch", ErrInvalid))
	case len(entries) > MaxBatchEntries:
		return refuse(fmt.Errorf("%w: batch of %d entries, limit %d", ErrInvalid, len(entries), MaxBatchEntries))
	}
	for i := range entries {
		if err := s.validate(&entries[i]); err != nil {
			return refuse(fmt.Errorf("spool: batch entry %d of %d: %w", i+1, len(entries), err))
		}
	}
	if err := ctx.Err(); err != nil {
		return refuse(err)
	}
	o := &op{kind: opBatch, batch: &batchPut{entries: entries}}
	err := s.enqueue(ctx, o)
	return func() ([]PutResult, error) {
		if err != nil {
			return nil, err
		}
		if _, err := s.awaitPut(ctx, o); err != nil {
			return nil, err
		}
		return o.batch.results, nil
	}
}

// putBatch applies a batch in t: every entry as a Put, or a rollback of t
// (errBatchRefused) at the first that is refused or parked.
func (t *txn) putBatch(o *op) error {
	b := o.batch
	b.results = make([]PutResult, len(b.entries))
	if o.tooBig(t.s.opts.MaxBytes) {
		t.ctr.rejected++
		return &errBatchRefused{o: o, failed: len(b.entries) - 1,
			err: fmt.Errorf("%w: a batch of %d bytes can never fit under the spool's cap of %d bytes (nothing of the batch was stored)", ErrFull, o.dataLen(), t.s.opts.MaxBytes)}
	}
	for i := range b.entries {
		one := op{kind: opPut, e: b.entries[i]}
		if err := t.put(&one); err != nil {
			return err
		}
		switch {
		case one.park:
			return &errBatchRefused{o: o, park: true, failed: i}
		case one.err != nil:
			return &errBatchRefused{o: o, failed: i,
				err: fmt.Errorf("spool: batch entry %d of %d: %w (nothing of the batch was stored)", i+1, len(b.entries), one.err)}
		}
		b.results[i] = one.res
	}
	return nil
}

// runBatches is runTxn, run again without each batch that was refused.
func (s *Spool) runBatches(base counts, batch []*op, internal func(*txn) error) (*txn, error) {
	// A replay's cursor moves as it is applied: give it back for a rerun.
	var after map[*op]uint64
	for _, o := range batch {
		if o.kind == opReplay && !o.skip {
			if after == nil {
				after = map[*op]uint64{}
			}
			after[o] = o.after
		}
	}
	for {
		t, err := s.runTxn(base, batch, internal)
		var br *errBatchRefused
		if !errors.As(err, &br) {
			return t, err
		}
		if t != nil {
			s.release(t.reserved)
		}
		o := br.o
		o.skip, o.res, o.batch.results = true, PutResult{}, nil
		if br.park {
			o.err, o.park = nil, true
		} else {
			o.err, o.park = br.err, false
			if errors.Is(br.err, ErrFull) {
				s.mu.Lock()
				s.ctr.rejected++
				s.mu.Unlock()
			}
		}
		for r, a := range after {
			r.after = a
		}
	}
}

// holdBack is what a batch answered in an earlier run of this transaction
// (skipped now) means for the Puts after it: parked, later ones park too;
// refused full under Reject, later ones are refused too. Either way the
// spool is full (Stats.Full).
func (t *txn) holdBack(o *op) {
	if o.kind != opBatch {
		return
	}
	switch {
	case o.park:
		t.parking, t.full = true, true
	case errors.Is(o.err, ErrFull):
		t.full = true
		t.refused = t.refused || t.s.opts.Overflow == Reject
	}
}

// dataLen is the bytes of data o puts.
func (o *op) dataLen() int {
	if o.batch == nil {
		return len(o.e.Data)
	}
	n := 0
	for i := range o.batch.entries {
		n += len(o.batch.entries[i].Data)
	}
	return n
}

// tooBig reports whether o's data can never fit under maxBytes.
func (o *op) tooBig(maxBytes int64) bool {
	if o.batch == nil {
		return o.e.isTooBig(maxBytes)
	}
	total := int64(0)
	for i := range o.batch.entries {
		e := &o.batch.entries[i]
		if e.isTooBig(maxBytes) {
			return true
		}
		total += int64(recMinV2 + len(e.Data) + 8)
	}
	return maxBytes > 0 && total > maxBytes
}
