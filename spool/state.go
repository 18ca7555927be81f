package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// StateKind names one bucket of local broker state: what an embedded MQTT
// broker must find again after a restart (retained messages, persistent
// sessions). The spool stores it as opaque key → value records, in the
// same file, through the same writer and commits as the queue: the same
// durability, the same power-cut rules, the same check and salvage.
type StateKind uint8

// The kinds of state.
const (
	StateRetained      StateKind = iota // retained messages, by topic
	StateClients                        // persistent sessions, by client id
	StateSubscriptions                  // their subscriptions
	StateInflight                       // the QoS 1/2 messages queued or in flight for them
	StateKinds                          // the number of kinds
)

// StateKindNames are the metric label values of the kinds.
var StateKindNames = [StateKinds]string{"retained", "clients", "subscriptions", "inflight"}

var bktState = [StateKinds][]byte{[]byte("state_retained"), []byte("state_clients"), []byte("state_subscriptions"), []byte("state_inflight")}

// MaxStateKey is the longest key of a state record, in bytes.
const MaxStateKey = 32 << 10 // bbolt's own limit

// ErrStateFull: a state record would take its kind past
// Options.StateMaxBytes. It wraps ErrFull, so a Put refused for it gets the
// answer of a full spool.
var ErrStateFull = fmt.Errorf("%w: the local state cap is reached", ErrFull)

// StateOp is one change of local state.
type StateOp struct {
	Kind  StateKind
	Key   []byte
	Value []byte // nil or empty: delete Key
	// Prefix (deletes only): delete every key that starts with Key.
	Prefix bool
	// Stamp orders writes of one key that may reach the writer out of
	// order: a put or delete with a Stamp is skipped when the stored record
	// has a larger one (0: always applied, and a put stores stamp 0).
	Stamp int64
	// BestEffort: over its kind's cap, the op is skipped and counted in
	// StateStats.Skipped instead of failing (the Put that carries it is
	// stored anyway).
	BestEffort bool
}

// StatePut returns the op that stores value under key.
func StatePut(kind StateKind, key, value []byte) StateOp {
	return StateOp{Kind: kind, Key: key, Value: value}
}

// StateDelete returns the op that deletes key.
func StateDelete(kind StateKind, key []byte) StateOp { return StateOp{Kind: kind, Key: key} }

// StateDeletePrefix returns the op that deletes every key starting with prefix.
func StateDeletePrefix(kind StateKind, prefix []byte) StateOp {
	return StateOp{Kind: kind, Key: prefix, Prefix: true}
}

// StateStats are the committed size of one kind of state.
type StateStats struct {
	Records int64
	Bytes   int64  // keys and values, as Options.StateMaxBytes counts them
	Skipped uint64 // BestEffort ops skipped at the cap since Open
	Refused uint64 // other ops and Puts refused at the cap (ErrStateFull) since Open
}

// state record: crc32c(4) stamp(8) value; the CRC covers the key, the
// stamp and the value.
const stateHead = 12

func encodeState(key, value []byte, stamp int64) []byte {
	b := make([]byte, stateHead, stateHead+len(value))
	binary.BigEndian.PutUint64(b[4:], uint64(stamp))
	b = append(b, value...)
	binary.BigEndian.PutUint32(b, stateCRC(key, b[4:]))
	return b
}

func stateCRC(key, rest []byte) uint32 {
	return crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, rest)
}

var errBadState = errors.New("bad state record")

// decodeState checks a state record and returns its stamp and value.
func decodeState(key, v []byte) (int64, []byte, error) {
	if len(v) < stateHead {
		return 0, nil, fmt.Errorf("%w: %d bytes", errBadState, len(v))
	}
	if binary.BigEndian.Uint32(v) != stateCRC(key, v[4:]) {
		return 0, nil, fmt.Errorf("%w: checksum mismatch", errBadState)
	}
	return int64(binary.BigEndian.Uint64(v[4:])), v[stateHead:], nil
}

func stateSize(key, rec []byte) int64 { return int64(len(key) + len(rec)) }

