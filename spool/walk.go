package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// bbolt page layout (go.etcd.io/bbolt/internal/common): a 16-byte header
// (id u64, flags u16, count u16, overflow u32) then count elements.
// Branch elements: pos u32, ksize u32, pgid u64. Leaf elements: flags u32,
// pos u32, ksize u32, vsize u32; pos is relative to the element. A bucket
// entry's value is (root pgid u64, sequence u64), followed by an inline
// page when root is 0. A freelist page (flags 0x10) holds count page ids
// (u64 each); count 0xFFFF means the first u64 is the count.
const (
	branchPageFlag   = 0x01
	freelistPageFlag = 0x10
	elemSize         = 16
	bucketHdrSize    = 16
	maxTreeDepth     = 64
	pgidNoFreelist   = ^uint64(0)
)

var errStructure = errors.New("damaged page")

// damage is a problem found by the checked reader, with where it is.
type damage struct {
	bucket string
	key    []byte
	page   uint64
	err    error
}

func (d *damage) Error() string { return d.err.Error() }
func (d *damage) Unwrap() error { return d.err }

func damageAt(page uint64, format string, args ...any) error {
	return &damage{page: page, err: fmt.Errorf("%w: "+format, append([]any{errStructure}, args...)...)}
}

// inBucket records which bucket a damage lies in (the first one named wins).
func inBucket(name string, err error) error {
	var d *damage
	if errors.As(err, &d) {
		if d.bucket == "" {
			d.bucket = name
		}
		return err
	}
	return &damage{bucket: name, err: err}
}

// boltFile reads a bbolt file with every offset checked. bbolt trusts its
// pages: a damaged one makes it panic, or fault on memory past the end of a
// truncated file (SIGBUS, which no recover catches), often in a goroutine
// of its own (its freelist rebuild at Open, which panics on the first
// inconsistency its check reports). So Open checks the file with this first
// — every invariant that rebuild checks, and Ferry's own — and only hands
// bbolt a file it can read safely; salvage reads damaged files with it.
type boltFile struct {
	f     *os.File
	data  []byte // the file mapped read-only; nil: read with pread
	size  int64
	psize int64
	metas [2]metaPage
	cur   int // the meta page in use: the valid one with the higher txid
	// keepState: walkContents collects the intact state records (salvage).
	keepState bool
}

// metaPage is what the reader needs from one of bbolt's two meta pages.
type metaPage struct {
	ok             bool
	txid, root     uint64
	pgid, freelist uint64 // pgid: high-water mark, pages in use are below it
}

func (b *boltFile) meta() *metaPage { return &b.metas[b.cur] }

// other returns the index of the other valid meta page, -1 if none.
func (b *boltFile) other() int {
	if o := 1 - b.cur; b.metas[o].ok {
		return o
	}
	return -1
}

// openBoltFile reads both meta pages and selects the one bbolt would use.
func openBoltFile(path string) (*boltFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	b := &boltFile{f: f, size: fi.Size()}
	buf := make([]byte, pageHeaderSize+64)
	// The page size is in the meta pages; meta 1 sits one page in.
	psize := int64(0)
	if _, err := f.ReadAt(buf, 0); err == nil {
		if ok, ps := validMeta(buf); ok {
			psize = int64(ps)
		}
	}
	if psize == 0 {
		for _, off := range []int64{4096, int64(os.Getpagesize()), 16384, 65536} {
			if _, err := f.ReadAt(buf, off); err == nil {
				if ok, ps := validMeta(buf); ok && int64(ps) == off {
					psize = off
					break
				}
			}
		}
	}
	if psize == 0 {
		_ = f.Close()
		return nil, fmt.Errorf("%w: no valid meta page", errStructure)
	}
	b.psize = psize
	for i := range b.metas {
		if _, err := f.ReadAt(buf, int64(i)*psize); err != nil {
			continue
		}
		if ok, ps := validMeta(buf); ok && int64(ps) == psize {
			m := buf[pageHeaderSize:]
			b.metas[i] = metaPage{ok: true,
				root:     binary.LittleEndian.Uint64(m[16:]),
				freelist: binary.LittleEndian.Uint64(m[32:]),
				pgid:     binary.LittleEndian.Uint64(m[40:]),
				txid:     binary.LittleEndian.Uint64(m[48:]),
			}
		}
	}
	b.cur = 0
	if !b.metas[0].ok || (b.metas[1].ok && b.metas[1].txid > b.metas[0].txid) {
		b.cur = 1
	}
	// Mapped, a 1M-message spool is checked in a fraction of the time pread
	// takes. Every access is bounds-checked against the size first, and the
	// file is locked meanwhile, so no access can fault. The mapping is
	// dropped by close, so its pages do not stay resident.
	if b.size > 0 && b.size <= int64(maxInt) {
		if m, err := syscall.Mmap(int(f.Fd()), 0, int(b.size), syscall.PROT_READ, syscall.MAP_SHARED); err == nil {
			_ = syscall.Madvise(m, syscall.MADV_SEQUENTIAL)
			b.data = m
		}
	}
	return b, nil
}

