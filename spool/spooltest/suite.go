package spooltest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
)

// OpenFunc opens a fresh, empty queue with opts for one subtest. reopen
// closes the queue returned last (by open or by the previous reopen) and
// opens the same store again with the same opts, like a process restart:
// everything is kept except leases. The implementation closes the last queue
// in t.Cleanup (a second Close must be harmless).
type OpenFunc func(t *testing.T, opts spool.Options) (q Queue, reopen func() Queue)

// Run is the conformance suite: every implementation of the spool semantics
// must pass it.
func Run(t *testing.T, open OpenFunc) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open OpenFunc)
	}{
		{"PutValidation", testPutValidation},
		{"LeaseValidation", testLeaseValidation},
		{"FIFOWithinLane", testFIFOWithinLane},
		{"LanesHighestFirst", testLanesHighestFirst},
		{"LeaseHandsOutEachOnce", testLeaseHandsOutEachOnce},
		{"HigherLaneFirst", testHigherLaneFirst},
		{"LowerLaneShare", testLowerLaneShare},
		{"AckRemoves", testAckRemoves},
		{"NackOriginalPosition", testNackOriginalPosition},
		{"NackAcrossLanes", testNackAcrossLanes},
		{"LeaseTimeoutReturnsItems", testLeaseTimeout},
		{"LeaseBlocksUntilPut", testLeaseBlocks},
		{"LeaseContextCanceled", testLeaseContextCanceled},
		{"CloseWakesLease", testCloseWakesLease},
		{"ClosedErrors", testClosedErrors},
		{"DedupeWithinWindow", testDedupeWithinWindow},
		{"DedupeWindowExpires", testDedupeWindowExpires},
		{"DedupeAfterAck", testDedupeAfterAck},
		{"DedupeMaxEntries", testDedupeMaxEntries},
		{"DedupeOff", testDedupeOff},
		{"DedupeSurvivesReopen", testDedupeSurvivesReopen},
		{"TTLDrop", testTTLDrop},
		{"TTLDeadLetter", testTTLDeadLetter},
		{"MaxMessagesReject", testMaxMessagesReject},
		{"MaxMessagesBlockTimesOut", testBlockTimesOut},
		{"MaxMessagesBlockUnblocks", testBlockUnblocks},
		{"MaxMessagesBlockContext", testBlockContext},
		{"MaxMessagesDropOldest", testDropOldest},
		{"MaxMessagesDropLowestPriority", testDropLowestPriority},
		{"MaxBytes", testMaxBytes},
		{"DeadLetterAndDLQ", testDeadLetterAndDLQ},
		{"RequeueOriginalPosition", testRequeue},
		{"PurgeDLQ", testPurgeDLQ},
		{"RetainAndReplay", testRetainAndReplay},
		{"RetainExpires", testRetainExpires},
		{"ReplayWithoutRetention", testReplayWithoutRetention},
		{"StatsCounters", testStatsCounters},
		{"ReopenKeepsEverything", testReopenKeepsEverything},
		{"ConcurrentProducersConsumers", testConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open) })
	}
}

// ---- helpers ----

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// strict returns opts with strict priority, so that lease order is fully
// determined by lanes and ids.
func strict(opts spool.Options) spool.Options {
	opts.LowerLaneShare = -1
	return opts
}

func mustPut(t *testing.T, q Queue, e spool.Entry) spool.PutResult {
	t.Helper()
	r, err := q.Put(testCtx(t), e)
	if err != nil {
		t.Fatalf("Put(lane %d, %q): %v", e.Priority, e.Data, err)
	}
	return r
}

// putN puts data in lane and returns the new id.
func putN(t *testing.T, q Queue, lane uint8, data string) uint64 {
	t.Helper()
	r := mustPut(t, q, spool.Entry{Priority: lane, Data: []byte(data)})
	if r.Duplicate {
		t.Fatalf("Put(%q) without dedupe key reported a duplicate", data)
	}
	return r.ID
}

func tryLease(t *testing.T, q Queue, max int) []spool.Item {
	t.Helper()
	items, err := q.TryLease(max)
	if err != nil {
		t.Fatalf("TryLease(%d): %v", max, err)
	}
	if len(items) > max {
		t.Fatalf("TryLease(%d) returned %d items", max, len(items))
	}
	return items
}

// leaseAll leases until nothing is left and returns everything in order.
func leaseAll(t *testing.T, q Queue) []spool.Item {
	t.Helper()
	var all []spool.Item
	for range 100_000 {
		items := tryLease(t, q, 100)
		if len(items) == 0 {
			return all
		}
		all = append(all, items...)
	}
	t.Fatalf("leaseAll: queue does not run dry")
	return nil
}

func datas(items []spool.Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = string(it.Data)
	}
	return out
}

func ids(items []spool.Item) []uint64 {
	out := make([]uint64, len(items))
	for i, it := range items {
		out[i] = it.ID
	}
	return out
}