func (s *Spool) checkStateOps(ops []StateOp) error {
	for i, op := range ops {
		switch {
		case op.Kind >= StateKinds:
			return fmt.Errorf("%w: state op %d: kind %d", ErrInvalid, i, op.Kind)
		case len(op.Key) == 0 && !op.Prefix:
			return fmt.Errorf("%w: state op %d: empty key", ErrInvalid, i)
		case len(op.Key) > MaxStateKey:
			return fmt.Errorf("%w: state op %d: key of %d bytes, limit %d", ErrInvalid, i, len(op.Key), MaxStateKey)
		case len(op.Value) > s.opts.MaxMessageBytes+64<<10:
			return fmt.Errorf("%w: state op %d: value of %d bytes, limit %d", ErrTooLarge, i, len(op.Value), s.opts.MaxMessageBytes+64<<10)
		case op.Prefix && len(op.Value) > 0:
			return fmt.Errorf("%w: state op %d: a prefix op only deletes", ErrInvalid, i)
		}
	}
	return nil
}

// ApplyState commits ops in one of the writer's transactions (group
// commit: it shares the commit, and its fsync, with whatever else is
// waiting) and returns after that commit (fsync'd in Sync durability).
// ops are applied in order; ops submitted one after another by one
// goroutine commit in that order. An op over its kind's cap fails the
// call with ErrStateFull (a BestEffort one is skipped); the ops before it
// stay applied.
func (s *Spool) ApplyState(ctx context.Context, ops ...StateOp) error {
	return s.ApplyStateAsync(ctx, ops...)()
}

// ApplyStateAsync is ApplyState in two steps: it queues ops for the writer
// and returns; wait (called at most once, or never) returns the answer.
func (s *Spool) ApplyStateAsync(ctx context.Context, ops ...StateOp) (wait func() error) {
	if err := s.checkStateOps(ops); err != nil {
		return func() error { return err }
	}
	o := &op{kind: opState, stOps: ops}
	if err := s.enqueue(ctx, o); err != nil {
		return func() error { return err }
	}
	return func() error { return s.await(ctx, o) }
}

