package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

func entries(names ...string) []Entry {
	out := make([]Entry, len(names))
	for i, n := range names {
		out[i] = Entry{Priority: 4, Data: []byte(n)}
	}
	return out
}

// TestPutBatchStoresAllInOrder: a batch is stored whole, its ids follow
// its order, and it shares one commit.
func TestPutBatchStoresAllInOrder(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1})
	ctx := context.Background()
	if _, err := s.Put(ctx, Entry{Priority: 4, Data: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	commits := s.Stats().Commits
	res, err := s.PutBatch(ctx, entries("a", "b", "c"))
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Commits != commits+1 || st.Accepted != 4 {
		t.Fatalf("commits %d (want %d), accepted %d", st.Commits, commits+1, st.Accepted)
	}
	if len(res) != 3 || res[1].ID != res[0].ID+1 || res[2].ID != res[1].ID+1 || res[0].Duplicate {
		t.Fatalf("results %+v", res)
	}
	if got := leaseAll(t, s); !slices.Equal(got, []string{"before", "a", "b", "c"}) {
		t.Fatalf("leased %v", got)
	}
}

// TestPutBatchRefusedWhole: under Reject, a batch that does not fit whole
// stores nothing and names the entry and the reason; what was queued after
// it in the same transaction is refused too (order), what was before it is
// stored; a later batch that fits is stored.
func TestPutBatchRefusedWhole(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1, MaxMessages: 5, Overflow: Reject})
	ctx := context.Background()
	release, held := holdWriter(t, s)
	a := s.PutAsync(ctx, Entry{Data: []byte("a")})
	waitHeld(t, held)
	b := s.PutAsync(ctx, Entry{Data: []byte("b")})
	batch := s.PutBatchAsync(ctx, entries("c1", "c2", "c3", "c4"))
	d := s.PutAsync(ctx, Entry{Data: []byte("d")})
	waitQueued(t, s, 3)
	release()
	for name, w := range map[string]func() (PutResult, error){"a": a, "b": b} {
		if _, err := w(); err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
	}
	res, err := batch()
	if !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "entry 4 of 4") || res != nil {
		t.Fatalf("batch: %v %v, want ErrFull at entry 4 of 4", res, err)
	}
	if _, err := d(); !errors.Is(err, ErrFull) {
		t.Fatalf("put d after the refused batch: %v, want ErrFull", err)
	}
	if st := s.Stats(); st.Messages != 2 || st.Rejected != 2 {
		t.Fatalf("messages %d rejected %d, want 2 and 2", st.Messages, st.Rejected)
	}
	if _, err := s.PutBatch(ctx, entries("e1", "e2", "e3")); err != nil {
		t.Fatalf("batch that fits: %v", err)
	}
	if got := leaseAll(t, s); !slices.Equal(got, []string{"a", "b", "e1", "e2", "e3"}) {
		t.Fatalf("leased %v", got)
	}
}