func wantData(t *testing.T, what string, items []spool.Item, want ...string) {
	t.Helper()
	if got := datas(items); !slices.Equal(got, want) {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

func mustAck(t *testing.T, q Queue, ids ...uint64) {
	t.Helper()
	if err := q.Ack(testCtx(t), ids...); err != nil {
		t.Fatalf("Ack(%v): %v", ids, err)
	}
}

func mustNack(t *testing.T, q Queue, ids ...uint64) {
	t.Helper()
	if err := q.Nack(testCtx(t), ids...); err != nil {
		t.Fatalf("Nack(%v): %v", ids, err)
	}
}

func dlq(t *testing.T, q Queue) []spool.DeadLetter {
	t.Helper()
	d, err := q.DLQ(0, 1000)
	if err != nil {
		t.Fatalf("DLQ: %v", err)
	}
	return d
}

// guard is the hang guard of the suite's waits: far longer than anything
// should take, scaled by FERRY_TEST_TIMEOUT_SCALE; reaching it is a hang.
const guard = 30 * time.Second

// eventually polls cond until it holds: implementations may do
// housekeeping (TTL sweeps) in the background. The wait is a hang guard.
func eventually(t *testing.T, what string, cond func() (ok bool, got string)) {
	t.Helper()
	deadline := time.Now().Add(testkit.Timeout(guard))
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s after %v (hang guard)", what, got, testkit.Timeout(guard))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// returns runs fn in a goroutine and fails the test if it does not return
// within the hang guard: a call that must not block forever.
func returns(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-testkit.After(guard):
		t.Fatalf("%s: did not return (hang guard %v)", what, testkit.Timeout(guard))
	}
}

// ---- validation ----

func testPutValidation(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{MaxMessageBytes: 16})
	tests := []struct {
		name string
		e    spool.Entry
		want error // nil: accepted
	}{
		{"priority 10", spool.Entry{Priority: 10, Data: []byte("x")}, spool.ErrInvalid},
		{"priority 255", spool.Entry{Priority: 255, Data: []byte("x")}, spool.ErrInvalid},
		{"nil data", spool.Entry{}, spool.ErrInvalid},
		{"empty data", spool.Entry{Data: []byte{}}, spool.ErrInvalid},
		{"too large", spool.Entry{Data: make([]byte, 17)}, spool.ErrTooLarge},
		{"dedupe key 1025 bytes", spool.Entry{Data: []byte("x"), DedupeKey: strings.Repeat("k", 1025)}, spool.ErrInvalid},
		{"largest message", spool.Entry{Priority: 9, Data: make([]byte, 16)}, nil},
		{"longest dedupe key", spool.Entry{Data: []byte("y"), DedupeKey: strings.Repeat("k", 1024)}, nil},
	}
	accepted := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := q.Put(testCtx(t), tt.e)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Put: %v, want success", err)
				}
				accepted++
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Put: err %v, want %v", err, tt.want)
			}
		})
	}
	if st := q.Stats(); st.Messages != int64(accepted) || st.Accepted != uint64(accepted) {
		t.Fatalf("Stats: Messages %d Accepted %d, want %d: a rejected Put stored something", st.Messages, st.Accepted, accepted)
	}
}

// Contract: Lease/TryLease with max <= 0 is an argument error (ErrInvalid),
// not an empty result.
func testLeaseValidation(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	putN(t, q, 0, "a")
	for _, max := range []int{0, -1} {
		if _, err := q.TryLease(max); !errors.Is(err, spool.ErrInvalid) {
			t.Errorf("TryLease(%d): err %v, want ErrInvalid", max, err)
		}
		if _, err := q.Lease(testCtx(t), max); !errors.Is(err, spool.ErrInvalid) {
			t.Errorf("Lease(%d): err %v, want ErrInvalid", max, err)
		}
	}
	wantData(t, "after invalid leases", tryLease(t, q, 10), "a")
}

// ---- ordering ----

func testFIFOWithinLane(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, spool.Options{Now: clk.Now})
	exp := clk.Now().Add(time.Hour)
	var want []string
	var last uint64
	for i := range 20 {
		d := fmt.Sprintf("m%02d", i)
		r := mustPut(t, q, spool.Entry{Priority: 3, Data: []byte(d), ExpiresAt: exp})
		if i > 0 && r.ID <= last {
			t.Fatalf("Put %d: id %d not above the previous id %d", i, r.ID, last)
		}
		last = r.ID
		want = append(want, d)
	}
	items := tryLease(t, q, 100)
	wantData(t, "lease order", items, want...)
	for i, it := range items {
		if it.Priority != 3 || it.Attempts != 0 || !it.EnqueuedAt.Equal(clk.Now()) || !it.ExpiresAt.Equal(exp) {
			t.Fatalf("item %d = {Priority %d Attempts %d EnqueuedAt %v ExpiresAt %v}, want {3 0 %v %v}",
				i, it.Priority, it.Attempts, it.EnqueuedAt, it.ExpiresAt, clk.Now(), exp)
		}
		if i > 0 && it.ID <= items[i-1].ID {
			t.Fatalf("ids not increasing: %v", ids(items))
		}
	}
}

func testLanesHighestFirst(t *testing.T, open OpenFunc) {
	q, _ := open(t, strict(spool.Options{}))
	for i, lane := range []uint8{9, 0, 5, 0, 9, 5, 1} {
		putN(t, q, lane, fmt.Sprintf("l%d-%d", lane, i))
	}
	wantData(t, "lease order", leaseAll(t, q), "l0-1", "l0-3", "l1-6", "l5-2", "l5-5", "l9-0", "l9-4")
}

func testLeaseHandsOutEachOnce(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	for i := range 10 {
		putN(t, q, 0, fmt.Sprint(i))
	}
	wantData(t, "lease 1", tryLease(t, q, 4), "0", "1", "2", "3")
	wantData(t, "lease 2", tryLease(t, q, 4), "4", "5", "6", "7")
	wantData(t, "lease 3", tryLease(t, q, 4), "8", "9")
	wantData(t, "lease 4", tryLease(t, q, 4))
	if st := q.Stats(); st.Leased != 10 || st.Messages != 10 {
		t.Fatalf("Stats: Leased %d Messages %d, want 10 10", st.Leased, st.Messages)
	}
}

// Contract: the lower-lane share is a minimum over many leases; it never
// lets a lower lane go first: with one message in lane 0 and one in lane 5,
// the first lease is lane 0's, whatever the share.
func testHigherLaneFirst(t *testing.T, open OpenFunc) {
	for _, share := range []float64{0, 0.1, 0.5} {
		t.Run(fmt.Sprint("share ", share), func(t *testing.T) {
			q, _ := open(t, spool.Options{LowerLaneShare: share})
			putN(t, q, 5, "low")
			putN(t, q, 0, "high")
			wantData(t, "first lease", tryLease(t, q, 1), "high")
		})
	}
}

// Contract: the share is a share of leased messages, counted per message
// (not per Lease call), while both the higher and a lower lane have a
// backlog.
func testLowerLaneShare(t *testing.T, open OpenFunc) {
	tests := []struct {
		name     string
		share    float64
		batch    int
		leases   int
		minLower int
		maxLower int
	}{
		{"share 0.2 one at a time", 0.2, 1, 100, 10, 50},
		{"share 0.2 in batches of 10", 0.2, 10, 100, 10, 50},
		{"default share 0.1", 0, 1, 200, 10, 100},
		{"strict priority", -1, 10, 100, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := open(t, spool.Options{LowerLaneShare: tt.share})
			for i := range 300 {
				putN(t, q, 0, fmt.Sprintf("h%d", i))
			}
			for i := range 100 {
				putN(t, q, 9, fmt.Sprintf("l%d", i))
			}
			lower, leased := 0, 0
			for leased < tt.leases {
				items := tryLease(t, q, min(tt.batch, tt.leases-leased))
				if len(items) == 0 {
					t.Fatalf("TryLease returned nothing with a backlog")
				}
				for _, it := range items {
					if it.Priority == 9 {
						lower++
					}
				}
				leased += len(items)
				mustAck(t, q, ids(items)...)
			}
			t.Logf("lane 9 got %d of %d leases", lower, leased)
			if lower < tt.minLower || lower > tt.maxLower {
				t.Fatalf("lane 9 got %d of %d leased messages, want %d..%d", lower, leased, tt.minLower, tt.maxLower)
			}
		})
	}
}

