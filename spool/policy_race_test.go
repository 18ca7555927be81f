package spool

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A drop policy must not delete messages for a Put it then refuses.
func TestDropOldestNeverDropsForARefusedPut(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{MaxBytes: 2000, Overflow: DropOldest})
	for range 5 {
		if _, err := s.Put(ctx, Entry{Data: bytes.Repeat([]byte("a"), 300)}); err != nil {
			t.Fatal(err)
		}
	}
	if items, _ := s.TryLease(4); len(items) != 4 {
		t.Fatalf("leased %d", len(items))
	}
	_, err := s.Put(ctx, Entry{Data: bytes.Repeat([]byte("b"), 700)})
	st := s.Stats()
	t.Logf("put err=%v messages=%d dropped=%v", err, st.Messages, st.Dropped)
	if errors.Is(err, ErrFull) && st.Messages < 5 {
		t.Fatalf("Put rejected with ErrFull but %d message(s) were dropped for it (messages %d)", 5-st.Messages, st.Messages)
	}
}

func TestDropLowestPriorityNeverDropsForARefusedPut(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{MaxBytes: 2000, Overflow: DropLowestPriority})
	if _, err := s.Put(ctx, Entry{Priority: 0, Data: bytes.Repeat([]byte("a"), 1000)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, Entry{Priority: 9, Data: bytes.Repeat([]byte("z"), 300)}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Put(ctx, Entry{Priority: 0, Data: bytes.Repeat([]byte("b"), 1000)})
	st := s.Stats()
	t.Logf("put err=%v lane9=%d dropped=%v", err, st.Lanes[9].Messages, st.Dropped)
	if errors.Is(err, ErrFull) && st.Lanes[9].Messages == 0 {
		t.Fatalf("Put rejected with ErrFull but the lane-9 message was dropped for it")
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// A Nack after the lease already expired must not count the failure twice.
func TestNackAfterLeaseExpiryCountsOnce(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s := openTest(t, Options{LeaseTimeout: time.Second, Now: clk.Now})
	if _, err := s.Put(ctx, Entry{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	a, _ := s.TryLease(1)
	clk.Add(2 * time.Second)
	time.Sleep(300 * time.Millisecond) // the writer's housekeeping tick expires the lease
	if err := s.Nack(ctx, a[0].ID); err != nil {
		t.Fatal(err)
	}
	b, _ := s.TryLease(1)
	st := s.Stats()
	t.Logf("attempts=%d nacked=%d", b[0].Attempts, st.Nacked)
	if b[0].Attempts != 1 || st.Nacked != 1 {
		t.Fatalf("one failed delivery counted as attempts=%d nacked=%d", b[0].Attempts, st.Nacked)
	}
}

// DropOldest must never evict a message that a concurrent Lease hands out.
func TestDropPolicyNeverEvictsWhatLeaseHandsOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	s := openTest(t, Options{MaxMessages: 64, Overflow: DropOldest, LowerLaneShare: -1, Durability: Interval})
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				_, _ = s.Put(ctx, Entry{Data: []byte("payload")})
			}
		}()
	}
	lost := 0
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && lost == 0 {
		items, err := s.TryLease(8)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			var present bool
			_ = s.view(func(tx *bolt.Tx) error {
				present = tx.Bucket(bktLanes[it.Priority]).Get(u64(it.ID)) != nil
				return nil
			})
			if !present {
				lost++
				t.Logf("leased message %d was deleted by the drop policy while leased", it.ID)
			}
		}
		ids := make([]uint64, len(items))
		for i, it := range items {
			ids[i] = it.ID
		}
		before := s.Stats().Acked
		_ = s.Ack(ctx, ids...)
		if d := s.Stats().Acked - before; d != uint64(len(ids)) {
			lost += len(ids) - int(d)
			t.Logf("acked %d leased ids, only %d were still there", len(ids), d)
		}
		time.Sleep(200 * time.Microsecond)
	}
	stop.Store(true)
	wg.Wait()
	st := s.Stats()
	t.Logf("dropped=%v acked=%d", st.Dropped, st.Acked)
	if lost > 0 {
		t.Fatalf("%d leased message(s) were evicted", lost)
	}
}

// A Put blocked on a full spool under Block is answered ErrClosed by Close.
func TestBlockedPutAnsweredByClose(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{MaxMessages: 1, Overflow: Block, BlockTimeout: 3 * time.Second})
	if _, err := s.Put(ctx, Entry{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := s.Put(ctx, Entry{Data: []byte("y")}); errc <- err }()
	time.Sleep(100 * time.Millisecond)
	t0 := time.Now()
	_ = s.Close()
	err := <-errc
	t.Logf("blocked Put returned %v after Close, %s later", err, time.Since(t0).Round(time.Millisecond))
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed promptly, got %v", err)
	}
}