// TestPutBatchBlockWaitsWhole: under Block, a batch that does not fit
// waits, whole, until there is room for all of it, and a Put queued after
// it waits behind it.
func TestPutBatchBlockWaitsWhole(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1, MaxMessages: 3, Overflow: Block, BlockTimeout: time.Hour})
	ctx := context.Background()
	for _, n := range []string{"x", "y"} {
		if _, err := s.Put(ctx, Entry{Data: []byte(n)}); err != nil {
			t.Fatal(err)
		}
	}
	batch := s.PutBatchAsync(ctx, entries("p", "q"))
	z := s.PutAsync(ctx, Entry{Priority: 4, Data: []byte("z")})
	testkit.Wait(t, "the batch parked", func() bool { return s.Stats().Full })
	items, err := s.TryLease(2)
	if err != nil || len(items) != 2 {
		t.Fatalf("lease: %v %v", items, err)
	}
	if st := s.Stats(); st.Messages != 2 {
		t.Fatalf("messages %d while the batch waits: part of it was stored", st.Messages)
	}
	// One ack makes room for the batch (3 of 3), not yet for z.
	if err := s.Ack(ctx, items[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := batch(); err != nil {
		t.Fatalf("batch after room was made: %v", err)
	}
	if err := s.Ack(ctx, items[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := z(); err != nil {
		t.Fatalf("z: %v", err)
	}
	if got := leaseAll(t, s); !slices.Equal(got, []string{"p", "q", "z"}) {
		t.Fatalf("leased %v", got)
	}
}

// TestPutBatchBlockTimeout: a batch that never gets room is refused after
// BlockTimeout, nothing of it stored; one bigger than the cap at once.
func TestPutBatchBlockTimeout(t *testing.T) {
	s := openTest(t, Options{MaxMessages: 2, MaxBytes: 64 << 10, Overflow: Block, BlockTimeout: 50 * time.Millisecond})
	ctx := context.Background()
	if _, err := s.PutBatch(ctx, entries("a", "b", "c")); !errors.Is(err, ErrFull) {
		t.Fatalf("batch over max_messages: %v, want ErrFull", err)
	}
	big := make([]Entry, 3)
	for i := range big {
		big[i] = Entry{Data: make([]byte, 30<<10)}
	}
	s2 := openTest(t, Options{MaxBytes: 64 << 10, Overflow: Block, BlockTimeout: time.Hour})
	if _, err := s2.PutBatch(ctx, big); !errors.Is(err, ErrFull) || !strings.Contains(err.Error(), "never fit") {
		t.Fatalf("batch bigger than the cap: %v, want ErrFull at once", err)
	}
	for _, sp := range []*Spool{s, s2} {
		if st := sp.Stats(); st.Messages != 0 {
			t.Fatalf("%d messages stored", st.Messages)
		}
	}
}

// TestPutBatchDedupe: each entry is checked against the dedupe index,
// including the entries before it in the same batch.
func TestPutBatchDedupe(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1})
	ctx := context.Background()
	orig, err := s.Put(ctx, Entry{Data: []byte("orig"), DedupeKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	es := entries("x", "again", "y", "y-again")
	es[1].DedupeKey, es[2].DedupeKey, es[3].DedupeKey = "k", "k2", "k2"
	res, err := s.PutBatch(ctx, es)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Duplicate || !res[1].Duplicate || res[1].ID != orig.ID || res[2].Duplicate || !res[3].Duplicate || res[3].ID != res[2].ID {
		t.Fatalf("results %+v (orig %d)", res, orig.ID)
	}
	if got := leaseAll(t, s); !slices.Equal(got, []string{"orig", "x", "y"}) {
		t.Fatalf("leased %v", got)
	}
}

// TestPutBatchInvalid: a bad entry refuses the whole batch before the
// writer sees it.
func TestPutBatchInvalid(t *testing.T) {
	s := openTest(t, Options{MaxMessageBytes: 10})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		es   []Entry
		want error
		text string
	}{
		{"empty batch", nil, ErrInvalid, "empty batch"},
		{"empty data", []Entry{{Data: []byte("a")}, {}}, ErrInvalid, "entry 2 of 2"},
		{"too large", []Entry{{Data: make([]byte, 11)}}, ErrTooLarge, "entry 1 of 1"},
		{"too many", make([]Entry, MaxBatchEntries+1), ErrInvalid, "limit"},
		{"expired", []Entry{{Data: []byte("a"), ExpiresAt: time.Unix(1, 0)}}, ErrExpired, "entry 1 of 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.PutBatch(ctx, tc.es); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %v with %q", err, tc.want, tc.text)
			}
		})
	}
	if st := s.Stats(); st.Messages != 0 {
		t.Fatalf("%d stored", st.Messages)
	}
}

// TestPutBatchWithdrawn: a batch whose ctx ends while it is queued is
// never stored; what is queued after it is.
func TestPutBatchWithdrawn(t *testing.T) {
	s := openTest(t, Options{LowerLaneShare: -1})
	ctx := context.Background()
	release, held := holdWriter(t, s)
	first := s.PutAsync(ctx, Entry{Data: []byte("first")})
	waitHeld(t, held)
	cctx, cancel := context.WithCancel(ctx)
	batch := s.PutBatchAsync(cctx, entries("w1", "w2"))
	after := s.PutAsync(ctx, Entry{Data: []byte("after")})
	waitQueued(t, s, 2)
	cancel()
	if _, err := batch(); !errors.Is(err, context.Canceled) {
		t.Fatalf("withdrawn batch: %v", err)
	}
	release()
	for _, w := range []func() (PutResult, error){first, after} {
		if _, err := w(); err != nil {
			t.Fatal(err)
		}
	}
	if got := leaseAll(t, s); !slices.Equal(got, []string{"first", "after"}) {
		t.Fatalf("leased %v", got)
	}
}