// ---- ack / nack / lease expiry ----

func testAckRemoves(t *testing.T, open OpenFunc) {
	q, reopen := open(t, spool.Options{})
	a := putN(t, q, 0, "a")
	b := putN(t, q, 0, "b")
	putN(t, q, 0, "c")
	items := tryLease(t, q, 3)
	wantData(t, "lease", items, "a", "b", "c")
	mustAck(t, q, a, b)
	mustAck(t, q, 1<<60) // unknown ids are ignored
	st := q.Stats()
	if st.Messages != 1 || st.Acked != 2 || st.Leased != 1 {
		t.Fatalf("Stats after 2 acks: Messages %d Acked %d Leased %d, want 1 2 1", st.Messages, st.Acked, st.Leased)
	}
	wantData(t, "lease after ack", tryLease(t, q, 10))
	q = reopen()
	wantData(t, "after reopen", leaseAll(t, q), "c")
}

func testNackOriginalPosition(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	var id []uint64
	for _, d := range []string{"1", "2", "3", "4", "5"} {
		id = append(id, putN(t, q, 0, d))
	}
	wantData(t, "first lease", tryLease(t, q, 3), "1", "2", "3")
	mustNack(t, q, id[1])
	items := tryLease(t, q, 10)
	wantData(t, "after Nack(2)", items, "2", "4", "5")
	if items[0].Attempts != 1 || items[1].Attempts != 0 {
		t.Fatalf("Attempts = %d, %d, want 1, 0", items[0].Attempts, items[1].Attempts)
	}
	mustNack(t, q, id[2], id[0], 1<<60) // any order; unknown ignored
	items = tryLease(t, q, 10)
	wantData(t, "after Nack(3, 1)", items, "1", "3")
	for _, it := range items {
		if it.Attempts != 1 {
			t.Fatalf("item %s: Attempts %d, want 1", it.Data, it.Attempts)
		}
	}
	mustNack(t, q, id[0])
	items = tryLease(t, q, 1)
	wantData(t, "after second Nack(1)", items, "1")
	if items[0].Attempts != 2 {
		t.Fatalf("Attempts after two nacks = %d, want 2", items[0].Attempts)
	}
	if st := q.Stats(); st.Nacked != 4 {
		t.Fatalf("Stats.Nacked = %d, want 4", st.Nacked)
	}
}

func testNackAcrossLanes(t *testing.T, open OpenFunc) {
	q, _ := open(t, strict(spool.Options{}))
	a := putN(t, q, 5, "5a")
	putN(t, q, 5, "5b")
	wantData(t, "lease", tryLease(t, q, 1), "5a")
	putN(t, q, 0, "0a")
	putN(t, q, 5, "5c")
	mustNack(t, q, a)
	wantData(t, "after nack", leaseAll(t, q), "0a", "5a", "5b", "5c")
}

func testLeaseTimeout(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, spool.Options{Now: clk.Now, LeaseTimeout: 10 * time.Second})
	putN(t, q, 0, "a")
	putN(t, q, 0, "b")
	putN(t, q, 0, "c")
	wantData(t, "lease a, b", tryLease(t, q, 2), "a", "b")
	clk.Advance(5 * time.Second)
	wantData(t, "lease c at +5s", tryLease(t, q, 10), "c")
	clk.Advance(4 * time.Second)
	wantData(t, "nothing at +9s", tryLease(t, q, 10))
	clk.Advance(2 * time.Second) // a, b: 11s; c: 6s
	items := tryLease(t, q, 10)
	wantData(t, "a, b back at +11s", items, "a", "b")
	for _, it := range items {
		if it.Attempts != 1 {
			t.Fatalf("%s: Attempts %d after lease expiry, want 1", it.Data, it.Attempts)
		}
	}
	mustAck(t, q, items[0].ID)
	clk.Advance(5 * time.Second) // c: 11s, b (second lease): 5s
	items = tryLease(t, q, 10)
	wantData(t, "c back", items, "c")
	if st := q.Stats(); st.Nacked != 3 || st.Messages != 2 || st.Acked != 1 {
		t.Fatalf("Stats: Nacked %d Messages %d Acked %d, want 3 2 1", st.Nacked, st.Messages, st.Acked)
	}
}

func testLeaseBlocks(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	type res struct {
		items []spool.Item
		err   error
	}
	ch := make(chan res, 1)
	go func() {
		items, err := q.Lease(testCtx(t), 5)
		ch <- res{items, err}
	}()
	select {
	case r := <-ch:
		t.Fatalf("Lease on an empty queue returned %v, %v", r.items, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	putN(t, q, 4, "x")
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Lease: %v", r.err)
		}
		wantData(t, "Lease", r.items, "x")
	case <-testkit.After(guard):
		t.Fatalf("Lease still blocked after a Put (hang guard)")
	}
}

func testLeaseContextCanceled(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var items []spool.Item
	var err error
	returns(t, "Lease on an empty queue after its context ended", func() { items, err = q.Lease(ctx, 1) })
	if !errors.Is(err, context.DeadlineExceeded) || len(items) != 0 {
		t.Fatalf("Lease: %v, %v, want context.DeadlineExceeded", items, err)
	}
}

func testCloseWakesLease(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	ch := make(chan error, 1)
	go func() {
		_, err := q.Lease(testCtx(t), 1)
		ch <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-ch:
		if !errors.Is(err, spool.ErrClosed) {
			t.Fatalf("blocked Lease after Close: %v, want ErrClosed", err)
		}
	case <-testkit.After(guard):
		t.Fatalf("blocked Lease not woken by Close (hang guard)")
	}
}

func testClosedErrors(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	id := putN(t, q, 0, "a")
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := testCtx(t)
	checks := []struct {
		name string
		call func() error
	}{
		{"Put", func() error { _, err := q.Put(ctx, spool.Entry{Data: []byte("b")}); return err }},
		{"TryLease", func() error { _, err := q.TryLease(1); return err }},
		{"Lease", func() error { _, err := q.Lease(ctx, 1); return err }},
		{"Ack", func() error { return q.Ack(ctx, id) }},
		{"Nack", func() error { return q.Nack(ctx, id) }},
		{"DeadLetter", func() error { return q.DeadLetter(ctx, id, "x") }},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if err := c.call(); !errors.Is(err, spool.ErrClosed) {
				t.Fatalf("%s after Close: %v, want ErrClosed", c.name, err)
			}
		})
	}
}

