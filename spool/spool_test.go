package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func openTest(t testing.TB, opts Options) *Spool {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "spool.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestPutLeaseAckOrder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{LowerLaneShare: -1})
	for i := range 30 {
		if _, err := s.Put(ctx, Entry{Priority: uint8(i % 3), Data: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.TryLease(100)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 30 {
		t.Fatalf("leased %d, want 30", len(items))
	}
	for i, it := range items {
		wantLane := uint8(i / 10)
		if it.Priority != wantLane {
			t.Fatalf("item %d lane %d, want %d", i, it.Priority, wantLane)
		}
		if i > 0 && items[i-1].Priority == it.Priority && items[i-1].ID >= it.ID {
			t.Fatalf("lane %d not FIFO: %d before %d", it.Priority, items[i-1].ID, it.ID)
		}
	}
	// Nothing more while leased.
	if more, _ := s.TryLease(10); len(more) != 0 {
		t.Fatalf("leased %d more while all are leased", len(more))
	}
	// Nack the first three of lane 0: they come back first, attempts 1.
	if err := s.Nack(ctx, items[0].ID, items[1].ID, items[2].ID); err != nil {
		t.Fatal(err)
	}
	again, _ := s.TryLease(10)
	if len(again) != 3 || again[0].ID != items[0].ID || again[2].ID != items[2].ID || again[0].Attempts != 1 {
		t.Fatalf("after nack got %+v", again)
	}
	var ids []uint64
	for _, it := range items {
		ids = append(ids, it.ID)
	}
	if err := s.Ack(ctx, ids...); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Messages != 0 || st.Leased != 0 || st.Acked != 30 || st.Accepted != 30 {
		t.Fatalf("stats after ack: %+v", st)
	}
}

func TestGroupCommitShares(t *testing.T) {
	s := openTest(t, Options{})
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				if _, err := s.Put(context.Background(), Entry{Data: fmt.Appendf(nil, "%d-%d", g, i)}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	if st.Accepted != 640 {
		t.Fatalf("accepted %d", st.Accepted)
	}
	if st.Commits >= 640 {
		t.Fatalf("%d commits for 640 concurrent puts: no group commit", st.Commits)
	}
	t.Logf("640 puts in %d commits", st.Commits)
}

func TestDedupeAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := s.Put(ctx, Entry{DedupeKey: "k", Data: []byte("a")})
	r2, _ := s.Put(ctx, Entry{DedupeKey: "k", Data: []byte("a")})
	if r1.Duplicate || !r2.Duplicate || r2.ID != r1.ID {
		t.Fatalf("dedupe: %+v %+v", r1, r2)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r3, _ := s.Put(ctx, Entry{DedupeKey: "k", Data: []byte("a")})
	if !r3.Duplicate {
		t.Fatal("dedupe index lost on reopen")
	}
	if st := s.Stats(); st.Messages != 1 {
		t.Fatalf("messages %d", st.Messages)
	}
}

// TestDedupeRecordOnly: a first send with a reused key (an MQTT packet id
// used again after its message was acknowledged) is stored and becomes
// what the key names; a later checking Put (the retransmit) with that key
// is the duplicate of the latest, not of the first.
func TestDedupeRecordOnly(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	r1, err := s.Put(ctx, Entry{DedupeKey: "pid-5", DedupeRecordOnly: true, Data: []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Put(ctx, Entry{DedupeKey: "pid-5", DedupeRecordOnly: true, Data: []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Duplicate || r2.Duplicate || r1.ID == r2.ID {
		t.Fatalf("first sends: %+v %+v (a reused key must never drop a new message)", r1, r2)
	}
	r3, err := s.Put(ctx, Entry{DedupeKey: "pid-5", Data: []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	if !r3.Duplicate || r3.ID != r2.ID {
		t.Fatalf("retransmit: %+v, want a duplicate of %d", r3, r2.ID)
	}
	if st := s.Stats(); st.Messages != 2 || st.DedupeEntries != 1 {
		t.Fatalf("messages %d dedupe entries %d, want 2 and 1", st.Messages, st.DedupeEntries)
	}
}

func TestFullPolicies(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		policy Overflow
		want   error
	}{{Reject, ErrFull}, {Block, ErrFull}, {DropOldest, nil}, {DropLowestPriority, nil}} {
		t.Run(fmt.Sprint(tc.policy), func(t *testing.T) {
			s := openTest(t, Options{MaxMessages: 5, Overflow: tc.policy, BlockTimeout: 50 * time.Millisecond})
			for i := range 5 {
				if _, err := s.Put(ctx, Entry{Priority: 5, Data: []byte{byte(i)}}); err != nil {
					t.Fatal(err)
				}
			}
			_, err := s.Put(ctx, Entry{Priority: 5, Data: []byte{9}})
			if !errors.Is(err, tc.want) {
				t.Fatalf("put when full: %v, want %v", err, tc.want)
			}
			st := s.Stats()
			if st.Messages != 5 {
				t.Fatalf("messages %d", st.Messages)
			}
			if tc.want == nil && st.Dropped[DropReasonOldest]+st.Dropped[DropReasonLowestPriority] != 1 {
				t.Fatalf("dropped %v", st.Dropped)
			}
		})
	}
}

// TestPutAsyncKeepsCallOrder: entries queued one after another by one
// goroutine are stored (and leased) in that order while all are in flight
// together, which is what a pipelining STOMP connection relies on for G3.
func TestPutAsyncKeepsCallOrder(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1})
	ctx := context.Background()
	// Other producers compete for the writer meanwhile.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.Put(ctx, Entry{Priority: 9, Data: []byte("noise")}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	var waits []func() (PutResult, error)
	for i := range 300 {
		waits = append(waits, s.PutAsync(ctx, Entry{Data: fmt.Appendf(nil, "%03d", i)}))
	}
	var last uint64
	for i, w := range waits {
		r, err := w()
		if err != nil {
			t.Fatal(err)
		}
		if r.ID <= last {
			t.Fatalf("entry %d got id %d after %d", i, r.ID, last)
		}
		last = r.ID
	}
	close(stop)
	wg.Wait()
	items, err := s.TryLease(300)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		if want := fmt.Sprintf("%03d", i); string(it.Data) != want {
			t.Fatalf("lease %d = %s, want %s", i, it.Data, want)
		}
	}
	if st := s.Stats(); st.Commits >= 300 {
		t.Errorf("%d commits for 300 pipelined puts: not grouped", st.Commits)
	}
}

// TestBitRotInOneRecord: a flipped byte inside one message is found at Open
// (every record carries a CRC over its key and value); the salvage keeps
// the other messages, counts exactly one lost, and does not need the raw
// page scan (which could resurrect delivered messages).
func TestBitRotInOneRecord(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if _, err := s.Put(ctx, Entry{Data: fmt.Appendf(nil, "message-%03d-payload", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("message-042-payload"))
	if i < 0 {
		t.Fatal("record not found in the file")
	}
	b[i+8] ^= 0x01 // "message-042" becomes "message-142"-ish: same length, bad CRC
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep := s.Salvaged()
	if rep == nil {
		t.Fatal("opened a file with a damaged record without salvaging it")
	}
	if rep.Kept != 99 || rep.Lost != 1 || rep.RawScan {
		t.Fatalf("report %+v, want kept 99, lost 1, no raw scan", rep)
	}
	if _, err := os.Stat(rep.Damaged); err != nil {
		t.Fatalf("damaged file not kept: %v", err)
	}
	items, _ := s.TryLease(200)
	if len(items) != 99 {
		t.Fatalf("leased %d, want 99", len(items))
	}
	for _, it := range items {
		if string(it.Data) == "message-042-payload" {
			t.Fatal("the damaged message came back")
		}
	}
}

// TestAddressSpace32: on a 32-bit platform a cap over 1 GiB, or none, is
// refused at Open rather than failing later when the map cannot grow.
func TestAddressSpace32(t *testing.T) {
	const max32 = 1<<31 - 1
	for _, tc := range []struct {
		maxBytes int64
		ok       bool
	}{{1 << 30, true}, {64 << 20, true}, {1<<30 + 1, false}, {-1, false}, {8 << 30, false}} {
		err := checkAddressSpace(tc.maxBytes, max32)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("max_bytes %d on 32-bit: %v", tc.maxBytes, err)
		}
		if err := checkAddressSpace(tc.maxBytes, int(^uint(0)>>1)); err != nil && strconv.IntSize == 64 {
			t.Errorf("max_bytes %d on 64-bit: %v", tc.maxBytes, err)
		}
	}
	if strconv.IntSize == 32 {
		if _, err := Open(filepath.Join(t.TempDir(), "s.db"), Options{MaxBytes: -1}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Open without a cap on 32-bit: %v", err)
		}
	}
}

// TestManyIntervalSpools: a gateway holds one spool per upstream, all in
// one process. In Interval durability each maps its file large up front
// (see repin); on 32-bit, where the whole process has 2–3 GiB of address
// space, six of them at 1 GiB each failed Open with ENOMEM (run it under
// make test-arm). Every spool opens and keeps its messages; those that got
// a map floor pin, the rest fsync every commit.
func TestManyIntervalSpools(t *testing.T) {
	ctx := context.Background()
	var spools []*Spool
	for i := range 6 {
		s, err := Open(filepath.Join(t.TempDir(), fmt.Sprintf("up%d.db", i)), Options{Durability: Interval, MaxBytes: 1 << 30})
		if err != nil {
			t.Fatalf("Open of interval spool %d of 6: %v", i+1, err)
		}
		t.Cleanup(func() { _ = s.Close() })
		spools = append(spools, s)
	}
	var mapped int64
	for _, s := range spools {
		mapped += s.mapFloor
	}
	if strconv.IntSize == 32 && mapped > mapBudget32 {
		t.Errorf("the spools map %d bytes up front, over the 32-bit budget of %d", mapped, mapBudget32)
	}
	for i, s := range spools {
		if _, err := s.Put(ctx, Entry{Data: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatalf("Put into spool %d: %v", i+1, err)
		}
		items, err := s.TryLease(10)
		if err != nil || len(items) != 1 || string(items[0].Data) != fmt.Sprintf("m%d", i) {
			t.Fatalf("spool %d leased %v, %v; want its one message", i+1, items, err)
		}
	}
}

// TestGrantFloor: on 32-bit the up-front maps of a process's Interval
// spools share one budget, at most mapShare32 each; a spool that would get
// no more than pinMargin gets nothing (it could never pin). 64-bit grants
// what is asked.
func TestGrantFloor(t *testing.T) {
	const max32, max64 = 1<<31 - 1, 1<<63 - 1
	for _, tc := range []struct {
		maxSize, used, want int64
	}{
		{max32, 0, mapShare32},                                      // a 1 GiB cap (ceiling clamped to maxInt): one share
		{max32, mapBudget32 - mapShare32, mapShare32},               // the last share
		{max32, mapBudget32, 0},                                     // none left
		{max32, mapBudget32 - pinMargin, 0},                         // too little left to pin
		{max32, mapBudget32 - pinMargin - 1<<20, pinMargin + 1<<20}, // what is left, if it can pin
		{128 << 20, 0, 128 << 20},                                   // a small ceiling: all of it
	} {
		if got := grantFloor(mapFloor(tc.maxSize, max32), tc.used, max32); got != tc.want {
			t.Errorf("32-bit, ceiling %d, %d used: floor %d, want %d", tc.maxSize, tc.used, got, tc.want)
		}
	}
	if got := grantFloor(mapFloor(8<<30, max64), 1<<40, max64); got != 8<<30 {
		t.Errorf("64-bit: floor %d, want the whole ceiling", got)
	}
	if got := grantFloor(mapFloor(0, max64), 0, max64); got != 64<<30 {
		t.Errorf("64-bit without a ceiling: floor %d, want 64 GiB", got)
	}
}
