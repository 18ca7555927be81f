package spool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bbolt's on-disk constants (go.etcd.io/bbolt/internal/common), needed to
// read a file whose tree bbolt can no longer walk.
const (
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	pageHeaderSize  = 16
	leafElemSize    = 16
	leafPageFlag    = 0x02
	metaPageFlag    = 0x04
	bucketLeafFlag  = 0x01
	metaChecksumEnd = 56 // the meta fields the checksum covers
)

// errMetaDamaged marks damage to one of bbolt's two meta pages. bbolt would
// silently fall back to the older one and so lose the last transaction;
// salvage scans raw pages as well to find what that transaction wrote.
var errMetaDamaged = errors.New("meta page damaged")

// errCreateCut: the file is what bbolt writes when it creates one, cut
// short (a power cut during the first start): it never held anything.
var errCreateCut = fmt.Errorf("%w: a new spool file whose creation was cut short", errMetaDamaged)

// checkHeader validates bbolt's two meta pages itself, before bbolt opens
// the file: a file with no valid meta is not a bbolt file (ErrNotSpool,
// unless Ferry records can be found in it), one bad meta page is damage.
func checkHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("spool: open %s: %w", path, err)
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("spool: stat %s: %w", path, err)
	}
	buf := make([]byte, pageHeaderSize+64)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return notSpoolOrDamaged(path, fmt.Errorf("short file (%d bytes)", fi.Size()))
	}
	ok0, psize := validMeta(buf)
	if !ok0 {
		// Find meta 1 at the usual page sizes.
		for _, ps := range []int64{4096, int64(os.Getpagesize()), 16384, 65536} {
			if _, err := f.ReadAt(buf, ps); err == nil {
				if ok1, ps1 := validMeta(buf); ok1 && int64(ps1) == ps {
					return &CorruptionError{Path: path, Err: fmt.Errorf("%w: page 0", errMetaDamaged)}
				}
			}
		}
		return notSpoolOrDamaged(path, errors.New("no valid bbolt meta page"))
	}
	if _, err := f.ReadAt(buf, int64(psize)); err != nil {
		return &CorruptionError{Path: path, Err: fmt.Errorf("%w: page 1 missing (file truncated to %d bytes)", errMetaDamaged, fi.Size())}
	}
	if ok1, _ := validMeta(buf); !ok1 {
		return &CorruptionError{Path: path, Err: fmt.Errorf("%w: page 1", errMetaDamaged)}
	}
	return nil
}

func validMeta(p []byte) (bool, uint32) {
	m := p[pageHeaderSize:]
	if binary.LittleEndian.Uint32(m[0:]) != boltMagic || binary.LittleEndian.Uint32(m[4:]) != boltVersion {
		return false, 0
	}
	h := fnv.New64a()
	h.Write(m[:metaChecksumEnd])
	if h.Sum64() != binary.LittleEndian.Uint64(m[metaChecksumEnd:]) {
		return false, 0
	}
	return true, binary.LittleEndian.Uint32(m[8:])
}

// notSpoolOrDamaged decides between "this was never a spool" (refuse, touch
// nothing) and "this is a spool with its header destroyed" (salvage).
//
// A file that holds Ferry records is a spool, whatever else is wrong with
// it. So is a file that is part of what bbolt writes when it creates one
// (four pages, in one write): its creation was cut short (a power cut
// during the first start).
func notSpoolOrDamaged(path string, why error) error {
	recs, _, err := rawScan(path)
	if err == nil && len(recs) > 0 {
		return &CorruptionError{Path: path, Bucket: "(root)", Err: fmt.Errorf("%w: %w, but it holds %d Ferry records", errMetaDamaged, why, len(recs))}
	}
	if b, err := readSmall(path, 4*maxCreatePage); err == nil && interruptedCreate(b) {
		return &CorruptionError{Path: path, Err: fmt.Errorf("%w: %w", errCreateCut, why)}
	}
	return fmt.Errorf("%w: %s: %w", ErrNotSpool, path, why)
}

// maxCreatePage is the largest page size interruptedCreate considers.
const maxCreatePage = 65536

// readSmall reads the file at path when it holds at most limit bytes.
func readSmall(path string, limit int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes", path, fi.Size())
	}
	return os.ReadFile(path)
}

