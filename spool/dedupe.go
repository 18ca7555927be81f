package spool

import (
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// The dedupe index is two buckets (doc.go): dedupe, key → expires_at ‖ id,
// which the duplicate check reads, and dedupe_exp, in expiry order, which
// the sweep and the cap walk from the oldest. Since format 3 a dedupe_exp
// entry lists the keys one transaction recorded (expires_at ‖ id of its
// first message → uvarint length ‖ key, ...), where it held one key per
// entry (expires_at ‖ key → nil, format 2, still read): one write per
// transaction instead of one per message, and no write at all when a key
// is renewed.

// maxListBytes bounds one dedupe_exp entry's value: it stays within a
// page (no overflow pages, whose sizes would fragment the free list).
const maxListBytes = 3 << 10

// dedupeList collects a transaction's recorded keys for dedupe_exp.
type dedupeList struct {
	exp   int64
	first uint64 // the id of the first message listed
	buf   []byte
}

// add lists key, recorded for message id with expiry exp, writing out the
// entry so far first when exp differs or the entry is full.
func (l *dedupeList) add(tx *bolt.Tx, exp int64, id uint64, key []byte) error {
	if len(l.buf) > 0 && (exp != l.exp || len(l.buf)+binary.MaxVarintLen16+len(key) > maxListBytes) {
		if err := l.flush(tx); err != nil {
			return err
		}
	}
	if len(l.buf) == 0 {
		l.exp, l.first = exp, id
	}
	l.buf = binary.AppendUvarint(l.buf, uint64(len(key)))
	l.buf = append(l.buf, key...)
	return nil
}

// flush writes the entry (bbolt keeps the value until the commit: the
// next entry gets a buffer of its own).
func (l *dedupeList) flush(tx *bolt.Tx) error {
	if len(l.buf) == 0 {
		return nil
	}
	err := fillPages(tx, bktDedupeExp).Put(timeKey(l.exp, u64(l.first)), l.buf)
	l.buf = nil
	return err
}

// eachListed calls fn with every key dedupe_exp entry k, v lists. A damaged
// list ends where the damage starts (bbolt does not check values): the
// keys after it stay in dedupe, counted, until a Compact or salvage.
func eachListed(k, v []byte, fn func(key []byte) error) error {
	if len(k) < 8 {
		return nil
	}
	if len(v) == 0 {
		return fn(k[8:]) // format 2: the key itself
	}
	for len(v) > 0 {
		n, w := binary.Uvarint(v)
		if w <= 0 || n > uint64(len(v)-w) {
			return nil
		}
		if err := fn(v[w : w+int(n)]); err != nil {
			return err
		}
		v = v[w+int(n):]
	}
	return nil
}
