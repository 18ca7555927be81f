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

	"github.com/ferrymq/ferry/internal/testkit"
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
	// The writer's housekeeping tick expires the lease (counted as one
	// Nack); wait until it did, so that the Nack below really comes after
	// the expiry however slow the machine.
	testkit.Wait(t, "the housekeeping tick to expire the lease", func() bool { return s.Stats().Nacked == 1 })
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
	// Only a hang guard: the Puts (DropOldest never blocks) end with it if
	// the writer hangs.
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(time.Minute))
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
	// A stress budget, not a bound on anything: a slower machine runs fewer
	// rounds, which can only make the test weaker, never fail it.
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
	// The block timeout must not answer the Put before Close does: an hour.
	s := openTest(t, Options{MaxMessages: 1, Overflow: Block, BlockTimeout: time.Hour})
	if _, err := s.Put(ctx, Entry{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := s.Put(ctx, Entry{Data: []byte("y")}); errc <- err }()
	// Stats.Full is set when the writer parks the Put for lack of room.
	testkit.Wait(t, "the second Put to be parked", func() bool { return s.Stats().Full })
	_ = s.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Put answered %v after Close, want ErrClosed", err)
		}
	case <-testkit.After(testkit.DefaultWait):
		t.Fatalf("hang guard: blocked Put not answered %v after Close", testkit.Timeout(testkit.DefaultWait))
	}
}