const batchKillEnv = "FERRY_SPOOL_BATCH_KILL_PATH"

// runPutBatchKillChild is the child of TestPutBatchKill (TestMain runs it,
// through Children, when batchKillEnv is set). Three producers PutBatch
// batches of 1..40 entries and print "ok P N" after each returned, until
// killed. It never returns.
func runPutBatchKillChild() {
	path := os.Getenv(batchKillEnv)
	s, err := Open(path, Options{LowerLaneShare: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for p := range 3 {
		wg.Go(func() {
			for n := range 1_000_000 {
				k := 1 + (n*7+p*13)%40
				es := make([]Entry, k)
				for i := range es {
					es[i] = Entry{Priority: uint8(p), Data: fmt.Appendf(nil, "p%d-b%07d-e%03d/%03d", p, n, i, k)}
				}
				if _, err := s.PutBatch(context.Background(), es); err != nil {
					fmt.Fprintln(os.Stderr, "put batch:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(out, "ok %d %d\n", p, n)
				_ = out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(4)
}

// TestPutBatchKill: SIGKILL while batches are committed leaves every batch
// whole or absent, and every batch whose PutBatch returned whole.
func TestPutBatchKill(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test; skipped under -short")
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	acked := map[[2]int]bool{}
	for cycle := range 3 {
		c := testkit.StartChild(t, batchKillEnv+"="+path)
		// Kill after a number of acknowledged batches that differs per
		// cycle (the moment of the kill, not a bound).
		want, n := 20+cycle*37, 0
		for ; n < want; n++ {
			l, err := c.Line(n, time.Minute)
			switch {
			case errors.Is(err, io.EOF):
				t.Fatalf("cycle %d: child ended; stderr:\n%s", cycle, c.Stderr())
			case err != nil:
				c.Kill()
				t.Fatalf("cycle %d: hang guard: %d batches acknowledged; stderr:\n%s", cycle, n, c.Stderr())
			}
			f := strings.Fields(l)
			p, _ := strconv.Atoi(f[1])
			b, _ := strconv.Atoi(f[2])
			acked[[2]int{cycle*10 + p, b}] = true
		}
		c.Kill()
		for _, l := range c.Lines()[n:] { // acknowledged before the kill took effect
			f := strings.Fields(l)
			if len(f) == 3 {
				p, _ := strconv.Atoi(f[1])
				b, _ := strconv.Atoi(f[2])
				acked[[2]int{cycle*10 + p, b}] = true
			}
		}

		// Check, then empty the spool for the next cycle.
		s, err := Open(path, Options{LowerLaneShare: -1})
		if err != nil {
			t.Fatalf("cycle %d: reopen: %v", cycle, err)
		}
		got := map[[2]int][]int{}
		size := map[[2]int]int{}
		for {
			items, err := s.TryLease(1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(items) == 0 {
				break
			}
			ids := make([]uint64, 0, len(items))
			for _, it := range items {
				var p, b, e, k int
				if _, err := fmt.Sscanf(string(it.Data), "p%d-b%07d-e%03d/%03d", &p, &b, &e, &k); err != nil {
					t.Fatalf("garbled %q", it.Data)
				}
				key := [2]int{cycle*10 + p, b}
				got[key] = append(got[key], e)
				size[key] = k
				ids = append(ids, it.ID)
			}
			if err := s.Ack(context.Background(), ids...); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		for key, es := range got {
			if len(es) != size[key] {
				t.Errorf("cycle %d: batch %v stored in part: %d of %d entries", cycle, key, len(es), size[key])
			}
		}
		missing := 0
		for key := range acked {
			if key[0]/10 == cycle && got[key] == nil {
				missing++
			}
		}
		if missing > 0 {
			t.Fatalf("cycle %d: %d acknowledged batches missing", cycle, missing)
		}
		t.Logf("cycle %d: %d batches stored, %d acknowledged", cycle, len(got), n)
	}
}