func (b *boltFile) close() {
	if b.data != nil {
		_ = syscall.Munmap(b.data)
	}
	_ = b.f.Close()
}

// read returns n bytes at off; the caller has checked off+n <= size.
func (b *boltFile) read(off, n int64) ([]byte, error) {
	if b.data != nil {
		return b.data[off : off+n : off+n], nil
	}
	p := make([]byte, n)
	_, err := b.f.ReadAt(p, off)
	return p, err
}

// page returns page id with its overflow pages, or an error if any part of
// it lies outside the pages in use of meta m or outside the file.
func (b *boltFile) page(m *metaPage, id uint64) ([]byte, error) {
	if id < 2 || id >= m.pgid {
		return nil, damageAt(id, "page %d out of range [2, %d)", id, m.pgid)
	}
	if int64(id+1)*b.psize > b.size {
		return nil, damageAt(id, "page %d beyond the end of the file (%d bytes): truncated", id, b.size)
	}
	p, err := b.read(int64(id)*b.psize, b.psize)
	if err != nil {
		return nil, &damage{page: id, err: fmt.Errorf("page %d: %w", id, err)}
	}
	if got := binary.LittleEndian.Uint64(p); got != id {
		return nil, damageAt(id, "page %d says it is page %d", id, got)
	}
	over := uint64(binary.LittleEndian.Uint32(p[12:]))
	if over > 0 {
		if id+over >= m.pgid || int64(id+over+1)*b.psize > b.size {
			return nil, damageAt(id, "page %d overflows past the end (%d more pages)", id, over)
		}
		if p, err = b.read(int64(id)*b.psize, int64(over+1)*b.psize); err != nil {
			return nil, &damage{page: id, err: fmt.Errorf("page %d: %w", id, err)}
		}
	}
	return p, nil
}

// pageSet is a bitmap of page ids.
type pageSet []uint64

func newPageSet(n uint64) pageSet { return make(pageSet, (n+63)/64) }

func (s pageSet) has(id uint64) bool { return id/64 < uint64(len(s)) && s[id/64]&(1<<(id%64)) != 0 }
func (s pageSet) add(id uint64) {
	if id/64 < uint64(len(s)) {
		s[id/64] |= 1 << (id % 64)
	}
}

// leafVisit is called for every leaf element; bucket tells a nested
// bucket's entry (whose v is its header) from a key/value pair.
type leafVisit func(k, v []byte, bucket bool) error

// treeWalk walks the tree of one meta page, checking what bbolt's own
// check (and so its freelist rebuild at Open) checks: every page reached
// once, in range, of the right type; keys strictly increasing within a page
// and inside the range their parent gives them.
type treeWalk struct {
	b     *boltFile
	m     *metaPage
	seen  pageSet
	pages int
	// skip, when set, is told of a child page that failed, and the walk
	// goes on with the next child instead of ending (salvage of state).
	skip func(err error)
}

