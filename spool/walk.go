package spool

import (
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
// page when root is 0.
const (
	branchPageFlag = 0x01
	elemSize       = 16
	bucketHdrSize  = 16
	maxTreeDepth   = 64
)

var errStructure = errors.New("damaged page")

// boltFile reads a bbolt file with every offset checked. bbolt trusts its
// pages: a damaged one makes it panic, or fault on memory past the end of a
// truncated file (SIGBUS, which no recover catches), often in a goroutine
// of its own. So Open walks the tree with this first and only hands a file
// to bbolt that it can read safely, and salvage reads damaged files with it.
type boltFile struct {
	f     *os.File
	data  []byte // the file mapped read-only; nil: read with pread
	size  int64
	psize int64
	root  uint64 // root bucket page
	pgid  uint64 // high-water mark: pages in use are below it
}

// openBoltFile reads the meta page bbolt would use: the valid one with the
// higher transaction id.
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
	var best struct {
		ok               bool
		txid, root, pgid uint64
		psize            uint32
	}
	buf := make([]byte, pageHeaderSize+64)
	for _, off := range []int64{0, 4096, int64(os.Getpagesize()), 16384, 65536} {
		if _, err := f.ReadAt(buf, off); err != nil {
			continue
		}
		ok, ps := validMeta(buf)
		if !ok || (off != 0 && int64(ps) != off) {
			continue
		}
		m := buf[pageHeaderSize:]
		txid := binary.LittleEndian.Uint64(m[48:])
		if !best.ok || txid > best.txid {
			best.ok, best.txid, best.psize = true, txid, ps
			best.root = binary.LittleEndian.Uint64(m[16:])
			best.pgid = binary.LittleEndian.Uint64(m[40:])
		}
	}
	if !best.ok {
		_ = f.Close()
		return nil, fmt.Errorf("%w: no valid meta page", errStructure)
	}
	b.psize, b.root, b.pgid = int64(best.psize), best.root, best.pgid
	// Mapped, a 1M-message spool is checked in a fraction of the time pread
	// takes. Every access is bounds-checked against the size first, and the
	// file is locked meanwhile, so no access can fault.
	if b.size > 0 && b.size <= int64(maxInt) {
		if m, err := syscall.Mmap(int(f.Fd()), 0, int(b.size), syscall.PROT_READ, syscall.MAP_SHARED); err == nil {
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
// it lies outside the pages in use or outside the file.
func (b *boltFile) page(id uint64) ([]byte, error) {
	if id < 2 || id >= b.pgid {
		return nil, fmt.Errorf("%w: page %d out of range [2, %d)", errStructure, id, b.pgid)
	}
	if int64(id+1)*b.psize > b.size {
		return nil, fmt.Errorf("%w: page %d beyond the end of the file (%d bytes): truncated", errStructure, id, b.size)
	}
	p, err := b.read(int64(id)*b.psize, b.psize)
	if err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	if got := binary.LittleEndian.Uint64(p); got != id {
		return nil, fmt.Errorf("%w: page %d says it is page %d", errStructure, id, got)
	}
	over := uint64(binary.LittleEndian.Uint32(p[12:]))
	if over > 0 {
		if id+over >= b.pgid || int64(id+over+1)*b.psize > b.size {
			return nil, fmt.Errorf("%w: page %d overflows past the end (%d more pages)", errStructure, id, over)
		}
		if p, err = b.read(int64(id)*b.psize, int64(over+1)*b.psize); err != nil {
			return nil, fmt.Errorf("page %d: %w", id, err)
		}
	}
	return p, nil
}

// leafVisit is called for every leaf element; bucket tells a nested
// bucket's entry (whose v is its header) from a key/value pair.
type leafVisit func(k, v []byte, bucket bool) error

// walkBucket visits every element of the bucket whose header is hdr (the
// root bucket: root page and no inline page). seen guards against cycles.
func (b *boltFile) walkBucket(root uint64, inline []byte, seen map[uint64]bool, visit leafVisit) error {
	if root == 0 {
		return walkElements(inline, 0, func(uint64, int) error {
			return fmt.Errorf("%w: branch page inside an inline bucket", errStructure)
		}, visit)
	}
	return b.walkPage(root, 0, seen, visit)
}

func (b *boltFile) walkPage(id uint64, depth int, seen map[uint64]bool, visit leafVisit) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("%w: tree deeper than %d at page %d", errStructure, maxTreeDepth, id)
	}
	if seen[id] {
		return fmt.Errorf("%w: page %d reached twice", errStructure, id)
	}
	seen[id] = true
	p, err := b.page(id)
	if err != nil {
		return err
	}
	return walkElements(p, id, func(child uint64, _ int) error {
		return b.walkPage(child, depth+1, seen, visit)
	}, visit)
}

// walkElements checks and visits the elements of one page image.
func walkElements(p []byte, id uint64, branch func(child uint64, i int) error, leaf leafVisit) error {
	if len(p) < pageHeaderSize {
		return fmt.Errorf("%w: page %d: short", errStructure, id)
	}
	flags := binary.LittleEndian.Uint16(p[8:])
	count := int(binary.LittleEndian.Uint16(p[10:]))
	if pageHeaderSize+count*elemSize > len(p) {
		return fmt.Errorf("%w: page %d: %d elements do not fit", errStructure, id, count)
	}
	for i := range count {
		at := pageHeaderSize + i*elemSize
		e := p[at : at+elemSize]
		switch flags {
		case branchPageFlag:
			pos, ksize := int(binary.LittleEndian.Uint32(e[0:])), int(binary.LittleEndian.Uint32(e[4:]))
			if at+pos+ksize > len(p) || pos < elemSize {
				return fmt.Errorf("%w: page %d element %d: key outside the page", errStructure, id, i)
			}
			if err := branch(binary.LittleEndian.Uint64(e[8:]), i); err != nil {
				return err
			}
		case leafPageFlag:
			ef := binary.LittleEndian.Uint32(e[0:])
			pos := int(binary.LittleEndian.Uint32(e[4:]))
			ksize := int(binary.LittleEndian.Uint32(e[8:]))
			vsize := int(binary.LittleEndian.Uint32(e[12:]))
			start := at + pos
			if pos < elemSize || ksize < 0 || vsize < 0 || start+ksize+vsize > len(p) || start+ksize+vsize < start {
				return fmt.Errorf("%w: page %d element %d: key or value outside the page", errStructure, id, i)
			}
			if err := leaf(p[start:start+ksize], p[start+ksize:start+ksize+vsize], ef&bucketLeafFlag != 0); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: page %d has type %#x where a branch or leaf belongs", errStructure, id, flags)
		}
	}
	return nil
}

// bucketHeader splits a bucket entry's value into root page and inline page.
func bucketHeader(v []byte) (uint64, []byte, error) {
	if len(v) < bucketHdrSize {
		return 0, nil, fmt.Errorf("%w: bucket header of %d bytes", errStructure, len(v))
	}
	root := binary.LittleEndian.Uint64(v)
	if root == 0 {
		return 0, v[bucketHdrSize:], nil
	}
	return root, nil, nil
}

// walkTree visits the root bucket and, one level down, the buckets named
// in want (nil: all), calling visit(bucket, k, v) for their key/values.
// Structural damage is returned as an error wrapping errStructure; with
// keepGoing, damage inside one bucket is recorded (damaged) and the walk
// goes on with the next bucket, for salvage.
func (b *boltFile) walkTree(want map[string]bool, keepGoing bool, visit func(bucket string, k, v []byte)) (damaged []error, err error) {
	seen := map[uint64]bool{}
	type sub struct {
		name   string
		root   uint64
		inline []byte
	}
	var subs []sub
	err = b.walkBucket(b.root, nil, seen, func(k, v []byte, bucket bool) error {
		if !bucket {
			return nil // Ferry keeps no keys at the top level
		}
		root, inline, err := bucketHeader(v)
		if err != nil {
			return err
		}
		subs = append(subs, sub{string(k), root, append([]byte(nil), inline...)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, s := range subs {
		if want != nil && !want[s.name] {
			// Still check its structure: bbolt walks every page at Open.
			if err := b.walkBucket(s.root, s.inline, seen, noNesting); err != nil {
				if !keepGoing {
					return damaged, fmt.Errorf("bucket %q: %w", s.name, err)
				}
				damaged = append(damaged, fmt.Errorf("bucket %q: %w", s.name, err))
			}
			continue
		}
		err := b.walkBucket(s.root, s.inline, seen, func(k, v []byte, bucket bool) error {
			if err := noNesting(k, v, bucket); err != nil {
				return err
			}
			visit(s.name, k, v)
			return nil
		})
		if err != nil {
			if !keepGoing {
				return damaged, fmt.Errorf("bucket %q: %w", s.name, err)
			}
			damaged = append(damaged, fmt.Errorf("bucket %q: %w", s.name, err))
		}
	}
	return damaged, nil
}

// noNesting refuses a bucket inside a bucket: Ferry never nests them, so
// one is damage (a flipped flag), and bbolt would follow its header to a
// random page and crash.
func noNesting(k, _ []byte, bucket bool) error {
	if bucket {
		return fmt.Errorf("%w: nested bucket %x where Ferry keeps none", errStructure, k)
	}
	return nil
}

// checkTree reports structural damage that would make bbolt panic or fault
// when it opens or reads the file, and queue or DLQ records whose checksum
// fails (bit rot in a value or key), so that Open salvages instead of
// starting with holes nobody was told about. It reads every page in use:
// the same work bbolt's freelist rebuild does at Open, plus CRC-32C.
func checkTree(path string) error {
	b, err := openBoltFile(path)
	if err != nil {
		return &CorruptionError{Path: path, Err: err}
	}
	defer b.close()
	if int64(b.pgid)*b.psize > b.size {
		return &CorruptionError{Path: path, Err: fmt.Errorf("%w: file has %d bytes, its pages need %d: truncated", errStructure, b.size, int64(b.pgid)*b.psize)}
	}
	want := map[string]bool{string(bktDLQ): true}
	for _, l := range bktLanes {
		want[string(l)] = true
	}
	var bad error
	badN := 0
	if _, err := b.walkTree(want, false, func(bucket string, k, v []byte) {
		if _, err := decodeRecord(k, v); err != nil {
			badN++
			if bad == nil {
				bad = fmt.Errorf("%s key %x: %w", bucket, k, err)
			}
		}
	}); err != nil {
		return &CorruptionError{Path: path, Err: err}
	}
	if bad != nil {
		return &CorruptionError{Path: path, Err: fmt.Errorf("%d damaged records, first %w", badN, bad)}
	}
	return nil
}
