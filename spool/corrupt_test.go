package spool_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
)

const corruptMessages = 2000

// corruptPayload is message i of the corruption tests: a marker padded to
// 100 bytes, so that a torn or foreign copy is recognised.
func corruptPayload(i int) []byte {
	b := fmt.Appendf(nil, "corrupt-%05d|", i)
	return append(b, bytes.Repeat([]byte{byte('a' + i%26)}, 100-len(b))...)
}

var corruptRe = regexp.MustCompile(`corrupt-(\d{5})\|`)

// markersIn returns the indexes of the intact payloads in b.
func markersIn(b []byte, into map[int]bool) {
	for _, m := range corruptRe.FindAllSubmatchIndex(b, -1) {
		i, _ := strconv.Atoi(string(b[m[2]:m[3]]))
		if m[0]+100 <= len(b) && bytes.Equal(b[m[0]:m[0]+100], corruptPayload(i)) {
			into[i] = true
		}
	}
}

// makeCorruptSpool writes corruptMessages messages over several lanes and
// transactions, then one more ("the tail") in a transaction of its own, and
// closes the spool. It returns the path and the file's bytes.
func makeCorruptSpool(t *testing.T) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{Durability: spool.Interval})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx := t.Context()
	for i := range corruptMessages {
		if _, err := s.Put(ctx, spool.Entry{Priority: uint8(i % 3 * 4), Data: corruptPayload(i)}); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s, err = spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if _, err := s.Put(ctx, spool.Entry{Data: corruptPayload(corruptMessages)}); err != nil {
		t.Fatalf("Put tail: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, b
}

// ---- a minimal reader of bbolt's page format, the test's oracle ----

const (
	boltMagic      = 0xED0CDAED
	boltPageHeader = 16
	boltElem       = 16
	boltBranch     = 0x01
	boltLeaf       = 0x02
	boltBucketFlag = 0x01
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	hwm      uint64 // high-water mark: pages in use
	txid     uint64
}

// readBoltMeta parses the meta page at off; ok is false when it is invalid.
func readBoltMeta(b []byte, off int) (m boltMeta, ok bool) {
	const size = 64 // magic..checksum
	o := off + boltPageHeader
	if o+size > len(b) {
		return m, false
	}
	p := b[o : o+size]
	le := binary.LittleEndian
	if le.Uint32(p[0:]) != boltMagic || le.Uint32(p[4:]) != 2 {
		return m, false
	}
	h := fnv.New64a()
	h.Write(p[:56])
	if h.Sum64() != le.Uint64(p[56:]) {
		return m, false
	}
	return boltMeta{pageSize: le.Uint32(p[8:]), root: le.Uint64(p[16:]), hwm: le.Uint64(p[40:]), txid: le.Uint64(p[48:])}, true
}

// boltReadable walks the bbolt tree in b (possibly damaged) the way bbolt
// would, from the newest valid meta page, skipping pages past the end of b,
// and returns the payloads it can read in leaf values: what a salvage that
// walks the tree can keep.
func boltReadable(b []byte) (map[int]bool, boltMeta, bool) {
	ps := os.Getpagesize()
	m0, ok0 := readBoltMeta(b, 0)
	if ok0 {
		ps = int(m0.pageSize)
	}
	m1, ok1 := readBoltMeta(b, ps)
	var m boltMeta
	switch {
	case ok0 && (!ok1 || m0.txid > m1.txid):
		m = m0
	case ok1:
		m = m1
	default:
		return nil, m, false
	}
	found := map[int]bool{}
	le := binary.LittleEndian
	seen := map[uint64]bool{}
	var walkPage func(p []byte, depth int)
	var walk func(id uint64, depth int)
	walkPage = func(p []byte, depth int) {
		if depth > 64 || len(p) < boltPageHeader {
			return
		}
		flags, count := le.Uint16(p[8:]), int(le.Uint16(p[10:]))
		for i := range count {
			e := boltPageHeader + i*boltElem
			if e+boltElem > len(p) {
				return
			}
			switch {
			case flags&boltBranch != 0:
				walk(le.Uint64(p[e+8:]), depth+1)
			case flags&boltLeaf != 0:
				fl, pos, ks, vs := le.Uint32(p[e:]), int(le.Uint32(p[e+4:])), int(le.Uint32(p[e+8:])), int(le.Uint32(p[e+12:]))
				vo := e + pos + ks
				if vo < 0 || vo+vs > len(p) || vs < 0 {
					continue
				}
				v := p[vo : vo+vs]
				if fl&boltBucketFlag != 0 {
					if len(v) < 16 {
						continue
					}
					if root := le.Uint64(v); root != 0 {
						walk(root, depth+1)
					} else {
						walkPage(v[16:], depth+1)
					}
					continue
				}
				markersIn(v, found)
			}
		}
	}
	walk = func(id uint64, depth int) {
		if seen[id] || id < 2 || id >= m.hwm {
			return
		}
		seen[id] = true
		off := int(id) * ps
		if off+boltPageHeader > len(b) || le.Uint64(b[off:]) != id {
			return
		}
		end := off + (1+int(le.Uint32(b[off+12:])))*ps
		if end > len(b) {
			return // the page runs past the end: lost
		}
		walkPage(b[off:end], depth)
	}
	walk(m.root, 0)
	return found, m, true
}

// ---- opening damaged files, in a child process ----

// A damaged file can crash the process (bbolt reads its memory map: a page
// past the end of the file is a SIGBUS, which Go cannot recover), so each
// damaged file is opened by a child process: runCorruptionChild.

const corruptEnvPath = "FERRY_SPOOL_CORRUPT_PATH"

type corruptResult struct {
	OpenErr      string
	Corruption   bool // the error is a *CorruptionError
	Salvaged     bool
	Damaged      string
	Cause        string
	Kept, Lost   int
	RawScan      bool
	Found        map[int]int // intact payloads: times seen (queue and DLQ)
	Garbled      int         // leased records that are not intact payloads
	Dead         int         // dead letters that are not intact payloads
	WorkErr      string      // Put/Lease after Open failed
	CloseErr     string
	FinishedOpen bool
}

// runCorruptionChild is the child process of TestCorruption (TestMain runs
// it when corruptEnvPath is set): it opens the file named by the
// environment, prints what it found as one JSON corruptResult line and
// exits with status 0. It never returns.
func runCorruptionChild() {
	r := openDamaged(os.Getenv(corruptEnvPath))
	if err := json.NewEncoder(os.Stdout).Encode(&r); err != nil {
		fmt.Fprintf(os.Stderr, "encode: %v\n", err)
		os.Exit(2)
	}
	os.Exit(0)
}

// openDamaged opens path and looks at what it holds; a panic is a result
// too (the child must not crash, but it must say so).
func openDamaged(path string) (r corruptResult) {
	defer func() {
		if p := recover(); p != nil {
			r.OpenErr = fmt.Sprintf("panic: %v", p)
		}
	}()
	s, err := spool.Open(path, spool.Options{Verify: spool.VerifyAlways, LowerLaneShare: -1, LeaseTimeout: time.Hour})
	r.FinishedOpen = true
	if err != nil {
		r.OpenErr = err.Error()
		var ce *spool.CorruptionError
		r.Corruption = errors.As(err, &ce)
		return r
	}
	if rep := s.Salvaged(); rep != nil {
		r.Salvaged, r.Damaged, r.Kept, r.Lost, r.RawScan = true, rep.Damaged, rep.Kept, rep.Lost, rep.RawScan
		r.Cause = rep.Cause
	}
	r.Found, r.Garbled, r.Dead, err = contents(s)
	if err == nil {
		err = working(s)
	}
	if err != nil {
		r.WorkErr = err.Error()
	}
	if err := s.Close(); err != nil {
		r.CloseErr = err.Error()
	}
	return r
}

// openInChild opens path in a child process and returns what it found.
func openInChild(t *testing.T, path string) corruptResult {
	t.Helper()
	c := testkit.StartChild(t, corruptEnvPath+"="+path)
	err := c.Wait() // a hang guard: the child is killed if it never finishes
	var r corruptResult
	jerr := errors.New("no result line")
	for _, line := range c.Lines() {
		if strings.HasPrefix(line, "{") {
			jerr = json.Unmarshal([]byte(line), &r)
			break
		}
	}
	if jerr != nil || err != nil {
		t.Fatalf("the process opening the damaged file died (%v): it must not crash; stderr:\n%s", err, crashSummary(c.Stderr()))
	}
	return r
}

// crashSummary keeps the reason of a crash and the functions on the stack
// of the goroutine that crashed.
func crashSummary(stderr string) string {
	if i := strings.Index(stderr, "WARNING: DATA RACE"); i >= 0 {
		var out []string
		for _, l := range strings.Split(stderr[i:], "\n") {
			if strings.HasPrefix(l, "==================") {
				break
			}
			if !strings.Contains(l, ".go:") && strings.TrimSpace(l) != "" {
				out = append(out, l)
			}
		}
		return strings.Join(out[:min(len(out), 40)], "\n")
	}
	var out []string
	inStack := false
	for _, l := range strings.Split(stderr, "\n") {
		switch {
		case strings.HasPrefix(l, "panic:"), strings.HasPrefix(l, "fatal error:"), strings.HasPrefix(l, "[signal"),
			strings.HasPrefix(l, "WARNING: DATA RACE"):
			out = append(out, l)
		case strings.HasPrefix(l, "goroutine ") && !inStack && len(out) > 0:
			inStack = true
		case inStack && l == "":
			return strings.Join(out, "\n")
		case inStack && !strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "runtime.") && !strings.HasPrefix(l, "panic("):
			out = append(out, "  "+l)
		}
		if len(out) > 25 {
			break
		}
	}
	if len(out) == 0 && len(stderr) > 2000 {
		stderr = stderr[:2000] + "..."
	} else if len(out) > 0 {
		return strings.Join(out, "\n")
	}
	return stderr
}

// contents leases everything and lists the DLQ: the intact payloads found,
// how many leased records are not intact payloads and how many dead letters
// are not intact payloads.
func contents(s *spool.Spool) (found map[int]int, garbled, dead int, err error) {
	found = map[int]int{}
	for range 1000 {
		items, err := s.TryLease(500)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("TryLease: %w", err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			m := map[int]bool{}
			markersIn(it.Data, m)
			if len(m) != 1 || len(it.Data) != 100 {
				garbled++
				continue
			}
			for i := range m {
				found[i]++
			}
		}
	}
	var after uint64
	for range 1000 {
		d, err := s.DLQ(after, 500)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("DLQ: %w", err)
		}
		if len(d) == 0 {
			break
		}
		for _, x := range d {
			m := map[int]bool{}
			markersIn(x.Data, m)
			if len(m) == 1 && len(x.Data) == 100 {
				for i := range m {
					found[i]++
				}
			} else {
				dead++
			}
			after = x.ID
		}
	}
	return found, garbled, dead, nil
}

