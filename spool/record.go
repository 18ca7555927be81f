package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// Bucket names (see doc.go for the layout).
var (
	bktMeta      = []byte("meta")
	bktExpiry    = []byte("expiry")
	bktDedupe    = []byte("dedupe")
	bktDedupeExp = []byte("dedupe_exp")
	bktDLQ       = []byte("dlq")
	bktDelivered = []byte("delivered")
	bktLanes     = func() (b [Lanes][]byte) {
		for i := range b {
			b[i] = fmt.Appendf(nil, "lane%d", i)
		}
		return b
	}()
)

// Keys in the meta bucket.
var (
	keyMagic  = []byte("magic")
	keyFormat = []byte("format")
	keyNextID = []byte("next_id")
	keyCounts = []byte("counts")
	keyClean  = []byte("clean")
)

const (
	magic         = "ferry-spool"
	formatVersion = 1
	maxDedupeKey  = 1024
	maxReason     = 1024
)

// Record kinds: the first byte of every value in the lane, DLQ and delivered
// buckets. A salvage that has only raw pages tells them apart by it.
const (
	kindQueued    = 'Q'
	kindDead      = 'D'
	kindDelivered = 'R'
)

// record is the value stored for a message:
//
//	kind      1 byte  'Q' queued, 'D' dead letter, 'R' retained delivered
//	priority  1 byte
//	attempts  4 bytes big-endian
//	enqueued  8 bytes unix nanoseconds
//	expires   8 bytes unix nanoseconds, 0: never
//	stamp     8 bytes unix nanoseconds: dead-lettered at ('D'), acked at ('R'), 0 ('Q')
//	text_len  2 bytes, then text: the dead-letter reason
//	crc       4 bytes CRC-32C of the key (the id) and every other byte of the
//	          record, data included: a flipped bit in the key is caught too
//	data      the rest
type record struct {
	kind     byte
	priority uint8
	attempts uint32
	enqueued int64
	expires  int64
	stamp    int64
	text     string
	data     []byte
}

const recFixed = 1 + 1 + 4 + 8 + 8 + 8 + 2 + 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errBadRecord = errors.New("bad record")

func (r *record) size() int { return recFixed + len(r.text) + len(r.data) }

func (r *record) encode(id uint64) []byte {
	b := make([]byte, r.size())
	b[0], b[1] = r.kind, r.priority
	binary.BigEndian.PutUint32(b[2:], r.attempts)
	binary.BigEndian.PutUint64(b[6:], uint64(r.enqueued))
	binary.BigEndian.PutUint64(b[14:], uint64(r.expires))
	binary.BigEndian.PutUint64(b[22:], uint64(r.stamp))
	binary.BigEndian.PutUint16(b[30:], uint16(len(r.text)))
	n := copy(b[32:], r.text)
	crcAt := 32 + n
	copy(b[crcAt+4:], r.data)
	binary.BigEndian.PutUint32(b[crcAt:], recordCRC(u64(id), b[:crcAt], b[crcAt+4:]))
	return b
}

func recordCRC(key, head, data []byte) uint32 {
	c := crc32.Checksum(key, castagnoli)
	c = crc32.Update(c, castagnoli, head)
	return crc32.Update(c, castagnoli, data)
}

// decodeRecord parses the value v stored under key. data aliases v: copy
// it before the transaction ends.
func decodeRecord(key, v []byte) (record, error) {
	var r record
	if len(key) != 8 {
		return r, fmt.Errorf("%w: key of %d bytes", errBadRecord, len(key))
	}
	if len(v) < recFixed {
		return r, fmt.Errorf("%w: %d bytes", errBadRecord, len(v))
	}
	r.kind, r.priority = v[0], v[1]
	if (r.kind != kindQueued && r.kind != kindDead && r.kind != kindDelivered) || r.priority >= Lanes {
		return r, fmt.Errorf("%w: kind %#x priority %d", errBadRecord, r.kind, r.priority)
	}
	r.attempts = binary.BigEndian.Uint32(v[2:])
	r.enqueued = int64(binary.BigEndian.Uint64(v[6:]))
	r.expires = int64(binary.BigEndian.Uint64(v[14:]))
	r.stamp = int64(binary.BigEndian.Uint64(v[22:]))
	tl := int(binary.BigEndian.Uint16(v[30:]))
	if len(v) < recFixed+tl {
		return r, fmt.Errorf("%w: text length %d", errBadRecord, tl)
	}
	crcAt := 32 + tl
	want := binary.BigEndian.Uint32(v[crcAt:])
	if got := recordCRC(key, v[:crcAt], v[crcAt+4:]); got != want {
		return r, fmt.Errorf("%w: checksum %08x, want %08x", errBadRecord, got, want)
	}
	r.text = string(v[32:crcAt])
	r.data = v[crcAt+4:]
	return r, nil
}

func (r *record) item(id uint64) Item {
	return Item{
		ID:         id,
		Priority:   r.priority,
		Attempts:   r.attempts,
		EnqueuedAt: fromNano(r.enqueued),
		ExpiresAt:  fromNano(r.expires),
		Data:       append([]byte(nil), r.data...),
	}
}

func nano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func idOf(k []byte) uint64 { return binary.BigEndian.Uint64(k) }

// timeKey is an index key: 8 bytes of unix nanoseconds, then suffix.
func timeKey(t int64, suffix []byte) []byte {
	k := make([]byte, 8+len(suffix))
	binary.BigEndian.PutUint64(k, uint64(t))
	copy(k[8:], suffix)
	return k
}

// counts are the persistent totals, kept in meta/counts and updated in the
// same transaction as the data they count.
type counts struct {
	lanes     [Lanes][2]int64 // messages, bytes
	dlq, dlqB int64
	ret, retB int64
	dedupe    int64
}

const countsLen = (Lanes*2 + 5) * 8

func (c *counts) encode() []byte {
	b := make([]byte, 0, countsLen)
	for _, l := range c.lanes {
		b = binary.BigEndian.AppendUint64(b, uint64(l[0]))
		b = binary.BigEndian.AppendUint64(b, uint64(l[1]))
	}
	for _, v := range [...]int64{c.dlq, c.dlqB, c.ret, c.retB, c.dedupe} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return b
}

func decodeCounts(b []byte) (counts, error) {
	var c counts
	if len(b) != countsLen {
		return c, fmt.Errorf("counts: %d bytes, want %d", len(b), countsLen)
	}
	next := func() int64 { v := int64(binary.BigEndian.Uint64(b)); b = b[8:]; return v }
	for i := range c.lanes {
		c.lanes[i][0], c.lanes[i][1] = next(), next()
	}
	c.dlq, c.dlqB, c.ret, c.retB, c.dedupe = next(), next(), next(), next(), next()
	return c, nil
}

func (c *counts) messages() (n int64) {
	for _, l := range c.lanes {
		n += l[0]
	}
	return n
}

func (c *counts) bytes() (n int64) {
	for _, l := range c.lanes {
		n += l[1]
	}
	return n
}

// stored is what MaxBytes caps: everything the spool keeps.
func (c *counts) stored() int64 { return c.bytes() + c.dlqB + c.retB }