// IterateState calls fn for every record of kind whose key starts with
// prefix, in key order, from one read transaction; fn's slices are its
// own. A record that fails its checksum is skipped (Open's check moves a
// file with one aside and salvages it).
func (s *Spool) IterateState(kind StateKind, prefix []byte, fn func(key, value []byte) error) error {
	if kind >= StateKinds {
		return fmt.Errorf("%w: state kind %d", ErrInvalid, kind)
	}
	var recs [][2][]byte
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bktState[kind]).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if _, val, err := decodeState(k, v); err == nil {
				recs = append(recs, [2][]byte{clone(k), clone(val)})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range recs {
		if err := fn(r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

// StateStats returns the committed size of every kind of state.
func (s *Spool) StateStats() [StateKinds]StateStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// loadState counts the state records (Open).
func (s *Spool) loadState(tx *bolt.Tx) {
	for k := range StateKinds {
		var st StateStats
		_ = tx.Bucket(bktState[k]).ForEach(func(key, v []byte) error {
			st.Records++
			st.Bytes += stateSize(key, v)
			return nil
		})
		s.state[k] = st
	}
}

// stateTxn is what one transaction changed in the state buckets.
type stateTxn struct {
	delta [StateKinds]StateStats
}

// stateFits reports whether ops (of a Put) fit under the caps; the
// BestEffort ones always do (they are skipped instead).
func (t *txn) stateFits(ops []StateOp) bool {
	add := [StateKinds]int64{}
	for _, op := range ops {
		if op.BestEffort || len(op.Value) == 0 || t.s.opts.StateMaxBytes[op.Kind] <= 0 {
			continue
		}
		b := t.tx.Bucket(bktState[op.Kind])
		add[op.Kind] += stateSize(op.Key, op.Value) + stateHead
		if old := b.Get(op.Key); old != nil {
			add[op.Kind] -= stateSize(op.Key, old)
		}
		if t.stateBytes(op.Kind)+add[op.Kind] > t.s.opts.StateMaxBytes[op.Kind] {
			return false
		}
	}
	return true
}

// stateBytes is kind's size as of this point of the transaction.
func (t *txn) stateBytes(kind StateKind) int64 {
	t.s.mu.Lock()
	base := t.s.state[kind].Bytes
	t.s.mu.Unlock()
	return base + t.st.delta[kind].Bytes
}

// applyState applies ops; the first op refused at the cap is returned as
// an answer (not a transaction failure).
func (t *txn) applyState(ops []StateOp) (answer error, err error) {
	for _, op := range ops {
		b := t.tx.Bucket(bktState[op.Kind])
		d := &t.st.delta[op.Kind]
		if op.Prefix {
			var keys [][]byte
			c := b.Cursor()
			for k, v := c.Seek(op.Key); k != nil && bytes.HasPrefix(k, op.Key); k, v = c.Next() {
				keys = append(keys, clone(k))
				d.Records--
				d.Bytes -= stateSize(k, v)
			}
			for _, k := range keys {
				if err := b.Delete(k); err != nil {
					return nil, err
				}
			}
			continue
		}
		old := b.Get(op.Key)
		if old != nil && op.Stamp != 0 {
			if st, _, e := decodeState(op.Key, old); e == nil && st > op.Stamp {
				continue // a newer write of this key is stored
			}
		}
		if len(op.Value) == 0 {
			if old != nil {
				d.Records--
				d.Bytes -= stateSize(op.Key, old)
				if err := b.Delete(op.Key); err != nil {
					return nil, err
				}
			}
			continue
		}
		rec := encodeState(op.Key, op.Value, op.Stamp)
		grow := stateSize(op.Key, rec)
		if old != nil {
			grow -= stateSize(op.Key, old)
		}
		if max := t.s.opts.StateMaxBytes[op.Kind]; max > 0 && grow > 0 && t.stateBytes(op.Kind)+grow > max {
			if op.BestEffort {
				d.Skipped++
				continue
			}
			d.Refused++
			if answer == nil {
				answer = fmt.Errorf("%w: %s, %d bytes", ErrStateFull, StateKindNames[op.Kind], max)
			}
			continue
		}
		if old == nil {
			d.Records++
		}
		d.Bytes += grow
		if err := b.Put(op.Key, rec); err != nil {
			return nil, err
		}
	}
	return answer, nil
}

// stateOp is the transaction's part of an ApplyState.
func (t *txn) stateOp(o *op) error {
	answer, err := t.applyState(o.stOps)
	if err != nil {
		return err
	}
	o.err = answer
	return nil
}

// publishState adds a committed transaction's state changes (s.mu held).
func (s *Spool) publishState(t *txn) {
	for k := range StateKinds {
		d := t.st.delta[k]
		st := &s.state[k]
		st.Records += d.Records
		st.Bytes += d.Bytes
		st.Skipped += d.Skipped
		st.Refused += d.Refused
	}
}

// roleState is the knownBuckets role of the state buckets (walk.go).
const roleState = -4

// stateRecord is one state record found by the checked walk (salvage).
type stateRecord struct {
	bucket     string
	key, value []byte // value: the whole record, header included
}

// stateRecord checks one state record in the checked walk: a record that
// fails its checksum is damage, like a message record that does.
func (c *contents) stateRecord(bucket string, k, v []byte, keep bool) {
	if _, _, err := decodeState(k, v); err != nil {
		c.bad++
		c.stateBad++
		if c.firstBad == nil {
			c.firstBad = &damage{bucket: bucket, key: clone(k), err: err}
		}
		return
	}
	if keep {
		c.state = append(c.state, stateRecord{bucket: bucket, key: clone(k), value: clone(v)})
	}
}

// stateKindNames names the kinds of state of the buckets in damaged
// (StateKindNames), in StateKind order; every kind with all.
func stateKindNames(damaged []string, all bool) []string {
	var names []string
	for k, b := range bktState {
		if all || slices.Contains(damaged, string(b)) {
			names = append(names, StateKindNames[k])
		}
	}
	return names
}

// writeState copies the salvaged state records into the fresh file at
// path (salvage), in bounded transactions, fsync'd.
func writeState(path string, recs []stateRecord) error {
	if len(recs) == 0 {
		return nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType, NoSync: true})
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	for len(recs) > 0 && err == nil {
		chunk := recs[:min(len(recs), 10000)]
		recs = recs[len(chunk):]
		err = db.Update(func(tx *bolt.Tx) error {
			for _, r := range chunk {
				b, err := tx.CreateBucketIfNotExists([]byte(r.bucket))
				if err != nil {
					return err
				}
				if err := b.Put(r.key, r.value); err != nil {
					return err
				}
			}
			// Every commit of a spool file carries a commit record that
			// names its transaction (see doc.go).
			_, next, c, err := decodeCommit(tx.Bucket(bktMeta).Get(keyCommit))
			if err != nil {
				return err
			}
			return stamp(tx, next, &c)
		})
	}
	if err == nil {
		err = db.Sync()
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}