// working checks that s accepts and hands out a new message.
func working(s *spool.Spool) error {
	if _, err := s.Put(context.Background(), spool.Entry{Data: []byte("after-open")}); err != nil {
		return fmt.Errorf("Put into the opened spool: %w", err)
	}
	for range 1000 {
		items, err := s.TryLease(500)
		if err != nil {
			return fmt.Errorf("TryLease: %w", err)
		}
		for _, it := range items {
			if string(it.Data) == "after-open" {
				return nil
			}
		}
		if len(items) == 0 {
			break
		}
	}
	return errors.New("the message put after opening is not leasable")
}

// rawReadable returns the payloads whose bytes are intact in whole pages of
// b: what a salvage that scans raw pages can keep.
func rawReadable(b []byte, ps int) map[int]bool {
	found := map[int]bool{}
	markersIn(b[:len(b)/ps*ps], found)
	return found
}

func TestCorruption(t *testing.T) {
	seed := testSeed(t)
	tests := []struct {
		name string
		// damage returns the damaged file.
		damage func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte
		// mustOpen: Open must succeed (not a *CorruptionError) and keep
		// every payload readable by a tree walk or in whole pages.
		mustOpen bool
		minKept  int // payloads that must survive
	}{
		{
			name: "meta page 0 zeroed", mustOpen: true, minKept: corruptMessages,
			damage: func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte {
				clear(b[:ps])
				return b
			},
		},
		{
			name: "meta page 1 zeroed", mustOpen: true, minKept: corruptMessages,
			damage: func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte {
				clear(b[ps : 2*ps])
				return b
			},
		},
		{
			name: "truncated tail, page aligned", mustOpen: true,
			damage: func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte {
				return b[:int(m.hwm)*ps*3/4/ps*ps]
			},
		},
		{
			name: "truncated tail, mid page", mustOpen: true,
			damage: func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte {
				return b[:int(m.hwm)*ps*2/3+ps/3]
			},
		},
		{
			name: "both meta pages zeroed",
			damage: func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte {
				clear(b[:2*ps])
				return b
			},
		},
	}
	for i := range 6 {
		tests = append(tests, struct {
			name     string
			damage   func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte
			mustOpen bool
			minKept  int
		}{
			name: fmt.Sprintf("flipped bytes %d", i),
			damage: func(t *testing.T, b []byte, m boltMeta, ps int, rng *rand.Rand) []byte {
				for range 3 {
					page := 2 + rng.IntN(int(m.hwm)-2)
					for range 8 {
						b[page*ps+rng.IntN(ps)] ^= byte(1 + rng.IntN(255))
					}
					t.Logf("flipped 8 bytes in page %d", page)
				}
				return b
			},
		})
	}
	_, pristine := makeCorruptSpool(t)
	all, meta, ok := boltReadable(pristine)
	if !ok || len(all) != corruptMessages+1 {
		t.Fatalf("the test's page reader finds %d of %d payloads in an intact file (valid meta: %v): the oracle is broken", len(all), corruptMessages+1, ok)
	}
	ps := int(meta.pageSize)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			path := filepath.Join(t.TempDir(), "spool.db")
			damaged := tt.damage(t, bytes.Clone(pristine), meta, ps, rng)
			if err := os.WriteFile(path, damaged, 0o600); err != nil {
				t.Fatal(err)
			}
			readable, _, _ := boltReadable(damaged)
			t.Logf("%d of %d payloads readable by walking the damaged tree", len(readable), len(all))

			if tt.mustOpen {
				for i := range rawReadable(damaged, ps) {
					readable[i] = true
				}
				t.Logf("%d payloads readable by the tree or in whole pages", len(readable))
			}

			r := openInChild(t, path)
			if r.OpenErr != "" {
				if tt.mustOpen || !r.Corruption {
					t.Fatalf("Open: %s; want a salvaged spool%s", r.OpenErr, map[bool]string{false: " or a *CorruptionError", true: ""}[tt.mustOpen])
				}
				if !strings.Contains(r.OpenErr, path) {
					t.Fatalf("error %q does not name the path %s", r.OpenErr, path)
				}
				t.Logf("Open: %s", r.OpenErr)
				return
			}
			t.Logf("found %d payloads, %d garbled, %d other dead letters; salvaged %v: kept %d lost %d raw scan %v cause %q",
				len(r.Found), r.Garbled, r.Dead, r.Salvaged, r.Kept, r.Lost, r.RawScan, r.Cause)
			if r.WorkErr != "" || r.CloseErr != "" {
				t.Errorf("the opened spool does not work: %s %s", r.WorkErr, r.CloseErr)
			}
			for i, n := range r.Found {
				if n > 1 {
					t.Errorf("payload %d found %d times", i, n)
				}
			}
			if r.Garbled > 0 {
				t.Errorf("Lease returned %d damaged payloads: records carry a CRC, damage must not be delivered", r.Garbled)
			}
			var missing []int
			for i := range readable {
				if r.Found[i] == 0 {
					missing = append(missing, i)
				}
			}
			slices.Sort(missing)
			if len(missing) > 0 && tt.mustOpen {
				t.Errorf("%d readable payloads missing after Open, e.g. %v", len(missing), missing[:min(5, len(missing))])
			}
			if len(r.Found) < tt.minKept {
				t.Errorf("kept %d payloads, want at least %d", len(r.Found), tt.minKept)
			}
			if !r.Salvaged && len(r.Found)+r.Dead < len(all) {
				t.Errorf("opened without a salvage report but %d of %d messages are gone: silent loss", len(all)-len(r.Found)-r.Dead, len(all))
			}
			if r.Salvaged {
				if r.Damaged == "" || r.Damaged == path {
					t.Errorf("SalvageReport.Damaged = %q: the damaged file must be moved aside", r.Damaged)
				} else if _, err := os.Stat(r.Damaged); err != nil {
					t.Errorf("damaged file not kept: %v", err)
				}
				if r.Cause == "" {
					t.Errorf("SalvageReport.Cause is nil")
				}
				if r.Kept != len(r.Found)+r.Dead {
					t.Errorf("SalvageReport.Kept = %d, but the spool holds %d messages", r.Kept, len(r.Found)+r.Dead)
				}
				if len(r.Found) == 0 {
					t.Errorf("salvage kept nothing")
				}
			}
		})
	}
}

