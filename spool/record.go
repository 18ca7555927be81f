package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
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
	// keySalvage holds the report of the salvage that made the file (JSON),
	// kept so that every later reader can show it.
	keySalvage = []byte("salvage")
	// keyCommit describes the commit that wrote the meta bucket: its bbolt
	// transaction id, next_id and counts with the id sums, under a CRC.
	// Every commit writes it. A tree whose commit record names another
	// transaction than its meta page, or whose records do not add up to
	// it, is one whose pages are not the ones that commit wrote (a meta
	// page on disk before the pages of its commit, a torn page), however
	// well-formed it looks.
	keyCommit = []byte("commit")
)

// stamp writes the commit record of tx (see keyCommit).
func stamp(tx *bolt.Tx, nextID uint64, c *counts) error {
	return tx.Bucket(bktMeta).Put(keyCommit, encodeCommit(uint64(tx.ID()), nextID, c))
}

// FormatVersion is the on-disk format this build writes, and the newest it
// opens (doc.go, "File format"); `ferry version` prints it.
const FormatVersion = formatVersion

const (
	magic = "ferry-spool"
	// formatVersion 2: records in the version 2 layout (format 1 files are
	// read, and marked format 2 when opened for writing, since their new
	// records are version 2). 3: a dedupe_exp entry may list several keys
	// (dedupe.go); format 2 entries are read, and a format 2 file is marked
	// 3 when opened for writing, since a format 2 build would take the new
	// entries for single keys and lose count.
	formatVersion = 3
	maxDedupeKey  = 1024
	maxReason     = 1024
)

// Record kinds: the first byte of every value in the lane, DLQ and delivered
// buckets. A salvage that has only raw pages tells them apart by it. Upper
// case: the version 1 layout (format 1 files); lower case: version 2, what
// is written now. Both are read.
const (
	kindQueued    = 'Q'
	kindDead      = 'D'
	kindDelivered = 'R'
)

// record is the value stored for a message. Version 2 (written now):
//
//	kind      1 byte  'q' queued, 'd' dead letter, 'r' retained delivered
//	flags     1 byte  priority (bits 0-3), expires (4), stamp (5), text (6)
//	attempts  uvarint
//	enqueued  8 bytes big-endian unix nanoseconds
//	expires   8 bytes unix nanoseconds, when flagged
//	stamp     8 bytes unix nanoseconds, when flagged: dead-lettered at
//	          ('d'), acked at ('r')
//	text      uvarint length + bytes, when flagged: the dead-letter reason
//	crc       4 bytes CRC-32C of the key (the id) and every other byte of the
//	          record, data included: a flipped bit in the key is caught too
//	data      the rest
//
// A queued message without a TTL takes 15 bytes besides its data. Version
// 1 (format 1 files, still read) had fixed fields: kind 'Q'/'D'/'R' (1),
// priority (1), attempts (4), enqueued, expires, stamp (8 each), text_len
// (2), text, crc (4), data.
type record struct {
	kind     byte // kindQueued, kindDead or kindDelivered, whatever the version
	priority uint8
	attempts uint32
	enqueued int64
	expires  int64
	stamp    int64
	text     string
	data     []byte
}

