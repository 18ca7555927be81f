package spool_test

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
)

// TestMemoryBounded puts 1,000,000 messages of 64 bytes and checks that the
// Go heap in use stays under a fixed bound while they are spooled (G6: the
// backlog lives on disk, not in RAM).
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("1M-message memory test: skipped under -short")
	}
	const (
		producers = 64
		size      = 64
	)
	// A hang guard for the Puts, not a speed requirement.
	budget := testkit.Timeout(3 * time.Minute)
	// 1M messages under 64 MiB: 67 bytes of heap per spooled message would
	// already break it. The race detector makes bbolt about 8x slower, so
	// under -race the test puts a quarter and keeps the same slope (16 MiB);
	// FERRY_SPOOL_MEMORY_MESSAGES overrides the count.
	total, heapLimit := int64(1_000_000), uint64(64<<20)
	if raceEnabled() {
		total, heapLimit = 250_000, 16<<20
	}
	if v := os.Getenv("FERRY_SPOOL_MEMORY_MESSAGES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			t.Fatalf("FERRY_SPOOL_MEMORY_MESSAGES=%q", v)
		}
		total, heapLimit = n, max(16<<20, uint64(n)*67)
	}
	t.Logf("putting %d messages, heap bound %d MiB (race detector: %v)", total, heapLimit>>20, raceEnabled())
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{Durability: spool.Interval, MaxBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	base := heap()
	var peak atomic.Uint64
	peak.Store(base)
	ctx, cancel := context.WithTimeout(t.Context(), budget)
	defer cancel()
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	for range producers {
		wg.Go(func() {
			data := make([]byte, size)
			for {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				binary.BigEndian.PutUint64(data, uint64(i))
				if _, err := s.Put(ctx, spool.Entry{Priority: uint8(i % spool.Lanes), Data: data}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// Sample the heap while the backlog grows. A slower machine takes more
	// samples; the end of the run is sampled in any case.
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for next.Load() < total && ctx.Err() == nil {
			time.Sleep(2 * time.Second)
			if h := heap(); h > peak.Load() {
				peak.Store(h)
			}
		}
	}()
	wg.Wait()
	<-sampled
	close(errs)
	for err := range errs {
		if ctx.Err() != nil {
			t.Fatalf("hang guard: Puts not done after %v (%d messages; %s=%g): %v", budget, next.Load(), testkit.ScaleEnv, testkit.Scale(), err)
		}
		t.Fatalf("Put after %d messages (%v): %v", next.Load(), time.Since(start).Round(time.Second), err)
	}
	elapsed := time.Since(start)
	end := heap()
	peak.Store(max(peak.Load(), end))
	st := s.Stats()
	t.Logf("%d messages in %v (%.0f msgs/s); heap in use: %d MiB at start, %d MiB at the end, %d MiB peak (sampled); file %d MiB; %d commits",
		st.Messages, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), base>>20, end>>20, peak.Load()>>20, st.FileSize>>20, st.Commits)
	if st.Messages != total {
		t.Fatalf("Stats.Messages = %d, want %d", st.Messages, total)
	}
	if peak.Load() > heapLimit {
		t.Fatalf("heap in use reached %d MiB with %d messages spooled, want under %d MiB: the backlog is held in memory",
			peak.Load()>>20, total, heapLimit>>20)
	}
	// Reopening must not load the backlog into memory either.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = spool.Open(path, spool.Options{MaxBytes: -1})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if h := heap(); h > heapLimit {
		t.Fatalf("heap in use %d MiB after reopening a 1M spool, want under %d MiB", h>>20, heapLimit>>20)
	}
	if items, err := s.TryLease(10); err != nil || len(items) != 10 {
		t.Fatalf("TryLease after reopen: %d items, %v", len(items), err)
	}
}

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}