func (b *boltFile) newWalk(m *metaPage) *treeWalk {
	return &treeWalk{b: b, m: m, seen: newPageSet(m.pgid)}
}

// bucket visits every element of the bucket with root page root (0: the
// inline page inline).
func (w *treeWalk) bucket(root uint64, inline []byte, visit leafVisit) error {
	if root == 0 {
		_, err := walkElements(inline, 0, nil, nil, func(uint64, []byte, []byte, int) ([]byte, error) {
			return nil, damageAt(0, "branch page inside an inline bucket")
		}, visit)
		return err
	}
	_, err := w.page(root, 0, nil, nil, visit)
	return err
}

// page walks page id, whose keys must lie in [lo, hi) (nil: unbounded), and
// returns the largest key below it.
func (w *treeWalk) page(id uint64, depth int, lo, hi []byte, visit leafVisit) ([]byte, error) {
	if depth > maxTreeDepth {
		return nil, damageAt(id, "tree deeper than %d at page %d", maxTreeDepth, id)
	}
	p, err := w.b.page(w.m, id)
	if err != nil {
		return nil, err
	}
	over := uint64(binary.LittleEndian.Uint32(p[12:]))
	for i := id; i <= id+over; i++ {
		if w.seen.has(i) {
			return nil, damageAt(id, "page %d reached twice", i)
		}
		w.seen.add(i)
	}
	w.pages++
	return walkElements(p, id, lo, hi, func(child uint64, clo, chi []byte, _ int) ([]byte, error) {
		k, err := w.page(child, depth+1, clo, chi, visit)
		if err != nil && w.skip != nil {
			w.skip(err)
			return nil, nil // the next child is checked against this one's first key
		}
		return k, err
	}, visit)
}

// walkElements checks and visits the elements of one page image whose keys
// must lie in [lo, hi); it returns the largest key in the page's subtree.
func walkElements(p []byte, id uint64, lo, hi []byte, branch func(child uint64, lo, hi []byte, i int) ([]byte, error), leaf leafVisit) ([]byte, error) {
	if len(p) < pageHeaderSize {
		return nil, damageAt(id, "page %d: short", id)
	}
	flags := binary.LittleEndian.Uint16(p[8:])
	count := int(binary.LittleEndian.Uint16(p[10:]))
	if pageHeaderSize+count*elemSize > len(p) {
		return nil, damageAt(id, "page %d: %d elements do not fit", id, count)
	}
	if flags != branchPageFlag && flags != leafPageFlag {
		return nil, damageAt(id, "page %d has type %#x where a branch or leaf belongs", id, flags)
	}
	keyAt := func(i int) ([]byte, error) {
		at := pageHeaderSize + i*elemSize
		e := p[at : at+elemSize]
		var pos, ksize, vsize int
		if flags == branchPageFlag {
			pos, ksize = int(binary.LittleEndian.Uint32(e[0:])), int(binary.LittleEndian.Uint32(e[4:]))
		} else {
			pos = int(binary.LittleEndian.Uint32(e[4:]))
			ksize, vsize = int(binary.LittleEndian.Uint32(e[8:])), int(binary.LittleEndian.Uint32(e[12:]))
		}
		start := at + pos
		if pos < elemSize || ksize < 0 || vsize < 0 || start+ksize+vsize > len(p) || start+ksize+vsize < start {
			return nil, damageAt(id, "page %d element %d: key or value outside the page", id, i)
		}
		return p[start : start+ksize], nil
	}
	prev := lo // bbolt: each key > the one before it (the first ≥ lo)
	for i := range count {
		k, err := keyAt(i)
		if err != nil {
			return nil, err
		}
		if prev != nil && (bytes.Compare(prev, k) > 0 || (i > 0 && bytes.Equal(prev, k))) {
			return nil, &damage{key: clone(k), page: id, err: fmt.Errorf("%w: page %d element %d: key %x out of order (after %x)", errStructure, id, i, k, prev)}
		}
		if hi != nil && bytes.Compare(k, hi) >= 0 {
			return nil, &damage{key: clone(k), page: id, err: fmt.Errorf("%w: page %d element %d: key %x not below %x, the next key of its parent", errStructure, id, i, k, hi)}
		}
		at := pageHeaderSize + i*elemSize
		e := p[at : at+elemSize]
		if flags == branchPageFlag {
			next := hi
			if i+1 < count {
				if next, err = keyAt(i + 1); err != nil {
					return nil, err
				}
			}
			maxKey, err := branch(binary.LittleEndian.Uint64(e[8:]), k, next, i)
			if err != nil {
				return nil, err
			}
			prev = maxKey
			if prev == nil {
				prev = k
			}
			continue
		}
		ef := binary.LittleEndian.Uint32(e[0:])
		vsize := int(binary.LittleEndian.Uint32(e[12:]))
		start := at + int(binary.LittleEndian.Uint32(e[4:])) + len(k)
		if err := leaf(k, p[start:start+vsize], ef&bucketLeafFlag != 0); err != nil {
			var d *damage
			if errors.As(err, &d) {
				if d.key == nil {
					d.key = append([]byte(nil), k...)
				}
				if d.page == 0 {
					d.page = id
				}
			}
			return nil, err
		}
		prev = k
	}
	return prev, nil
}

