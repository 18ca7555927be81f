// Package gcfloor keeps Go's garbage collector from running more often than
// a small heap needs.
//
// With GOGC=100 the collector runs each time the heap doubles its live
// part. Ferry's live heap is a few MiB (the spool is a memory-mapped file,
// not heap), so under load the collector ran every few milliseconds: about
// a fifth of the CPU per message at 8 publishers went to it (docs/benchmarks.md).
// A floor lets the heap grow to at least Floor bytes before a collection,
// and above that behaves as GOGC=100 does: the next target is
// max(2 × live, floor). Unlike GOGC=off with a memory limit, a live heap
// larger than the floor never makes the collector run back to back.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// heapMinimum is the runtime's smallest heap target at GOGC=100 (its
// defaultHeapMinimum, 4 MiB); it scales with GOGC, so a GOGC of p never
// targets less than heapMinimum × p/100, however small the live heap.
const heapMinimum = 4 << 20

// Percent is the GOGC value that puts the next heap target at
// max(2 × live, floor) bytes: 100 once live is half the floor or more, and
// never so high that the runtime's scaled minimum heap exceeds the floor.
func Percent(live, floor uint64) int {
	live = max(live, 1)
	if floor <= 2*live {
		return 100
	}
	return int(max(100, min((floor-live)*100/live, floor*100/heapMinimum)))
}

var once sync.Once

// Start keeps a heap floor of floor bytes for the rest of the process,
// retuning GOGC after every collection from the live heap that collection
// found. It does nothing when floor is 0 or when it already ran.
func Start(floor uint64) {
	if floor == 0 {
		return
	}
	once.Do(func() {
		// The first tuning is after the first collection: before it the
		// live heap is not known.
		t := &tuner{floor: floor, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		t.arm()
	})
}

type tuner struct {
	floor uint64

	mu      sync.Mutex // Start and the cleanup goroutine
	sample  []metrics.Sample
	percent int
}

// sentinel is garbage as soon as it is made: its cleanup runs after the
// next collection, retunes and makes the next one. It holds a pointer and
// is larger than the tiny allocator's 16 bytes, so that it is an object of
// its own (a tiny one could share a block and be kept alive by another).
type sentinel struct {
	_ *byte
	_ [24]byte
}

func (t *tuner) arm() {
	runtime.AddCleanup(&sentinel{}, func(t *tuner) {
		t.tune()
		t.arm()
	}, t)
}

func (t *tuner) tune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	metrics.Read(t.sample)
	var live uint64
	if t.sample[0].Value.Kind() == metrics.KindUint64 {
		live = t.sample[0].Value.Uint64()
	}
	if p := Percent(live, t.floor); p != t.percent {
		t.percent = p
		debug.SetGCPercent(p)
	}
}