// ---- dedupe ----

func testDedupeWithinWindow(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, spool.Options{Now: clk.Now, DedupeWindow: time.Minute})
	r1 := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("a")})
	clk.Advance(time.Second)
	r2 := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("b")})
	if r1.Duplicate || !r2.Duplicate || r2.ID != r1.ID {
		t.Fatalf("Put results %+v, %+v: want the second to be a duplicate of id %d", r1, r2, r1.ID)
	}
	r3 := mustPut(t, q, spool.Entry{DedupeKey: "other", Data: []byte("c")})
	r4 := mustPut(t, q, spool.Entry{Data: []byte("d")}) // no key: never a duplicate
	r5 := mustPut(t, q, spool.Entry{Data: []byte("d")})
	if r3.Duplicate || r4.Duplicate || r5.Duplicate {
		t.Fatalf("distinct or empty keys reported as duplicates: %+v %+v %+v", r3, r4, r5)
	}
	st := q.Stats()
	if st.Duplicates != 1 || st.Accepted != 4 || st.Messages != 4 || st.DedupeEntries != 2 {
		t.Fatalf("Stats: Duplicates %d Accepted %d Messages %d DedupeEntries %d, want 1 4 4 2",
			st.Duplicates, st.Accepted, st.Messages, st.DedupeEntries)
	}
	wantData(t, "contents", leaseAll(t, q), "a", "c", "d", "d")
}

// Contract: the window counts from the first accepted Put of a key; whether
// a duplicate extends it is left open (the test does not depend on it).
func testDedupeWindowExpires(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, spool.Options{Now: clk.Now, DedupeWindow: time.Minute})
	mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("a")})
	clk.Advance(59 * time.Second)
	if r := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("b")}); !r.Duplicate {
		t.Fatalf("Put at +59s of a 1m window: not a duplicate")
	}
	clk.Advance(62 * time.Second) // +121s: outside even a window renewed at +59s
	if r := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("c")}); r.Duplicate {
		t.Fatalf("Put at +121s of a 1m window: still a duplicate")
	}
	wantData(t, "contents", leaseAll(t, q), "a", "c")
}

// Contract: dedupe is by key and time, not by presence in the queue: a
// re-sent message whose original was already delivered is still a duplicate.
func testDedupeAfterAck(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	r1 := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("a")})
	mustAck(t, q, ids(tryLease(t, q, 1))...)
	r2 := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("a")})
	if !r2.Duplicate || r2.ID != r1.ID {
		t.Fatalf("re-sent after ack: %+v, want duplicate of %d", r2, r1.ID)
	}
	wantData(t, "contents", leaseAll(t, q))
}

func testDedupeMaxEntries(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{DedupeMaxEntries: 3})
	for _, k := range []string{"a", "b", "c", "d"} {
		if r := mustPut(t, q, spool.Entry{DedupeKey: k, Data: []byte(k)}); r.Duplicate {
			t.Fatalf("first Put of %q is a duplicate", k)
		}
	}
	// At most 3 keys are remembered, the oldest forgotten first: "a" went.
	eventually(t, "DedupeEntries", func() (bool, string) {
		n := q.Stats().DedupeEntries
		return n <= 3, fmt.Sprint(n)
	})
	if r := mustPut(t, q, spool.Entry{DedupeKey: "a", Data: []byte("a2")}); r.Duplicate {
		t.Fatalf("key a is remembered beyond DedupeMaxEntries=3")
	}
	if r := mustPut(t, q, spool.Entry{DedupeKey: "d", Data: []byte("d2")}); !r.Duplicate {
		t.Fatalf("newest key d was forgotten")
	}
}

func testDedupeOff(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{DedupeWindow: -1})
	for range 2 {
		if r := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("a")}); r.Duplicate {
			t.Fatalf("duplicate with DedupeWindow < 0")
		}
	}
	wantData(t, "contents", leaseAll(t, q), "a", "a")
}

func testDedupeSurvivesReopen(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, reopen := open(t, spool.Options{Now: clk.Now, DedupeWindow: time.Minute})
	r1 := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("a")})
	q = reopen()
	clk.Advance(30 * time.Second)
	r2 := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("b")})
	if !r2.Duplicate || r2.ID != r1.ID {
		t.Fatalf("after reopen: %+v, want duplicate of %d", r2, r1.ID)
	}
	clk.Advance(2 * time.Minute)
	q = reopen()
	if r := mustPut(t, q, spool.Entry{DedupeKey: "k", Data: []byte("c")}); r.Duplicate {
		t.Fatalf("after the window and a reopen: still a duplicate")
	}
	wantData(t, "contents", leaseAll(t, q), "a", "c")
}

// ---- TTL ----

func testTTLDrop(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, strict(spool.Options{Now: clk.Now}))
	mustPut(t, q, spool.Entry{Data: []byte("short"), ExpiresAt: clk.Now().Add(time.Minute)})
	mustPut(t, q, spool.Entry{Data: []byte("forever")})
	mustPut(t, q, spool.Entry{Priority: 2, Data: []byte("long"), ExpiresAt: clk.Now().Add(time.Hour)})
	clk.Advance(2 * time.Minute)
	wantData(t, "lease after expiry", leaseAll(t, q), "forever", "long")
	eventually(t, "expired message dropped", func() (bool, string) {
		st := q.Stats()
		return st.Dropped[spool.DropReasonExpired] == 1 && st.Messages == 2 && st.DLQMessages == 0,
			fmt.Sprintf("Dropped[expired] %d Messages %d DLQ %d", st.Dropped[spool.DropReasonExpired], st.Messages, st.DLQMessages)
	})
}