// interruptedCreate reports whether b can be what bbolt's creation of a
// file left after a power cut: every byte is either zero or the byte
// bbolt's creation writes there (createdFile), at one of the page sizes
// bbolt may have used. A torn write keeps any subset of its sectors, so
// the meta pages may be gone while the freelist's and the leaf's headers
// are there.
func interruptedCreate(b []byte) bool {
	for _, ps := range []int{4096, os.Getpagesize(), 16384, maxCreatePage} {
		if len(b) > 4*ps {
			continue
		}
		img := createdFile(ps)
		ok := true
		for i, x := range b {
			if x != 0 && x != img[i] {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// createdFile is what bbolt writes when it creates a file with page size
// ps (bbolt's DB.init): two meta pages (transactions 0 and 1, the root
// bucket at page 3, the freelist at page 2), an empty freelist page and an
// empty leaf page.
func createdFile(ps int) []byte {
	b := make([]byte, 4*ps)
	for i := range 2 {
		p := b[i*ps:]
		binary.LittleEndian.PutUint64(p[0:], uint64(i))
		binary.LittleEndian.PutUint16(p[8:], metaPageFlag)
		m := p[pageHeaderSize:]
		binary.LittleEndian.PutUint32(m[0:], boltMagic)
		binary.LittleEndian.PutUint32(m[4:], boltVersion)
		binary.LittleEndian.PutUint32(m[8:], uint32(ps))
		binary.LittleEndian.PutUint64(m[16:], 3) // root bucket's page
		binary.LittleEndian.PutUint64(m[32:], 2) // freelist
		binary.LittleEndian.PutUint64(m[40:], 4) // high-water mark
		binary.LittleEndian.PutUint64(m[48:], uint64(i))
		h := fnv.New64a()
		h.Write(m[:metaChecksumEnd])
		binary.LittleEndian.PutUint64(m[metaChecksumEnd:], h.Sum64())
	}
	binary.LittleEndian.PutUint64(b[2*ps:], 2)
	binary.LittleEndian.PutUint16(b[2*ps+8:], freelistPageFlag)
	binary.LittleEndian.PutUint64(b[3*ps:], 3)
	binary.LittleEndian.PutUint16(b[3*ps+8:], leafPageFlag)
	return b
}

type salvaged struct {
	id uint64
	r  record
}

// salvage copies every readable message of the damaged file at path into a
// fresh spool file, moves the damaged file aside and returns the report.
//
// It walks the tree of the meta page bbolt would use, keeping every intact
// record. When that tree is not all there (a damaged page, counts that do
// not match the records, a damaged meta page), it also walks the tree of
// the other meta page (one commit older) and scans every page of the file
// for intact records: nothing readable is left behind, at the price of
// bringing back messages that were already delivered (at-least-once). When
// the tree is all there but some of its records are damaged, only those
// ids are looked for on every page (an older intact copy of each). The
// report's Lost is exact when the first tree was complete, else the least
// number lost (LostUnknown).
func salvage(path string, opts Options, cause error) (*SalvageReport, error) {
	rep := &SalvageReport{Cause: cause.Error()}
	found := map[uint64]record{}
	keep := func(id uint64, r record) {
		if _, ok := found[id]; !ok && r.kind != kindDelivered {
			found[id] = r
		}
	}
	exact := !errors.Is(cause, errMetaDamaged)
	// With a meta page damaged, the tree of the other one may be a commit
	// older, its state stale or short of the last commit's: every kind is
	// named, as the messages' count is unknown (a file whose creation was
	// cut short never held any).
	createCut := errors.Is(cause, errCreateCut)
	stateUnknown := !exact && !createCut
	expected := int64(-1)
	var bad []uint64
	nextID := uint64(1)
	var state []stateRecord
	if b, err := openBoltFile(path); err != nil {
		exact = false
		rep.StateDamaged = stateKindNames(nil, !createCut)
	} else {
		order := []int{b.cur}
		if o := b.other(); o >= 0 {
			order = append(order, o)
		}
		for n, i := range order {
			b.keepState = n == 0 // the state of the newest tree only: an older one may be stale
			c, damaged, _, err := b.walkContents(&b.metas[i], true, keep)
			if n == 0 {
				state = c.state
				// A tree not walked to its buckets may have held any state.
				rep.StateLost, rep.StateDamaged = c.stateBad, stateKindNames(c.stateDamaged, stateUnknown || err != nil)
			}
			nextID = max(nextID, c.nextID, c.maxID+1)
			if n > 0 {
				continue
			}
			if c.hasCounts {
				expected = c.stored.messages() + c.stored.dlq
			}
			bad = c.badIDs
			complete := err == nil && len(damaged) == 0 && c.meta && c.magic && len(c.unknown) == 0 && c.plainKeys == 0 && c.mismatch(&b.metas[i]) == nil
			if complete && exact {
				break
			}
			exact = false
		}
		b.close()
	}
	// A tree that is whole but for damaged records (a torn page of a commit
	// whose meta page reached the disk, in Interval durability) keeps its
	// count exact: only the damaged ids are looked for on every page, where
	// the last synced copy of each may be intact (the pin kept it).
	missing := map[uint64]bool{}
	if exact {
		for _, id := range bad {
			if _, ok := found[id]; !ok {
				missing[id] = true
			}
		}
	}
	if !exact || len(missing) > 0 {
		recs, _, err := rawScan(path)
		if err != nil && len(found) == 0 {
			return nil, err
		}
		for _, x := range recs {
			if exact && !missing[x.id] {
				continue // the tree has it intact, or it was acked: not to come back
			}
			keep(x.id, x.r)
			nextID = max(nextID, x.id+1)
		}
		rep.RawScan = !exact // copies of damaged live records bring nothing delivered back
	}
	lostBad := 0
	for _, id := range bad {
		if _, ok := found[id]; !ok {
			lostBad++
		}
	}
	rep.Kept, rep.Lost = len(found), lostBad
	if !exact {
		rep.LostUnknown = true
		if expected >= 0 {
			rep.Lost = max(lostBad, int(expected)-len(found))
		}
	}
	rep.Damaged = damagedName(path, opts.Now())
	rep.Completed = opts.Now()

	tmp := path + ".salvage"
	_ = os.Remove(tmp)
	rep.StateKept = len(state)
	err := writeFresh(tmp, found, nextID, rep)
	if err == nil {
		err = writeState(tmp, state)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(path, rep.Damaged); err != nil {
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("move damaged file aside: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("install salvaged file: %w", err)
	}
	syncDir(filepath.Dir(path))
	return rep, nil
}

// damagedName is where the damaged file at path goes: path.damaged-TIME,
// with a number added when that exists already.
func damagedName(path string, now time.Time) string {
	base := fmt.Sprintf("%s.damaged-%s", path, now.UTC().Format("20060102T150405"))
	name := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(name); errors.Is(err, os.ErrNotExist) {
			return name
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

// rawScan reads every page of the file and keeps the leaf elements that are
// intact Ferry queue or DLQ records. Pages freed by later transactions still
// hold old records, so this can return messages that were already
// delivered: at-least-once, never less.
func rawScan(path string) ([]salvaged, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	psize := int64(4096)
	hdr := make([]byte, pageHeaderSize+64)
	if _, err := f.ReadAt(hdr, 0); err == nil {
		if ok, ps := validMeta(hdr); ok {
			psize = int64(ps)
		}
	}
	seen := map[uint64]record{}
	pages := 0
	page := make([]byte, psize)
	for off := 2 * psize; off+pageHeaderSize <= fi.Size(); {
		n, err := f.ReadAt(page, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, pages, err
		}
		pages++
		p := page[:n]
		flags := binary.LittleEndian.Uint16(p[8:])
		overflow := int64(binary.LittleEndian.Uint32(p[12:]))
		span := psize
		if flags == leafPageFlag {
			if overflow > 0 && off+(overflow+1)*psize <= fi.Size() {
				big := make([]byte, (overflow+1)*psize)
				if _, err := f.ReadAt(big, off); err == nil {
					p = big
					span = int64(len(big))
				}
			}
			scanLeaf(p, seen)
		}
		off += span
	}
	out := make([]salvaged, 0, len(seen))
	for id, r := range seen {
		out = append(out, salvaged{id, r})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out, pages, nil
}

func scanLeaf(p []byte, seen map[uint64]record) { scanLeafAt(p, seen, 0) }

// scanLeafAt is scanLeaf of a page at depth 0, or of an inline bucket's
// page inside one (depth 1: Ferry nests no buckets deeper).
func scanLeafAt(p []byte, seen map[uint64]record, depth int) {
	if len(p) < pageHeaderSize {
		return
	}
	count := int(binary.LittleEndian.Uint16(p[10:]))
	for i := range count {
		at := pageHeaderSize + i*leafElemSize
		if at+leafElemSize > len(p) {
			return
		}
		e := p[at:]
		flags := binary.LittleEndian.Uint32(e[0:])
		pos := int(binary.LittleEndian.Uint32(e[4:]))
		ksize := int(binary.LittleEndian.Uint32(e[8:]))
		vsize := int(binary.LittleEndian.Uint32(e[12:]))
		start := at + pos
		if pos <= 0 || start+ksize+vsize > len(p) {
			continue
		}
		if flags&bucketLeafFlag != 0 {
			// A small bucket bbolt keeps inline: its header (root 0), then
			// a leaf page of its own.
			v := p[start+ksize : start+ksize+vsize]
			if depth == 0 && len(v) >= bucketHdrSize+pageHeaderSize && binary.LittleEndian.Uint64(v) == 0 &&
				binary.LittleEndian.Uint16(v[bucketHdrSize+8:]) == leafPageFlag {
				scanLeafAt(v[bucketHdrSize:], seen, 1)
			}
			continue
		}
		if ksize != 8 || vsize < recMinV2 {
			continue
		}
		r, err := decodeRecord(p[start:start+ksize], p[start+ksize:start+ksize+vsize])
		if err != nil || r.kind == kindDelivered {
			continue
		}
		id := idOf(p[start : start+ksize])
		if old, ok := seen[id]; ok && old.kind == kindDead {
			continue // the DLQ copy is the later state of a message
		}
		r.data = append([]byte(nil), r.data...)
		seen[id] = r
	}
}

// writeFresh creates a new spool file at path holding recs, with next_id
// at least nextID and the salvage report rep in its meta bucket.
func writeFresh(path string, recs map[uint64]record, nextID uint64, rep *SalvageReport) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType, NoSync: true})
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	report, err := json.Marshal(rep)
	if err != nil {
		_ = db.Close()
		return err
	}
	ids := make([]uint64, 0, len(recs))
	for id := range recs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var c counts
	next := max(nextID, 1)
	for first := true; first || len(ids) > 0; first = false {
		chunk := ids[:min(len(ids), 10000)]
		ids = ids[len(chunk):]
		err = db.Update(func(tx *bolt.Tx) error {
			for _, name := range append(append(bktLanes[:], bktMeta, bktExpiry, bktDedupe, bktDedupeExp, bktDLQ, bktDelivered), bktState[:]...) {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			for _, id := range chunk {
				r := recs[id]
				v := r.encode(id)
				size := int64(len(v) + 8)
				if r.kind == kindDead {
					c.addDLQ(id, size)
					if err := tx.Bucket(bktDLQ).Put(u64(id), v); err != nil {
						return err
					}
				} else {
					c.addLane(r.priority, id, size)
					if err := tx.Bucket(bktLanes[r.priority]).Put(u64(id), v); err != nil {
						return err
					}
					if r.expires != 0 {
						if err := tx.Bucket(bktExpiry).Put(timeKey(r.expires, u64(id)), []byte{r.priority}); err != nil {
							return err
						}
					}
				}
				next = max(next, id+1)
			}
			meta := tx.Bucket(bktMeta)
			if err := stamp(tx, next, &c); err != nil {
				return err
			}
			for k, v := range map[string][]byte{
				string(keyMagic): []byte(magic), string(keyFormat): u64(formatVersion),
				string(keyNextID): u64(next), string(keyCounts): c.encode(), string(keyClean): {1},
				string(keySalvage): report,
			} {
				if err := meta.Put([]byte(k), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			break
		}
	}
	if err == nil {
		err = db.Sync()
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}