// bucketHeader splits a bucket entry's value into root page and inline page.
func bucketHeader(v []byte) (uint64, []byte, error) {
	if len(v) < bucketHdrSize {
		return 0, nil, damageAt(0, "bucket header of %d bytes", len(v))
	}
	root := binary.LittleEndian.Uint64(v)
	if root == 0 {
		return 0, v[bucketHdrSize:], nil
	}
	return root, nil, nil
}

// subBucket is a bucket of the root bucket.
type subBucket struct {
	name   string
	root   uint64
	inline []byte
}

// buckets walks the root bucket: its buckets, and how many plain keys it
// holds (Ferry keeps none there).
func (w *treeWalk) buckets() ([]subBucket, int, error) {
	var subs []subBucket
	plain := 0
	err := w.bucket(w.m.root, nil, func(k, v []byte, bucket bool) error {
		if !bucket {
			plain++
			return nil
		}
		root, inline, err := bucketHeader(v)
		if err != nil {
			return err
		}
		subs = append(subs, subBucket{string(k), root, append([]byte(nil), inline...)})
		return nil
	})
	return subs, plain, err
}

// noNesting refuses a bucket inside a bucket: Ferry never nests them, so
// one is damage (a flipped flag), and bbolt would follow its header to a
// random page and crash.
func noNesting(k, _ []byte, bucket bool) error {
	if bucket {
		return &damage{key: clone(k), err: fmt.Errorf("%w: nested bucket %x where Ferry keeps none", errStructure, k)}
	}
	return nil
}

// contents is what a walk of a Ferry tree found.
type contents struct {
	found     counts // recounted from the records
	stored    counts // meta/counts
	hasCounts bool
	meta      bool // the meta bucket exists
	magic     bool // ... and says ferry-spool
	format    uint64
	nextID    uint64
	commit    []byte // meta/commit; nil: not written (older files)
	maxID     uint64 // largest id in the lane, DLQ and delivered buckets
	bad       int    // records that fail their checksum or do not belong where they are
	badIDs    []uint64
	firstBad  error
	unknown   []string // buckets Ferry does not have
	plainKeys int      // keys at the top level
	buckets   int
	salvage   []byte        // meta/salvage: the last salvage report
	state     []stateRecord // intact state records, with boltFile.keepState
	stateBad  int           // state records that fail their check
	// stateDamaged: the state buckets a page of which could not be read.
	stateDamaged []string
}

var knownBuckets = func() map[string]int {
	m := map[string]int{string(bktMeta): -1, string(bktExpiry): -1, string(bktDedupe): -1, string(bktDedupeExp): -1,
		string(bktDLQ): -2, string(bktDelivered): -3}
	for i, l := range bktLanes {
		m[string(l)] = i
	}
	for _, b := range bktState {
		m[string(b)] = roleState
	}
	return m
}()