func testTTLDeadLetter(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, spool.Options{Now: clk.Now, Expired: spool.ExpireDeadLetter})
	exp := clk.Now().Add(time.Minute)
	mustPut(t, q, spool.Entry{Priority: 3, Data: []byte("short"), ExpiresAt: exp})
	mustPut(t, q, spool.Entry{Data: []byte("forever")})
	clk.Advance(2 * time.Minute)
	wantData(t, "lease after expiry", leaseAll(t, q), "forever")
	eventually(t, "expired message dead-lettered", func() (bool, string) {
		st := q.Stats()
		return st.DLQMessages == 1 && st.Messages == 1, fmt.Sprintf("DLQ %d Messages %d", st.DLQMessages, st.Messages)
	})
	d := dlq(t, q)
	if len(d) != 1 || string(d[0].Data) != "short" || d[0].Reason != "expired" || d[0].Priority != 3 || !d[0].ExpiresAt.Equal(exp) {
		t.Fatalf("DLQ = %+v, want the expired message with reason \"expired\"", d)
	}
}

// ---- caps ----

func testMaxMessagesReject(t *testing.T, open OpenFunc) {
	// BlockTimeout is an hour and the context has no deadline: a Put that
	// waited for space instead of failing at once would hang (guard).
	q, _ := open(t, spool.Options{MaxMessages: 3, Overflow: spool.Reject, BlockTimeout: time.Hour})
	for _, d := range []string{"a", "b", "c"} {
		putN(t, q, 0, d)
	}
	var err error
	returns(t, "Put into a full spool under Reject", func() { _, err = q.Put(context.Background(), spool.Entry{Data: []byte("d")}) })
	if !errors.Is(err, spool.ErrFull) {
		t.Fatalf("4th Put with MaxMessages=3, Reject: %v, want ErrFull", err)
	}
	st := q.Stats()
	if st.Rejected != 1 || !st.Full || st.Messages != 3 {
		t.Fatalf("Stats: Rejected %d Full %v Messages %d, want 1 true 3", st.Rejected, st.Full, st.Messages)
	}
	items := tryLease(t, q, 1)
	mustAck(t, q, ids(items)...)
	putN(t, q, 0, "e")
	if st := q.Stats(); st.Full {
		t.Fatalf("Stats.Full still set after a Put that fit")
	}
	wantData(t, "contents", leaseAll(t, q), "b", "c", "e")
}

// Contract: BlockTimeout is measured in real time (the injected clock does
// not move on its own). A Put blocked by a full spool returns ErrFull once
// BlockTimeout passed, and never before it: that lower bound cannot flake
// (timers do not fire early); there is no upper bound but the hang guard.
func testBlockTimesOut(t *testing.T, open OpenFunc) {
	const timeout = 200 * time.Millisecond
	q, _ := open(t, spool.Options{MaxMessages: 2, Overflow: spool.Block, BlockTimeout: timeout})
	putN(t, q, 0, "a")
	putN(t, q, 0, "b")
	start := time.Now()
	var err error
	returns(t, "Put blocked by a full spool, after BlockTimeout", func() { _, err = q.Put(context.Background(), spool.Entry{Data: []byte("c")}) })
	if !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Put into a full spool with Block: %v, want ErrFull", err)
	}
	if d := time.Since(start); d < timeout {
		t.Fatalf("Put into a full spool with Block returned after %v, before BlockTimeout=%v: it did not wait", d, timeout)
	}
	if st := q.Stats(); st.Rejected != 1 || st.Messages != 2 {
		t.Fatalf("Stats: Rejected %d Messages %d, want 1 2", st.Rejected, st.Messages)
	}
	wantData(t, "contents", leaseAll(t, q), "a", "b")
}

func testBlockUnblocks(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{MaxMessages: 2, Overflow: spool.Block, BlockTimeout: 10 * time.Second})
	putN(t, q, 0, "a")
	putN(t, q, 0, "b")
	ch := make(chan error, 1)
	go func() {
		_, err := q.Put(testCtx(t), spool.Entry{Data: []byte("c")})
		ch <- err
	}()
	select {
	case err := <-ch:
		t.Fatalf("Put into a full spool returned at once: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	items := tryLease(t, q, 1)
	mustAck(t, q, ids(items)...)
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("blocked Put after space was freed: %v", err)
		}
	case <-testkit.After(guard):
		t.Fatalf("blocked Put did not resume after an Ack (hang guard)")
	}
	wantData(t, "contents", leaseAll(t, q), "b", "c")
}

// Contract: a Put blocked by the Block policy returns when its context ends
// (with an error; ctx.Err() or ErrFull).
func testBlockContext(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{MaxMessages: 1, Overflow: spool.Block, BlockTimeout: 30 * time.Second})
	putN(t, q, 0, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var err error
	returns(t, "Put blocked by a full spool, after its context ended", func() { _, err = q.Put(ctx, spool.Entry{Data: []byte("b")}) })
	if err == nil {
		t.Fatalf("blocked Put with an ended context succeeded")
	}
	wantData(t, "contents", leaseAll(t, q), "a")
}

func testDropOldest(t *testing.T, open OpenFunc) {
	q, _ := open(t, strict(spool.Options{MaxMessages: 3, Overflow: spool.DropOldest}))
	putN(t, q, 5, "A5")
	putN(t, q, 0, "B0")
	putN(t, q, 9, "C9")
	putN(t, q, 0, "D0") // drops A5: lowest id, any lane
	st := q.Stats()
	if st.Dropped[spool.DropReasonOldest] != 1 || st.Messages != 3 || st.Rejected != 0 {
		t.Fatalf("Stats: Dropped[oldest] %d Messages %d Rejected %d, want 1 3 0", st.Dropped[spool.DropReasonOldest], st.Messages, st.Rejected)
	}
	putN(t, q, 9, "E9") // drops B0
	wantData(t, "contents", leaseAll(t, q), "D0", "C9", "E9")
	if n := q.Stats().Dropped[spool.DropReasonOldest]; n != 2 {
		t.Fatalf("Dropped[oldest] = %d, want 2", n)
	}
}

func testDropLowestPriority(t *testing.T, open OpenFunc) {
	q, _ := open(t, strict(spool.Options{MaxMessages: 3, Overflow: spool.DropLowestPriority}))
	putN(t, q, 0, "A0")
	putN(t, q, 9, "B9")
	putN(t, q, 5, "C5")
	putN(t, q, 5, "D5") // drops B9, the lowest lane
	putN(t, q, 5, "E5") // lowest non-empty lane is 5, same as incoming: drops C5
	_, err := q.Put(testCtx(t), spool.Entry{Priority: 9, Data: []byte("F9")})
	if !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Put lane 9 with only lanes 0 and 5 left: %v, want ErrFull (never drop a higher lane)", err)
	}
	putN(t, q, 0, "G0") // drops D5
	st := q.Stats()
	if st.Dropped[spool.DropReasonLowestPriority] != 3 || st.Rejected != 1 || st.Messages != 3 {
		t.Fatalf("Stats: Dropped[lowest] %d Rejected %d Messages %d, want 3 1 3",
			st.Dropped[spool.DropReasonLowestPriority], st.Rejected, st.Messages)
	}
	wantData(t, "contents", leaseAll(t, q), "A0", "G0", "E5")
}