const (
	recFixed   = 1 + 1 + 4 + 8 + 8 + 8 + 2 + 4 // version 1
	recMinV2   = 1 + 1 + 1 + 8 + 4             // version 2, no optional field
	recExpires = 1 << 4
	recStamp   = 1 << 5
	recText    = 1 << 6
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errBadRecord = errors.New("bad record")

// kindV2 is the version 2 kind byte of a record kind.
func kindV2(k byte) byte { return k | 0x20 } // lower case

func (r *record) size() int {
	n := recMinV2 - 1 + uvarintLen(uint64(r.attempts))
	if r.expires != 0 {
		n += 8
	}
	if r.stamp != 0 {
		n += 8
	}
	if r.text != "" {
		n += uvarintLen(uint64(len(r.text))) + len(r.text)
	}
	return n + len(r.data)
}

func (r *record) encode(id uint64) []byte {
	b := make([]byte, 0, r.size())
	flags := r.priority & 0x0f
	if r.expires != 0 {
		flags |= recExpires
	}
	if r.stamp != 0 {
		flags |= recStamp
	}
	if r.text != "" {
		flags |= recText
	}
	b = append(b, kindV2(r.kind), flags)
	b = binary.AppendUvarint(b, uint64(r.attempts))
	b = binary.BigEndian.AppendUint64(b, uint64(r.enqueued))
	if r.expires != 0 {
		b = binary.BigEndian.AppendUint64(b, uint64(r.expires))
	}
	if r.stamp != 0 {
		b = binary.BigEndian.AppendUint64(b, uint64(r.stamp))
	}
	if r.text != "" {
		b = binary.AppendUvarint(b, uint64(len(r.text)))
		b = append(b, r.text...)
	}
	crc := recordCRC(u64(id), b, r.data)
	b = binary.BigEndian.AppendUint32(b, crc)
	return append(b, r.data...)
}

func recordCRC(key, head, data []byte) uint32 {
	c := crc32.Checksum(key, castagnoli)
	c = crc32.Update(c, castagnoli, head)
	return crc32.Update(c, castagnoli, data)
}

// decodeRecord parses the value v stored under key, of either version.
// data aliases v: copy it before the transaction ends.
func decodeRecord(key, v []byte) (record, error) {
	var r record
	if len(key) != 8 {
		return r, fmt.Errorf("%w: key of %d bytes", errBadRecord, len(key))
	}
	if len(v) > 0 && (v[0] == 'q' || v[0] == 'd' || v[0] == 'r') {
		return decodeRecordV2(key, v)
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

func decodeRecordV2(key, v []byte) (record, error) {
	var r record
	if len(v) < recMinV2 {
		return r, fmt.Errorf("%w: %d bytes", errBadRecord, len(v))
	}
	switch v[0] {
	case 'q':
		r.kind = kindQueued
	case 'd':
		r.kind = kindDead
	default:
		r.kind = kindDelivered
	}
	flags := v[1]
	r.priority = flags & 0x0f
	if r.priority >= Lanes || flags&0x80 != 0 {
		return r, fmt.Errorf("%w: kind %#x flags %#x", errBadRecord, v[0], flags)
	}
	off := 2
	att, n := binary.Uvarint(v[off:])
	if n <= 0 || att > 1<<32-1 {
		return r, fmt.Errorf("%w: attempts", errBadRecord)
	}
	r.attempts, off = uint32(att), off+n
	field := func() (int64, bool) {
		if len(v) < off+8 {
			return 0, false
		}
		x := int64(binary.BigEndian.Uint64(v[off:]))
		off += 8
		return x, true
	}
	var ok bool
	if r.enqueued, ok = field(); !ok {
		return r, fmt.Errorf("%w: short", errBadRecord)
	}
	if flags&recExpires != 0 {
		if r.expires, ok = field(); !ok || r.expires == 0 {
			return r, fmt.Errorf("%w: expires", errBadRecord)
		}
	}
	if flags&recStamp != 0 {
		if r.stamp, ok = field(); !ok || r.stamp == 0 {
			return r, fmt.Errorf("%w: stamp", errBadRecord)
		}
	}
	if flags&recText != 0 {
		tl, n := binary.Uvarint(v[off:])
		if n <= 0 || tl == 0 || tl > uint64(len(v)) || len(v) < off+n+int(tl) {
			return r, fmt.Errorf("%w: text length", errBadRecord)
		}
		r.text = string(v[off+n : off+n+int(tl)])
		off += n + int(tl)
	}
	if len(v) < off+4 {
		return r, fmt.Errorf("%w: short", errBadRecord)
	}
	want := binary.BigEndian.Uint32(v[off:])
	if got := recordCRC(key, v[:off], v[off+4:]); got != want {
		return r, fmt.Errorf("%w: checksum %08x, want %08x", errBadRecord, got, want)
	}
	r.data = v[off+4:]
	return r, nil
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
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

// Bounds of what int64 nanoseconds since 1970 hold (years 1677 to 2262).
var (
	minNano = time.Unix(0, math.MinInt64)
	maxNano = time.Unix(0, math.MaxInt64)
)

// nano is t in Unix nanoseconds, 0 for the zero time. Times outside the
// int64 range saturate: UnixNano's result is undefined there, and a wrapped
// "since 9999" replayed every retained message.
func nano(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.Before(minNano):
		return math.MinInt64
	case t.After(maxNano):
		return math.MaxInt64
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
// same transaction as the data they count. sums (the ids of each lane, the
// DLQ and the retained set, added up) are kept in meta/commit only: they
// let Open tell a lane whose pages are older than its counts.
type counts struct {
	lanes     [Lanes][2]int64 // messages, bytes
	dlq, dlqB int64
	ret, retB int64
	dedupe    int64
	sums      [Lanes + 2]uint64
}

const (
	sumDLQ = Lanes
	sumRet = Lanes + 1
)

func (c *counts) addLane(lane uint8, id uint64, size int64) {
	c.lanes[lane][0]++
	c.lanes[lane][1] += size
	c.sums[lane] += id
}

func (c *counts) delLane(lane uint8, id uint64, size int64) {
	c.lanes[lane][0]--
	c.lanes[lane][1] -= size
	c.sums[lane] -= id
}

func (c *counts) addDLQ(id uint64, size int64) { c.dlq++; c.dlqB += size; c.sums[sumDLQ] += id }
func (c *counts) delDLQ(id uint64, size int64) { c.dlq--; c.dlqB -= size; c.sums[sumDLQ] -= id }
func (c *counts) addRet(id uint64, size int64) { c.ret++; c.retB += size; c.sums[sumRet] += id }
func (c *counts) delRet(id uint64, size int64) { c.ret--; c.retB -= size; c.sums[sumRet] -= id }

// sameTotals compares everything but the sums.
func (c *counts) sameTotals(o *counts) bool {
	return c.lanes == o.lanes && c.dlq == o.dlq && c.dlqB == o.dlqB && c.ret == o.ret && c.retB == o.retB && c.dedupe == o.dedupe
}

// keyCommit's value: txid(8) next_id(8) counts(countsLen) sums((Lanes+2)×8)
// crc32c(4) over the rest. One value, written by every commit: a root page
// torn between two versions cannot pass for one of them (see keyTxid).
const commitLen = 8 + 8 + countsLen + (Lanes+2)*8 + 4

func encodeCommit(txid, nextID uint64, c *counts) []byte {
	b := make([]byte, 0, commitLen)
	b = binary.BigEndian.AppendUint64(b, txid)
	b = binary.BigEndian.AppendUint64(b, nextID)
	b = append(b, c.encode()...)
	for _, s := range c.sums {
		b = binary.BigEndian.AppendUint64(b, s)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeCommit(b []byte) (txid, nextID uint64, c counts, err error) {
	if len(b) != commitLen {
		return 0, 0, c, fmt.Errorf("commit record of %d bytes, want %d", len(b), commitLen)
	}
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(b[len(b)-4:]); got != want {
		return 0, 0, c, fmt.Errorf("commit record checksum %08x, want %08x", got, want)
	}
	txid, nextID = binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])
	if c, err = decodeCounts(body[16 : 16+countsLen]); err != nil {
		return 0, 0, c, err
	}
	s := body[16+countsLen:]
	for i := range c.sums {
		c.sums[i] = binary.BigEndian.Uint64(s[i*8:])
	}
	return txid, nextID, c, nil
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