// walkContents walks the tree of meta m, checking its structure and every
// Ferry record, and recounting what the meta bucket's counts claim. With
// keepGoing, damage inside one bucket is recorded in damaged and the walk
// goes on with the next; visit (may be nil) gets every intact message
// record, with its bucket's kind.
func (b *boltFile) walkContents(m *metaPage, keepGoing bool, visit func(id uint64, r record)) (c contents, damaged []error, w *treeWalk, err error) {
	w = b.newWalk(m)
	subs, plain, err := w.buckets()
	if err != nil {
		return c, nil, w, inBucket("(root)", err)
	}
	c.plainKeys, c.buckets = plain, len(subs)
	for _, sb := range subs {
		role, known := knownBuckets[sb.name]
		if !known {
			c.unknown = append(c.unknown, sb.name)
		}
		visitOne := func(k, v []byte, bucket bool) error {
			if err := noNesting(k, v, bucket); err != nil {
				return err
			}
			switch {
			case !known:
			case sb.name == string(bktMeta):
				c.meta = true
				switch string(k) {
				case string(keyMagic):
					c.magic = string(v) == magic
				case string(keyFormat):
					if len(v) == 8 {
						c.format = idOf(v)
					}
				case string(keyNextID):
					if len(v) == 8 {
						c.nextID = idOf(v)
					}
				case string(keyCounts):
					if st, err := decodeCounts(v); err == nil {
						c.stored, c.hasCounts = st, true
					}
				case string(keySalvage):
					c.salvage = append([]byte(nil), v...)
				case string(keyCommit):
					c.commit = append([]byte(nil), v...)
				}
			case sb.name == string(bktDedupe):
				c.found.dedupe++
			case role == roleState:
				c.stateRecord(sb.name, k, v, b.keepState)
			case role >= 0 || role == -2 || role == -3:
				c.record(role, k, v, visit)
			}
			return nil
		}
		// A salvage keeps every intact state record: past a damaged page
		// of a state bucket the walk goes on with the next (the raw page
		// scan finds messages, not state).
		var errs []error
		if keepGoing && role == roleState {
			w.skip = func(err error) { errs = append(errs, err) }
		}
		err := w.bucket(sb.root, sb.inline, visitOne)
		w.skip = nil
		if err != nil {
			errs = append(errs, err)
		}
		for _, err := range errs {
			err = inBucket(sb.name, err)
			if !keepGoing {
				return c, damaged, w, err
			}
			damaged = append(damaged, err)
		}
		if len(errs) > 0 && role == roleState {
			c.stateDamaged = append(c.stateDamaged, sb.name)
		}
		if sb.name == string(bktMeta) {
			c.meta = true
		}
	}
	return c, damaged, w, nil
}

// record checks one message record against the bucket it is in (role:
// lane number, -2 DLQ, -3 delivered) and counts it.
func (c *contents) record(role int, k, v []byte, visit func(uint64, record)) {
	size := int64(len(v) + 8)
	var id uint64
	if len(k) == 8 {
		id = idOf(k)
		c.maxID = max(c.maxID, id)
	}
	switch role {
	case -2:
		c.found.addDLQ(id, size)
	case -3:
		c.found.addRet(id, size)
	default:
		c.found.addLane(uint8(role), id, size)
	}
	r, err := decodeRecord(k, v)
	if err == nil {
		want := byte(kindQueued)
		switch role {
		case -2:
			want = kindDead
		case -3:
			want = kindDelivered
		}
		switch {
		case r.kind != want:
			err = fmt.Errorf("%w: a record of kind %q in a bucket of kind %q", errBadRecord, r.kind, want)
		case role >= 0 && int(r.priority) != role:
			err = fmt.Errorf("%w: a record of priority %d in lane %d", errBadRecord, r.priority, role)
		}
	}
	if err != nil {
		c.bad++
		if len(k) == 8 {
			c.badIDs = append(c.badIDs, idOf(k))
		}
		if c.firstBad == nil {
			name := map[int]string{-2: string(bktDLQ), -3: string(bktDelivered)}[role]
			if role >= 0 {
				name = string(bktLanes[role])
			}
			c.firstBad = &damage{bucket: name, key: append([]byte(nil), k...), err: err}
		}
		return
	}
	if visit != nil {
		r.data = append([]byte(nil), r.data...)
		visit(idOf(k), r)
	}
}

