package spool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

// holdWriter makes the writer's next transaction wait until release is
// called; held is closed when the writer waits there, holding the
// operations it had taken.
func holdWriter(t *testing.T, s *Spool) (release func(), held <-chan struct{}) {
	t.Helper()
	entered, gate := make(chan struct{}), make(chan struct{})
	first := true
	hook := func() { // runs in the writer only
		if first {
			first = false
			close(entered)
			<-gate
		}
	}
	s.txnHook.Store(&hook)
	released := false
	release = func() {
		if !released {
			released = true
			s.txnHook.Store(nil)
			close(gate)
		}
	}
	t.Cleanup(release)
	return release, entered
}

func waitHeld(t *testing.T, held <-chan struct{}) {
	t.Helper()
	select {
	case <-held:
	case <-testkit.After(time.Minute):
		t.Fatal("hang guard: the writer never reached its transaction")
	}
}

// waitQueued waits until the writer has n operations waiting in its queue.
func waitQueued(t *testing.T, s *Spool, n int) {
	t.Helper()
	testkit.Wait(t, "operations queued for the writer", func() bool { return len(s.ops) >= n })
}

func leaseAll(t *testing.T, s *Spool) []string {
	t.Helper()
	items, err := s.TryLease(1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, it := range items {
		out = append(out, string(it.Data))
	}
	return out
}

// TestPutWithdrawnWhileQueued: a Put whose ctx ends while it waits for the
// writer is answered with ctx's error and never stored, and what was
// queued behind it still is.
func TestPutWithdrawnWhileQueued(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1})
	ctx := context.Background()
	release, held := holdWriter(t, s)
	first := s.PutAsync(ctx, Entry{Data: []byte("first")}) // the writer takes it and waits
	waitHeld(t, held)
	cctx, cancel := context.WithCancel(ctx)
	withdrawn := s.PutAsync(cctx, Entry{Data: []byte("withdrawn")})
	after := s.PutAsync(ctx, Entry{Data: []byte("after")})
	waitQueued(t, s, 2)
	cancel()
	if _, err := withdrawn(); !errors.Is(err, context.Canceled) || errors.Is(err, ErrFull) {
		t.Fatalf("withdrawn Put: %v, want context.Canceled", err)
	}
	release()
	for _, w := range []func() (PutResult, error){first, after} {
		if _, err := w(); err != nil {
			t.Fatal(err)
		}
	}
	if got := leaseAll(t, s); len(got) != 2 || got[0] != "first" || got[1] != "after" {
		t.Fatalf("stored %q, want [first after]: a withdrawn Put must never be stored", got)
	}
}