func TestOpenNotASpool(t *testing.T) {
	tests := []struct {
		name  string
		write func(t *testing.T, path string)
		want  error // nil: ErrNotSpool or *CorruptionError
	}{
		{
			name: "random bytes",
			write: func(t *testing.T, path string) {
				rng := rand.New(rand.NewPCG(1, 2))
				b := make([]byte, 64<<10)
				for i := range b {
					b[i] = byte(rng.Uint32())
				}
				if err := os.WriteFile(path, b, 0o600); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "bbolt database of someone else",
			want: spool.ErrNotSpool,
			write: func(t *testing.T, path string) {
				db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				err = db.Update(func(tx *bolt.Tx) error {
					b, err := tx.CreateBucket([]byte("users"))
					if err != nil {
						return err
					}
					return b.Put([]byte("alice"), []byte("secret"))
				})
				if err != nil {
					t.Fatal(err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "spool.db")
			tt.write(t, path)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s, err := spool.Open(path, spool.Options{})
			if err == nil {
				s.Close()
				t.Fatalf("Open of a file that is not a spool succeeded (salvaged: %v)", s.Salvaged())
			}
			var ce *spool.CorruptionError
			switch {
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("Open: %v, want %v", err, tt.want)
			case tt.want == nil && !errors.Is(err, spool.ErrNotSpool) && !errors.As(err, &ce):
				t.Fatalf("Open: %v, want ErrNotSpool or *CorruptionError", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the path %s", err, path)
			}
			after, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(before, after) {
				t.Fatalf("Open changed or removed a file that is not a spool (read: %v)", err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Errorf("Open left files behind: %v", names)
			}
		})
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), spool.Entry{Data: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	// The failing Open waits for the lock in a synctest bubble: its
	// LockTimeout runs on virtual time, so how long it waited is exact and
	// does not depend on the machine's load. (It starts no goroutine: no
	// spool writer runs in the bubble.)
	const lockTimeout = time.Second
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		s2, err := spool.Open(path, spool.Options{LockTimeout: lockTimeout})
		waited := time.Since(start)
		if err == nil {
			s2.Close()
			t.Fatalf("second Open of a locked spool succeeded")
		}
		if !errors.Is(err, spool.ErrLocked) || !strings.Contains(err.Error(), path) {
			t.Fatalf("second Open: %v, want ErrLocked naming %s", err, path)
		}
		if waited < lockTimeout || waited >= 2*lockTimeout {
			t.Fatalf("second Open gave up after %v with LockTimeout %v", waited, lockTimeout)
		}
	})
	if t.Failed() {
		s.Close()
		t.FailNow()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = spool.Open(path, spool.Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after the holder closed: %v", err)
	}
	defer s.Close()
	items, err := s.TryLease(10)
	if err != nil || len(items) != 1 || string(items[0].Data) != "kept" {
		t.Fatalf("after the failed Open: %v, %v; want the one message", items, err)
	}
}