// mismatch compares the recount with the stored counts and next_id, and
// the commit record with the meta page m and with both.
func (c *contents) mismatch(m *metaPage) error {
	if c.commit != nil {
		where := func(err error) error { return &damage{bucket: string(bktMeta), key: keyCommit, err: err} }
		txid, nextID, cc, err := decodeCommit(c.commit)
		switch {
		case err != nil:
			return where(err)
		case txid != m.txid:
			return where(fmt.Errorf("the meta page is of transaction %d, the tree it points to was written by transaction %d: its pages are not the ones that commit wrote", m.txid, txid))
		case nextID != c.nextID || !cc.sameTotals(&c.stored):
			return where(fmt.Errorf("next_id and counts differ from the commit record of transaction %d: parts of the meta bucket are of another commit", txid))
		}
		for i := range cc.sums {
			if cc.sums[i] != c.found.sums[i] {
				name := map[int]string{sumDLQ: string(bktDLQ), sumRet: string(bktDelivered)}[i]
				if i < Lanes {
					name = string(bktLanes[i])
				}
				return &damage{bucket: name, err: fmt.Errorf("its records are not the ones transaction %d left there (the ids add up to %d, the commit record says %d)", txid, c.found.sums[i], cc.sums[i])}
			}
		}
	}
	if !c.hasCounts {
		return &damage{bucket: string(bktMeta), key: keyCounts, err: errors.New("the counts are missing or unreadable")}
	}
	for i := range c.found.lanes {
		if c.found.lanes[i] != c.stored.lanes[i] {
			return &damage{bucket: string(bktLanes[i]), err: fmt.Errorf("meta/counts says lane %d holds %d messages (%d bytes), the lane holds %d (%d bytes)",
				i, c.stored.lanes[i][0], c.stored.lanes[i][1], c.found.lanes[i][0], c.found.lanes[i][1])}
		}
	}
	for _, x := range []struct {
		what          string
		bucket        []byte
		stored, found [2]int64
	}{
		{"dead letters", bktDLQ, [2]int64{c.stored.dlq, c.stored.dlqB}, [2]int64{c.found.dlq, c.found.dlqB}},
		{"retained messages", bktDelivered, [2]int64{c.stored.ret, c.stored.retB}, [2]int64{c.found.ret, c.found.retB}},
		{"dedupe keys", bktDedupe, [2]int64{c.stored.dedupe, 0}, [2]int64{c.found.dedupe, 0}},
	} {
		if x.stored != x.found {
			return &damage{bucket: string(x.bucket), err: fmt.Errorf("meta/counts says %d %s (%d bytes), the bucket holds %d (%d bytes)",
				x.stored[0], x.what, x.stored[1], x.found[0], x.found[1])}
		}
	}
	if c.maxID > 0 && c.nextID <= c.maxID {
		return &damage{bucket: string(bktMeta), key: keyNextID, err: fmt.Errorf("next_id is %d but id %d is in use", c.nextID, c.maxID)}
	}
	return nil
}