// TestPutWithdrawnWhileParked: under Block, a parked Put whose ctx ends is
// answered ErrFull wrapping ctx's error and is not stored when room frees
// later; a Put parked behind it is.
func TestPutWithdrawnWhileParked(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1, MaxMessages: 1, Overflow: Block, BlockTimeout: time.Hour})
	ctx := context.Background()
	if _, err := s.Put(ctx, Entry{Data: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	items, err := s.TryLease(1)
	if err != nil || len(items) != 1 {
		t.Fatalf("lease: %v %v", items, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	b := s.PutAsync(cctx, Entry{Data: []byte("b")})
	c := s.PutAsync(ctx, Entry{Data: []byte("c")})
	testkit.Wait(t, "both Puts parked", func() bool { return s.Stats().Full && len(s.ops) == 0 })
	cancel()
	_, err = b()
	if !errors.Is(err, ErrFull) || !errors.Is(err, context.Canceled) {
		t.Fatalf("parked Put whose ctx ended: %v, want ErrFull wrapping context.Canceled", err)
	}
	if err := s.Ack(ctx, items[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c(); err != nil {
		t.Fatalf("the Put parked behind the withdrawn one: %v", err)
	}
	if got := leaseAll(t, s); len(got) != 1 || got[0] != "c" {
		t.Fatalf("stored %q, want [c]", got)
	}
	if st := s.Stats(); st.Rejected != 1 {
		t.Errorf("Stats.Rejected = %d, want 1 (the withdrawn parked Put)", st.Rejected)
	}
}

// TestParkedPutDeadlineIsFull: a parked Put whose ctx deadline passes is
// told "full" by the spool itself, not only "deadline exceeded".
func TestParkedPutDeadlineIsFull(t *testing.T) {
	s := openTest(t, Options{MaxMessages: 1, Overflow: Block, BlockTimeout: time.Hour})
	if _, err := s.Put(t.Context(), Entry{Data: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Put(ctx, Entry{Data: []byte("b")})
	if !errors.Is(err, ErrFull) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put parked past its deadline: %v, want ErrFull wrapping context.DeadlineExceeded", err)
	}
	if s.Stats().Messages != 1 {
		t.Fatalf("%d messages stored, want 1", s.Stats().Messages)
	}
}

// TestRejectRefusesTheRestOfTheCommit: under Reject, once a Put of a
// transaction was refused, the later Puts of that transaction are refused
// too, even when an ack between them made room: a later message must not
// be stored ahead of an earlier refused one.
func TestRejectRefusesTheRestOfTheCommit(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1, MaxMessages: 2, Overflow: Reject})
	ctx := context.Background()
	for _, d := range []string{"a", "b"} {
		if _, err := s.Put(ctx, Entry{Data: []byte(d)}); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.TryLease(2)
	if err != nil || len(items) != 2 {
		t.Fatalf("lease: %v %v", items, err)
	}
	release, held := holdWriter(t, s)
	z := s.PutAsync(ctx, Entry{Data: []byte("z")}) // the writer takes it and waits; refused (full)
	waitHeld(t, held)
	x := s.PutAsync(ctx, Entry{Data: []byte("x")})
	waitQueued(t, s, 1)
	acked := make(chan error, 1)
	go func() { acked <- s.Ack(ctx, items[0].ID, items[1].ID) }()
	waitQueued(t, s, 2)
	y := s.PutAsync(ctx, Entry{Data: []byte("y")})
	waitQueued(t, s, 3)
	release() // x, the ack and y now go into one transaction, in that order
	if _, err := z(); !errors.Is(err, ErrFull) {
		t.Fatalf("z: %v, want ErrFull", err)
	}
	if _, err := x(); !errors.Is(err, ErrFull) {
		t.Fatalf("x: %v, want ErrFull", err)
	}
	if err := <-acked; err != nil {
		t.Fatal(err)
	}
	if _, err := y(); !errors.Is(err, ErrFull) {
		t.Fatalf("y, behind the refused x in the same commit: %v, want ErrFull", err)
	}
	if got := leaseAll(t, s); len(got) != 0 {
		t.Fatalf("stored %q after the refusal, want nothing", got)
	}
	// The next transaction starts afresh.
	if _, err := s.Put(ctx, Entry{Data: []byte("later")}); err != nil {
		t.Fatalf("a Put in a later transaction: %v", err)
	}
}

// TestEveryCommitIsSynced: in Sync durability every commit is fsync'd, acks
// and nacks included (an unsynced commit lets bbolt overwrite pages of the
// last durable state), and small acks share commits.
func TestEveryCommitIsSynced(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	for range 20 {
		if _, err := s.Put(ctx, Entry{Data: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.TryLease(20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Nack(ctx, items[0].ID); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, len(items)-1)
	for _, it := range items[1:] {
		go func() { done <- s.Ack(ctx, it.ID) }()
	}
	for range len(items) - 1 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.Syncs != 2*st.Commits { // bbolt's two per commit: pages, then the meta page
		t.Fatalf("%d commits, %d fsyncs: some commits were not fsync'd", st.Commits, st.Syncs)
	}
	t.Logf("20 puts (one at a time), 1 nack, 19 concurrent acks: %d commits", st.Commits)
	if st.Commits >= 20+1+19 {
		t.Errorf("%d commits: concurrent acks did not share commits", st.Commits)
	}
}