// MaxBytes is checked with margins: an implementation may count per-record
// overhead, so with 1 KiB messages and a 256 KiB cap it must accept between
// 128 and 256 of them.
func testMaxBytes(t *testing.T, open OpenFunc) {
	const maxBytes, size = 256 << 10, 1 << 10
	payload := func(i int) []byte {
		b := make([]byte, size)
		copy(b, fmt.Sprintf("%06d", i))
		return b
	}
	t.Run("Reject", func(t *testing.T) {
		q, _ := open(t, spool.Options{MaxBytes: maxBytes, Overflow: spool.Reject})
		n := 0
		for ; n < 1000; n++ {
			_, err := q.Put(testCtx(t), spool.Entry{Data: payload(n)})
			if errors.Is(err, spool.ErrFull) {
				break
			}
			if err != nil {
				t.Fatalf("Put %d: %v", n, err)
			}
		}
		st := q.Stats()
		t.Logf("accepted %d, Bytes %d", n, st.Bytes)
		if n < maxBytes/size/2 || n > maxBytes/size {
			t.Fatalf("accepted %d messages of %d bytes under MaxBytes=%d, want %d..%d", n, size, maxBytes, maxBytes/size/2, maxBytes/size)
		}
		if st.Messages != int64(n) || st.Rejected != 1 || !st.Full || st.Bytes < int64(n*size) || st.Bytes > maxBytes {
			t.Fatalf("Stats: Messages %d Rejected %d Full %v Bytes %d, want %d 1 true %d..%d",
				st.Messages, st.Rejected, st.Full, st.Bytes, n, n*size, maxBytes)
		}
		if got := len(leaseAll(t, q)); got != n {
			t.Fatalf("leased %d, want %d", got, n)
		}
	})
	t.Run("DropOldest", func(t *testing.T) {
		q, _ := open(t, spool.Options{MaxBytes: maxBytes, Overflow: spool.DropOldest})
		const total = 600
		for i := range total {
			if _, err := q.Put(testCtx(t), spool.Entry{Data: payload(i)}); err != nil {
				t.Fatalf("Put %d with DropOldest: %v", i, err)
			}
		}
		st := q.Stats()
		kept := int(st.Messages)
		if kept < maxBytes/size/2 || kept > maxBytes/size || st.Bytes > maxBytes {
			t.Fatalf("kept %d messages, %d bytes, want %d..%d messages within %d bytes", kept, st.Bytes, maxBytes/size/2, maxBytes/size, maxBytes)
		}
		if st.Dropped[spool.DropReasonOldest] != uint64(total-kept) {
			t.Fatalf("Dropped[oldest] = %d, want %d", st.Dropped[spool.DropReasonOldest], total-kept)
		}
		items := leaseAll(t, q)
		if len(items) != kept {
			t.Fatalf("leased %d, Stats said %d", len(items), kept)
		}
		for i, it := range items { // the newest survive, in order
			if want := payload(total - kept + i); string(it.Data) != string(want) {
				t.Fatalf("item %d = %.6s..., want %.6s...", i, it.Data, want)
			}
		}
	})
	t.Run("DLQCounts", func(t *testing.T) {
		q, _ := open(t, spool.Options{MaxBytes: maxBytes, Overflow: spool.Reject})
		n := 0
		for ; n < 1000; n++ {
			r, err := q.Put(testCtx(t), spool.Entry{Data: payload(n)})
			if errors.Is(err, spool.ErrFull) {
				break
			}
			if err != nil {
				t.Fatalf("Put %d: %v", n, err)
			}
			if err := q.DeadLetter(testCtx(t), r.ID, "test"); err != nil {
				t.Fatalf("DeadLetter: %v", err)
			}
		}
		if n < maxBytes/size/2 || n > maxBytes/size {
			t.Fatalf("accepted %d messages into the DLQ under MaxBytes=%d, want %d..%d: the cap covers the DLQ", n, maxBytes, maxBytes/size/2, maxBytes/size)
		}
	})
}

// ---- DLQ ----

func testDeadLetterAndDLQ(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, reopen := open(t, spool.Options{Now: clk.Now})
	var id []uint64
	for i := range 5 {
		id = append(id, putN(t, q, 0, fmt.Sprint(i+1)))
	}
	wantData(t, "lease", tryLease(t, q, 2), "1", "2")
	mustNack(t, q, id[0])
	wantData(t, "lease again", tryLease(t, q, 1), "1")
	clk.Advance(time.Second)
	ctx := testCtx(t)
	if err := q.DeadLetter(ctx, id[0], "poison"); err != nil { // leased
		t.Fatalf("DeadLetter(leased): %v", err)
	}
	if err := q.DeadLetter(ctx, id[2], "manual"); err != nil { // queued, not leased
		t.Fatalf("DeadLetter(queued): %v", err)
	}
	if err := q.DeadLetter(ctx, 1<<60, "x"); !errors.Is(err, spool.ErrNotFound) {
		t.Fatalf("DeadLetter(unknown): %v, want ErrNotFound", err)
	}
	check := func(t *testing.T, q Queue) {
		t.Helper()
		d := dlq(t, q)
		// Contract: Attempts counts deliveries that ended in Nack or lease
		// expiry; the delivery that was dead-lettered is not one.
		if len(d) != 2 ||
			d[0].ID != id[0] || string(d[0].Data) != "1" || d[0].Reason != "poison" || d[0].Attempts != 1 || !d[0].DeadAt.Equal(clk.Now()) ||
			d[1].ID != id[2] || string(d[1].Data) != "3" || d[1].Reason != "manual" || d[1].Attempts != 0 {
			t.Fatalf("DLQ = %+v", d)
		}
		if p, err := q.DLQ(id[0], 10); err != nil || len(p) != 1 || p[0].ID != id[2] {
			t.Fatalf("DLQ(after %d) = %+v, %v, want [%d]", id[0], p, err, id[2])
		}
		if p, err := q.DLQ(0, 1); err != nil || len(p) != 1 || p[0].ID != id[0] {
			t.Fatalf("DLQ(0, 1) = %+v, %v, want [%d]", p, err, id[0])
		}
		st := q.Stats()
		if st.DLQMessages != 2 || st.DLQBytes < 2 || st.Messages != 3 {
			t.Fatalf("Stats: DLQMessages %d DLQBytes %d Messages %d, want 2 >=2 3", st.DLQMessages, st.DLQBytes, st.Messages)
		}
	}
	check(t, q)
	if st := q.Stats(); st.DeadLettered != 2 {
		t.Fatalf("Stats.DeadLettered = %d, want 2", st.DeadLettered)
	}
	wantData(t, "queue", tryLease(t, q, 10), "4", "5")
	q = reopen()
	check(t, q)
	wantData(t, "queue after reopen", leaseAll(t, q), "2", "4", "5")
}