// checkedTree reports what would make bbolt panic or fault when it opens or
// reads the file, and what would make the spool start with holes nobody
// was told about: records that fail their checksum or sit in the wrong
// bucket, and counts that do not match the records (a tree some of whose
// pages were overwritten can be perfectly well-formed). It reads every
// page in use: the same work bbolt's freelist rebuild does at Open, plus
// CRC-32C. A file without Ferry's meta bucket is ErrNotSpool unless it
// holds Ferry records (then it is a spool with a damaged root), one of a
// newer format ErrVersion. It returns what the walk found.
func checkedTree(path string) (*contents, error) {
	b, err := openBoltFile(path)
	if err != nil {
		return nil, corruption(path, err)
	}
	defer b.close()
	m := b.meta()
	if int64(m.pgid)*b.psize > b.size {
		return nil, corruption(path, damageAt(0, "file has %d bytes, its pages need %d: truncated", b.size, int64(m.pgid)*b.psize))
	}
	c, _, w, err := b.walkContents(m, false, nil)
	if err != nil {
		return nil, corruption(path, err)
	}
	if err := w.checkFreelist(); err != nil {
		return nil, corruption(path, err)
	}
	switch {
	case !c.meta && c.buckets == 0 && c.plainKeys == 0:
		return &c, nil // empty: a new file
	case !c.meta || !c.magic:
		why := fmt.Errorf("has no %q bucket", bktMeta)
		if c.meta {
			why = errors.New("bad magic")
		}
		return nil, notSpoolOrDamaged(path, why)
	case c.format > formatVersion:
		return nil, fmt.Errorf("%w: %s has format %d, this build reads up to %d", ErrVersion, path, c.format, formatVersion)
	case len(c.unknown) > 0 || c.plainKeys > 0:
		return nil, corruption(path, &damage{bucket: "(root)", err: fmt.Errorf("%w: buckets %q and %d keys at the top level, where a Ferry spool has none", errStructure, c.unknown, c.plainKeys)})
	case c.bad > 0:
		return nil, corruption(path, fmt.Errorf("%d damaged records, first: %w", c.bad, c.firstBad))
	}
	if err := c.mismatch(m); err != nil {
		return nil, corruption(path, err)
	}
	return &c, nil
}

// checkFreelist checks a freelist bbolt wrote at the last clean Close (it
// trusts it at Open): every listed page is in range, listed once, and not
// in use; together with the pages in use they are every page.
func (w *treeWalk) checkFreelist() error {
	m := w.m
	if m.freelist == pgidNoFreelist {
		return nil
	}
	p, err := w.b.page(m, m.freelist)
	if err != nil {
		return inBucket("(freelist)", err)
	}
	if flags := binary.LittleEndian.Uint16(p[8:]); flags != freelistPageFlag {
		return damageAt(m.freelist, "freelist page %d has type %#x", m.freelist, flags)
	}
	over := uint64(binary.LittleEndian.Uint32(p[12:]))
	count, at := uint64(binary.LittleEndian.Uint16(p[10:])), pageHeaderSize
	if count == 0xFFFF {
		if len(p) < pageHeaderSize+8 {
			return damageAt(m.freelist, "freelist page %d: short", m.freelist)
		}
		count, at = binary.LittleEndian.Uint64(p[pageHeaderSize:]), pageHeaderSize+8
	}
	if uint64(len(p)-at)/8 < count {
		return damageAt(m.freelist, "freelist page %d: %d ids do not fit", m.freelist, count)
	}
	used := w.seen
	for i := m.freelist; i <= m.freelist+over; i++ {
		if used.has(i) {
			return damageAt(m.freelist, "freelist page %d is also in the tree", i)
		}
		used.add(i)
	}
	for i := range count {
		id := binary.LittleEndian.Uint64(p[at+int(i)*8:])
		if id < 2 || id >= m.pgid {
			return damageAt(m.freelist, "freelist lists page %d, outside [2, %d)", id, m.pgid)
		}
		if used.has(id) {
			return damageAt(id, "freelist lists page %d, which is in use or listed twice", id)
		}
		used.add(id)
	}
	for id := uint64(2); id < m.pgid; id++ {
		if !used.has(id) {
			return damageAt(id, "page %d is neither in use nor free", id)
		}
	}
	return nil
}

// corruption wraps err, found in the file at path, as a *CorruptionError
// that says where.
func corruption(path string, err error) error {
	ce := &CorruptionError{Path: path, Err: err}
	var d *damage
	if errors.As(err, &d) {
		ce.Bucket, ce.Key, ce.Page = d.bucket, d.key, d.page
	}
	return ce
}

// clone copies b: keys alias the file's map, which is gone when an error
// that names them is printed.
func clone(b []byte) []byte { return append([]byte(nil), b...) }
