package spool

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
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

// BenchmarkDrain measures Lease+Ack of a 100k backlog, as the bridge does it:
// lease up to a window, ack what came back; acks are not waited for before
// leasing more (the lease already hides the messages), so ack commits
// overlap with leasing.
func BenchmarkDrain(b *testing.B) {
	for _, window := range []int{64, 256} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			s := openTest(b, Options{MaxBytes: -1})
			ctx := context.Background()
			n, total := 100_000, time.Duration(0)
			drained := 0
			for b.Loop() {
				b.StopTimer()
				putConcurrently(b, s, 64, n)
				b.StartTimer()
				start := time.Now()
				drained += drain(b, s, window)
				total += time.Since(start)
			}
			_ = ctx
			b.ReportMetric(float64(drained)/total.Seconds(), "msgs/s")
			b.ReportMetric(0, "ns/op")
		})
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
	for {
		items, err := s.TryLease(window)
		if err != nil {
			tb.Fatal(err)
		}
		if len(items) == 0 {
			if s.Stats().Leased == 0 {
				return n
			}
			time.Sleep(100 * time.Microsecond) // acks still committing
			continue
		}
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
// 7.7× (DESIGN.md §4); the hashmap freelist keeps it flat.
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