func testRequeue(t *testing.T, open OpenFunc) {
	q, reopen := open(t, strict(spool.Options{}))
	var id []uint64
	for i := range 4 {
		id = append(id, putN(t, q, 2, fmt.Sprint(i+1)))
	}
	ctx := testCtx(t)
	for _, i := range []int{1, 2} {
		if err := q.DeadLetter(ctx, id[i], "test"); err != nil {
			t.Fatalf("DeadLetter: %v", err)
		}
	}
	putN(t, q, 2, "5")
	q = reopen()
	if n, err := q.Requeue(ctx, id[2]); n != 1 || err != nil {
		t.Fatalf("Requeue(%d) = %d, %v, want 1", id[2], n, err)
	}
	if n, err := q.Requeue(ctx); n != 1 || err != nil {
		t.Fatalf("Requeue() = %d, %v, want 1", n, err)
	}
	if st := q.Stats(); st.DLQMessages != 0 || st.Messages != 5 {
		t.Fatalf("Stats: DLQMessages %d Messages %d, want 0 5", st.DLQMessages, st.Messages)
	}
	items := leaseAll(t, q)
	wantData(t, "order after requeue", items, "1", "2", "3", "4", "5")
	if items[1].ID != id[1] {
		t.Fatalf("requeued message got id %d, want its original %d", items[1].ID, id[1])
	}
}

func testPurgeDLQ(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	ctx := testCtx(t)
	var id []uint64
	for i := range 4 {
		id = append(id, putN(t, q, 0, fmt.Sprint(i)))
		if i < 3 {
			if err := q.DeadLetter(ctx, id[i], "test"); err != nil {
				t.Fatalf("DeadLetter: %v", err)
			}
		}
	}
	if n, err := q.PurgeDLQ(ctx, id[1]); n != 1 || err != nil {
		t.Fatalf("PurgeDLQ(%d) = %d, %v, want 1", id[1], n, err)
	}
	if d := dlq(t, q); len(d) != 2 || d[0].ID != id[0] || d[1].ID != id[2] {
		t.Fatalf("DLQ after purging one = %+v", d)
	}
	if n, err := q.PurgeDLQ(ctx); n != 2 || err != nil {
		t.Fatalf("PurgeDLQ() = %d, %v, want 2", n, err)
	}
	st := q.Stats()
	if st.DLQMessages != 0 || st.DLQBytes != 0 || st.Messages != 1 || len(dlq(t, q)) != 0 {
		t.Fatalf("Stats after purge: DLQMessages %d DLQBytes %d Messages %d", st.DLQMessages, st.DLQBytes, st.Messages)
	}
	wantData(t, "queue", leaseAll(t, q), "3")
}

// ---- retention and replay ----

func testRetainAndReplay(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, reopen := open(t, spool.Options{Now: clk.Now, RetainDelivered: time.Hour})
	putN(t, q, 1, "a")
	clk.Advance(time.Second)
	since := clk.Now()
	putN(t, q, 1, "b")
	clk.Advance(time.Second)
	c := putN(t, q, 1, "c")
	items := leaseAll(t, q)
	mustAck(t, q, ids(items)...)
	st := q.Stats()
	if st.Messages != 0 || st.Retained != 3 || st.RetainedBytes < 3 {
		t.Fatalf("Stats after acking with retention: Messages %d Retained %d RetainedBytes %d, want 0 3 >=3", st.Messages, st.Retained, st.RetainedBytes)
	}
	q = reopen()
	clk.Advance(time.Minute)
	n, err := q.Replay(testCtx(t), since)
	if err != nil || n != 2 {
		t.Fatalf("Replay(since b) = %d, %v, want 2", n, err)
	}
	items = leaseAll(t, q)
	wantData(t, "replayed", items, "b", "c")
	for _, it := range items {
		if it.ID <= c || it.Priority != 1 {
			t.Fatalf("replayed item %+v: want a new id above %d in lane 1", it, c)
		}
	}
}

func testRetainExpires(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, spool.Options{Now: clk.Now, RetainDelivered: time.Minute})
	putN(t, q, 0, "a")
	mustAck(t, q, ids(leaseAll(t, q))...)
	clk.Advance(2 * time.Minute)
	n, err := q.Replay(testCtx(t), time.Time{})
	if err != nil || n != 0 {
		t.Fatalf("Replay after the retention ended = %d, %v, want 0", n, err)
	}
	wantData(t, "queue", leaseAll(t, q))
	eventually(t, "retained forgotten", func() (bool, string) {
		r := q.Stats().Retained
		return r == 0, fmt.Sprint(r)
	})
}

// Contract: Replay without retention either fails or replays nothing.
func testReplayWithoutRetention(t *testing.T, open OpenFunc) {
	q, _ := open(t, spool.Options{})
	putN(t, q, 0, "a")
	mustAck(t, q, ids(leaseAll(t, q))...)
	n, err := q.Replay(testCtx(t), time.Time{})
	if err == nil && n != 0 {
		t.Fatalf("Replay without RetainDelivered = %d, nil", n)
	}
	wantData(t, "queue", leaseAll(t, q))
	if st := q.Stats(); st.Retained != 0 || st.Messages != 0 {
		t.Fatalf("Stats: Retained %d Messages %d, want 0 0", st.Retained, st.Messages)
	}
}

// ---- stats and reopen ----

