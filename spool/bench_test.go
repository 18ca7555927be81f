package spool

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

var payload256 = make([]byte, 256)

// putConcurrently puts n entries from p goroutines.
func putConcurrently(tb testing.TB, s *Spool, p, n int) {
	tb.Helper()
	var wg sync.WaitGroup
	per := n / p
	for g := range p {
		extra := 0
		if g == 0 {
			extra = n - per*p
		}
		wg.Go(func() {
			for range per + extra {
				if _, err := s.Put(context.Background(), Entry{Priority: uint8(g % 3), Data: payload256}); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkPutSync measures durable Puts (each fsync'd before it returns)
// with 1, 8 and 64 concurrent producers. With one producer every message is
// its own transaction: that is the baseline group commit is compared with.
func BenchmarkPutSync(b *testing.B) {
	for _, p := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("producers=%d", p), func(b *testing.B) {
			s := openTest(b, Options{MaxBytes: -1})
			block := 64 * p // each producer puts 64 per iteration: steady state, small tail
			start := time.Now()
			n := 0
			for b.Loop() {
				putConcurrently(b, s, p, block)
				n += block
			}
			el := time.Since(start)
			st := s.Stats()
			b.ReportMetric(float64(n)/el.Seconds(), "msgs/s")
			b.ReportMetric(float64(st.CommitOps)/float64(st.Commits), "msgs/commit")
			b.ReportMetric(float64(st.Syncs)/float64(n), "fsyncs/msg")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkDrainSerialAcks measures Lease+Ack of a 100k backlog with one
// Ack call per lease call (up to four queued, one in flight). Every Ack
// waits for its fsync'd commit, so this is bounded by window / commit
// latency; the bridge acks as BenchmarkDrain does.
func BenchmarkDrainSerialAcks(b *testing.B) {
	for _, window := range []int{64, 256} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			s := openTest(b, Options{MaxBytes: -1})
			ctx := context.Background()
			n, total := 100_000, time.Duration(0)
			drained := 0
			var syncs uint64
			for b.Loop() {
				b.StopTimer()
				putConcurrently(b, s, 64, n)
				st0 := s.Stats()
				b.StartTimer()
				start := time.Now()
				drained += drain(b, s, window)
				total += time.Since(start)
				syncs += s.Stats().Syncs - st0.Syncs
			}
			_ = ctx
			b.ReportMetric(float64(drained)/total.Seconds(), "msgs/s")
			b.ReportMetric(float64(syncs)/float64(drained), "fsyncs/msg")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkDrain measures Lease+Ack of a 100k backlog as the bridge does
// it (bridge.ackLoop): lease up to a window at a time; ids acknowledged
// upstream collect while one Ack call is in flight and go to the spool
// together in the next. It reports the fsyncs per drained message.
func BenchmarkDrain(b *testing.B) {
	for _, window := range []int{64, 256} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			s := openTest(b, Options{MaxBytes: -1})
			n, total := 100_000, time.Duration(0)
			drained := 0
			var syncs, commits uint64
			for b.Loop() {
				b.StopTimer()
				putConcurrently(b, s, 64, n)
				st0 := s.Stats()
				b.StartTimer()
				start := time.Now()
				drained += drainBridge(b, s, window)
				total += time.Since(start)
				b.StopTimer()
				st1 := s.Stats()
				syncs += st1.Syncs - st0.Syncs
				commits += st1.Commits - st0.Commits
				b.StartTimer()
			}
			b.ReportMetric(float64(drained)/total.Seconds(), "msgs/s")
			b.ReportMetric(float64(syncs)/float64(drained), "fsyncs/msg")
			b.ReportMetric(float64(drained)/float64(commits), "msgs/commit")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// drainBridge leases up to window at a time and acks like bridge.ackLoop:
// one Ack call at a time, carrying every id acknowledged meanwhile.
func drainBridge(tb testing.TB, s *Spool, window int) int {
	tb.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	var pending []uint64
	sig := make(chan struct{}, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	flush := func() {
		mu.Lock()
		ids := pending
		pending = nil
		mu.Unlock()
		if len(ids) > 0 {
			if err := s.Ack(ctx, ids...); err != nil {
				tb.Error(err)
			}
		}
	}
	wg.Go(func() {
		for {
			select {
			case <-sig:
				flush()
			case <-stop:
				flush()
				return
			}
		}
	})
	n := 0
	for {
		items, err := s.TryLease(window)
		if err != nil {
			tb.Fatal(err)
		}
		if len(items) == 0 {
			close(stop) // everything is leased: the last Ack call, then done
			wg.Wait()
			return n
		}
		mu.Lock()
		for _, it := range items {
			pending = append(pending, it.ID)
		}
		mu.Unlock()
		select {
		case sig <- struct{}{}:
		default:
		}
		n += len(items)
	}
}

func drain(tb testing.TB, s *Spool, window int) int {
	tb.Helper()
	ctx := context.Background()
	n := 0
	acks := make(chan []uint64, 4) // bounded: at most 4 ack calls outstanding
	var wg sync.WaitGroup
	wg.Go(func() {
		for ids := range acks {
			if err := s.Ack(ctx, ids...); err != nil {
				tb.Error(err)
			}
		}
	})
	defer wg.Wait()
	defer close(acks)
	// A hang guard: the loop ends when the spool is drained, or fails when
	// the leased messages stop being acked (a failed Ack leaves them leased).
	guard := testkit.Timeout(time.Minute)
	progress := time.Now()
	for {
		items, err := s.TryLease(window)
		if err != nil {
			tb.Fatal(err)
		}
		if len(items) == 0 {
			if s.Stats().Leased == 0 {
				return n
			}
			if time.Since(progress) > guard {
				tb.Fatalf("hang guard: %d messages still leased, no progress for %v", s.Stats().Leased, guard)
			}
			time.Sleep(100 * time.Microsecond) // acks still committing
			continue
		}
		progress = time.Now()
		ids := make([]uint64, len(items))
		for i, it := range items {
			ids[i] = it.ID
		}
		acks <- ids
		n += len(items)
	}
}

// fill1M builds a spool with a million 256-byte messages (Interval
// durability: this is set-up, not what is measured).
func fill1M(b *testing.B, path string) {
	b.Helper()
	s, err := Open(path, Options{Durability: Interval, MaxBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	putConcurrently(b, s, 64, 1_000_000)
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkOpen1M measures Open+Close of a spool holding 1M messages.
func BenchmarkOpen1M(b *testing.B) {
	if testing.Short() {
		b.Skip("fills 1M messages")
	}
	path := filepath.Join(b.TempDir(), "big.db")
	fill1M(b, path)
	var openTime time.Duration
	opens := 0
	for b.Loop() {
		start := time.Now()
		s, err := Open(path, Options{MaxBytes: -1})
		if err != nil {
			b.Fatal(err)
		}
		openTime += time.Since(start)
		opens++
		if st := s.Stats(); st.Messages != 1_000_000 {
			b.Fatalf("reopened with %d messages", st.Messages)
		}
		_ = s.Close()
	}
	b.ReportMetric(openTime.Seconds()/float64(opens)*1000, "ms/open")
}

// BenchmarkChurnAfterDrain drains a 1M backlog, then measures steady
// put→lease→ack churn: with bbolt's default array freelist this slowed down
// 7.7× (docs/design.md §4); the hashmap freelist keeps it flat.
func BenchmarkChurnAfterDrain(b *testing.B) {
	if testing.Short() {
		b.Skip("fills 1M messages")
	}
	path := filepath.Join(b.TempDir(), "churn.db")
	fill1M(b, path)
	s, err := Open(path, Options{MaxBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	drain(b, s, 1024)
	const block = 2048
	n := 0
	start := time.Now()
	for b.Loop() {
		putConcurrently(b, s, 64, block)
		n += drain(b, s, 256)
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkPutPaced measures durable Puts at a fixed rate below what the
// spool can take: 8 producers × 250 msg/s, offset in phase (bench-compare's
// fixed 2,000 msg/s). Most commits hold one or two messages, so this is the
// writer's cost per commit, linger included: cpu_us/msg is the process's
// CPU per message (on a shared machine steadier than any wall-clock
// figure). One iteration is 50 messages per producer (0.2 s).
func BenchmarkPutPaced(b *testing.B) {
	const producers, rate, per = 8, 250, 50
	s := openTest(b, Options{MaxBytes: -1})
	interval := time.Second / rate
	n := 0
	cpu0 := benchCPU()
	for b.Loop() {
		var wg sync.WaitGroup
		for g := range producers {
			wg.Go(func() {
				next := time.Now().Add(interval * time.Duration(g) / producers)
				for range per {
					time.Sleep(time.Until(next))
					next = next.Add(interval)
					if _, err := s.Put(context.Background(), Entry{Data: payload256}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		n += producers * per
	}
	st := s.Stats()
	b.ReportMetric(float64((benchCPU()-cpu0).Nanoseconds())/1e3/float64(n), "cpu_us/msg")
	b.ReportMetric(float64(st.CommitOps)/float64(st.Commits), "msgs/commit")
	b.ReportMetric(0, "ns/op")
}

// benchCPU is the user+system CPU this process used so far.
func benchCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPutDedupe measures durable Puts of gateway messages that carry
// the dedupe key the default route gives a QoS 1 MQTT message, from 64
// producers: below the dedupe cap, and at it (every Put then also forgets
// the oldest key), which is where a gateway that takes more than
// DedupeMaxEntries messages per DedupeWindow runs all the time.
func BenchmarkPutDedupe(b *testing.B) {
	for _, tc := range []struct {
		name string
		cap  int
	}{{"below-cap", 1_000_000}, {"at-cap", 5_000}} {
		b.Run(tc.name, func(b *testing.B) {
			s := openTest(b, Options{MaxBytes: -1, DedupeMaxEntries: tc.cap})
			next := 0
			// fill puts n new messages, built beforehand: the CPU it
			// returns is the spool's and its 64 callers', not the
			// building's (hashing, encoding).
			fill := func(n int) int64 {
				es := make([]Entry, n)
				for i := range es {
					es[i] = gatewayEntry(next+i, time.Now(), 256)
				}
				next += n
				var r0, r1 syscall.Rusage
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
				fillWith(b, s, n, func(i int) Entry { return es[i] })
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
				return r1.Utime.Nano() - r0.Utime.Nano() + r1.Stime.Nano() - r0.Stime.Nano()
			}
			if tc.cap < 1_000_000 {
				fill(2 * tc.cap) // at the cap from here on
			}
			var cpu, el time.Duration
			n := 0
			for b.Loop() {
				start := time.Now()
				cpu += time.Duration(fill(64 * 64))
				el += time.Since(start)
				n += 64 * 64
			}
			b.ReportMetric(float64(n)/el.Seconds(), "msgs/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-us/msg")
			b.ReportMetric(0, "ns/op")
		})
	}
}