func testStatsCounters(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, _ := open(t, strict(spool.Options{Now: clk.Now}))
	t0 := clk.Now()
	a := putN(t, q, 0, "aaaa")
	clk.Advance(time.Second)
	putN(t, q, 7, "bbbbbbbb")
	clk.Advance(time.Second)
	putN(t, q, 0, "cc")
	st := q.Stats()
	if st.Messages != 3 || st.Accepted != 3 || st.Lanes[0].Messages != 2 || st.Lanes[7].Messages != 1 {
		t.Fatalf("Stats: Messages %d Accepted %d lane0 %d lane7 %d, want 3 3 2 1", st.Messages, st.Accepted, st.Lanes[0].Messages, st.Lanes[7].Messages)
	}
	if st.Lanes[0].Bytes < 6 || st.Lanes[7].Bytes < 8 || st.Bytes != st.Lanes[0].Bytes+st.Lanes[7].Bytes {
		t.Fatalf("Stats: Bytes %d lane0 %d lane7 %d, want lane0 >= 6, lane7 >= 8, total = sum", st.Bytes, st.Lanes[0].Bytes, st.Lanes[7].Bytes)
	}
	if !st.Lanes[0].Oldest.Equal(t0) || !st.Lanes[7].Oldest.Equal(t0.Add(time.Second)) || !st.Oldest().Equal(t0) || !st.Lanes[3].Oldest.IsZero() {
		t.Fatalf("Stats: Oldest lane0 %v lane7 %v lane3 %v overall %v, want %v %v zero %v",
			st.Lanes[0].Oldest, st.Lanes[7].Oldest, st.Lanes[3].Oldest, st.Oldest(), t0, t0.Add(time.Second), t0)
	}
	items := tryLease(t, q, 2) // aaaa, cc
	if st := q.Stats(); st.Leased != 2 || st.Messages != 3 {
		t.Fatalf("Stats after leasing 2: Leased %d Messages %d, want 2 3", st.Leased, st.Messages)
	}
	mustAck(t, q, a)
	mustNack(t, q, items[1].ID)
	st = q.Stats()
	if st.Acked != 1 || st.Nacked != 1 || st.Leased != 0 || st.Messages != 2 || !st.Lanes[0].Oldest.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("Stats after ack+nack: Acked %d Nacked %d Leased %d Messages %d lane0 oldest %v", st.Acked, st.Nacked, st.Leased, st.Messages, st.Lanes[0].Oldest)
	}
	mustAck(t, q, ids(leaseAll(t, q))...)
	st = q.Stats()
	if st.Messages != 0 || st.Bytes != 0 || st.Leased != 0 || !st.Oldest().IsZero() || st.Acked != 3 {
		t.Fatalf("Stats when drained: Messages %d Bytes %d Leased %d Oldest %v Acked %d, want 0 0 0 zero 3", st.Messages, st.Bytes, st.Leased, st.Oldest(), st.Acked)
	}
	for l, ls := range st.Lanes {
		if ls != (spool.LaneStats{}) {
			t.Fatalf("lane %d not empty when drained: %+v", l, ls)
		}
	}
}

func testReopenKeepsEverything(t *testing.T, open OpenFunc) {
	clk := NewClock()
	q, reopen := open(t, strict(spool.Options{Now: clk.Now}))
	var all []uint64
	for i, lane := range []uint8{3, 0, 3, 9, 0, 3} {
		all = append(all, putN(t, q, lane, fmt.Sprintf("%d-%d", lane, i)))
	}
	// Lease 0-1, 0-4, 3-0; nack 0-4 (Attempts 1); ack 0-1; 3-0 stays leased.
	items := tryLease(t, q, 3)
	wantData(t, "lease", items, "0-1", "0-4", "3-0")
	mustNack(t, q, items[1].ID)
	mustAck(t, q, items[0].ID)
	if err := q.DeadLetter(testCtx(t), all[3], "bad"); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	q = reopen()
	st := q.Stats()
	if st.Messages != 4 || st.DLQMessages != 1 || st.Leased != 0 || st.Lanes[3].Messages != 3 {
		t.Fatalf("Stats after reopen: Messages %d DLQ %d Leased %d lane3 %d, want 4 1 0 3", st.Messages, st.DLQMessages, st.Leased, st.Lanes[3].Messages)
	}
	if st.Accepted != 0 || st.Acked != 0 {
		t.Fatalf("counters since Open after reopen: Accepted %d Acked %d, want 0 0", st.Accepted, st.Acked)
	}
	items = leaseAll(t, q)
	wantData(t, "after reopen", items, "0-4", "3-0", "3-2", "3-5")
	if items[0].Attempts != 1 {
		t.Fatalf("nacked message: Attempts %d after reopen, want 1", items[0].Attempts)
	}
	mustAck(t, q, ids(items)...)
	q = reopen()
	if id := putN(t, q, 0, "new"); id <= slices.Max(all) {
		t.Fatalf("new id %d after reopen reuses the id range (max before %d)", id, slices.Max(all))
	}
}

func testConcurrent(t *testing.T, open OpenFunc) {
	const producers, perProducer, consumers = 4, 100, 2
	q, _ := open(t, spool.Options{})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	putIDs := make([][]uint64, producers)
	errs := make(chan error, producers+consumers)
	for p := range producers {
		wg.Go(func() {
			for i := range perProducer {
				r, err := q.Put(ctx, spool.Entry{Priority: uint8(p % 2 * 5), Data: fmt.Appendf(nil, "%d/%d", p, i)})
				if err != nil {
					errs <- fmt.Errorf("producer %d Put %d: %w", p, i, err)
					return
				}
				putIDs[p] = append(putIDs[p], r.ID)
			}
		})
	}
	var mu sync.Mutex
	seen := map[string]int{}
	consumed := 0
	var cwg sync.WaitGroup
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range consumers {
		cwg.Go(func() {
			for {
				items, err := q.Lease(cctx, 16)
				if err != nil {
					if cctx.Err() == nil {
						errs <- fmt.Errorf("Lease: %w", err)
					}
					return
				}
				if err := q.Ack(ctx, ids(items)...); err != nil {
					errs <- fmt.Errorf("Ack: %w", err)
					return
				}
				mu.Lock()
				for _, it := range items {
					seen[string(it.Data)]++
				}
				consumed += len(items)
				done := consumed >= producers*perProducer
				mu.Unlock()
				if done {
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	cwg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != producers*perProducer || consumed != producers*perProducer {
		t.Fatalf("consumed %d messages, %d distinct, want %d each", consumed, len(seen), producers*perProducer)
	}
	for p, ids := range putIDs {
		if !slices.IsSorted(ids) {
			t.Fatalf("producer %d: ids not increasing in Put order: %v", p, ids)
		}
	}
	if st := q.Stats(); st.Messages != 0 || st.Leased != 0 {
		t.Fatalf("Stats after draining: Messages %d Leased %d", st.Messages, st.Leased)
	}
}
