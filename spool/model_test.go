package spool_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spooltest"
)

var (
	seedFlag     = flag.Uint64("spool.seed", 0, "seed for the randomized spool tests (0: FERRY_SPOOL_SEED or time-based)")
	modelOpsFlag = flag.Int("spool.model-ops", 3000, "operations in the model-based spool test")
)

// testSeed returns the seed for randomized tests and logs how to reuse it.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		if s := os.Getenv("FERRY_SPOOL_SEED"); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("FERRY_SPOOL_SEED=%q: %v", s, err)
			}
			seed = v
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -spool.seed=%d or FERRY_SPOOL_SEED=%d)", seed, seed, seed)
	return seed
}

// modelOpts: strict priority so that the order is fully determined, and
// durations of n.5 s while the clock moves in whole seconds, so that no
// deadline ever equals the clock (implementations may differ on < vs <=).
func modelOpts(clk *spooltest.Clock) spool.Options {
	return spool.Options{
		Durability:     spool.Interval,
		FsyncInterval:  20 * time.Millisecond, // also the bbolt spool's housekeeping period
		LowerLaneShare: -1,
		LeaseTimeout:   30*time.Second + 500*time.Millisecond,
		DedupeWindow:   60*time.Second + 500*time.Millisecond,
		Now:            clk.Now,
	}
}

// TestModelBolt runs random Put/Lease/Ack/Nack/DeadLetter/Requeue/clock
// advance/Reopen sequences against the bbolt spool and the memory fake as the
// model, and compares every answer: lease order and contents, attempts,
// duplicates, DLQ and counts.
func TestModelBolt(t *testing.T) {
	clk := spooltest.NewClock()
	opts := modelOpts(clk)
	sut, reopen := openSpool(t, opts)
	model := spooltest.NewMemory(opts)
	runModel(t, clk, sut, reopen, model, *modelOpsFlag)
}

// TestModelSelf runs the model harness with the fake on both sides: it keeps
// the harness and the fake's determinism honest while the bbolt spool is not
// there.
func TestModelSelf(t *testing.T) {
	clk := spooltest.NewClock()
	opts := modelOpts(clk)
	sut := spooltest.NewMemory(opts)
	model := spooltest.NewMemory(opts)
	runModel(t, clk, sut, func() spooltest.Queue { return sut.Restart() }, model, *modelOpsFlag)
}

type modelLease struct {
	sutID    uint64
	modelID  uint64
	deadline time.Time
}

func runModel(t *testing.T, clk *spooltest.Clock, sut spooltest.Queue, reopen func() spooltest.Queue, model *spooltest.Memory, ops int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(testSeed(t), 0x5eed))
	ctx := t.Context()
	leaseTimeout := modelOpts(clk).LeaseTimeout

	var (
		next      int
		leased    = map[string]modelLease{} // by data; only leases the test may still ack/nack
		sutIDs    = map[string]uint64{}     // data -> id in the sut
		modelIDs  = map[string]uint64{}     // data -> id in the model
		uncertain = map[string]bool{}       // Attempts unknown: leased across a reopen
		ttlPuts   int
		staleOK   bool // a lease may have expired in the model but not yet in the sut
		history   []string
	)
	fail := func(format string, args ...any) {
		t.Helper()
		n := max(0, len(history)-15)
		t.Fatalf("op %d: %s\nlast ops:\n  %s", len(history), fmt.Sprintf(format, args...), join(history[n:]))
	}
	pickLeased := func(k int) []string {
		keys := make([]string, 0, len(leased))
		for d, l := range leased {
			if clk.Now().Before(l.deadline) { // not an expired lease
				keys = append(keys, d)
			}
		}
		slices.Sort(keys)
		rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		return keys[:min(k, len(keys))]
	}
	compareItems := func(what string, got, want []spool.Item) {
		t.Helper()
		if g, w := itemDatas(got), itemDatas(want); !slices.Equal(g, w) {
			fail("%s: sut %q, model %q", what, g, w)
		}
		for i := range got {
			d := string(got[i].Data)
			if got[i].Priority != want[i].Priority {
				fail("%s: %s priority %d, model %d", what, d, got[i].Priority, want[i].Priority)
			}
			if !uncertain[d] && got[i].Attempts != want[i].Attempts {
				fail("%s: %s attempts %d, model %d", what, d, got[i].Attempts, want[i].Attempts)
			}
			if id, ok := sutIDs[d]; ok && id != got[i].ID {
				fail("%s: %s has id %d, was %d", what, d, got[i].ID, id)
			}
			sutIDs[d], modelIDs[d] = got[i].ID, want[i].ID
		}
	}
	// compareStats compares the counts; the sut may settle in the
	// background (expired messages and leases are handed to its writer), so a
	// difference only fails if it outlasts a hang guard.
	guard := testkit.Timeout(30 * time.Second)
	compareStats := func() {
		t.Helper()
		diff := func() string {
			g, w := sut.Stats(), model.Stats()
			if !staleOK && g.Leased != w.Leased {
				return fmt.Sprintf("Stats.Leased: sut %d, model %d", g.Leased, w.Leased)
			}
			// TTL-expired messages may be swept later by the sut than by the model.
			if d := g.Messages - w.Messages; d < 0 || d > int64(ttlPuts) {
				return fmt.Sprintf("Stats.Messages: sut %d, model %d", g.Messages, w.Messages)
			}
			if g.DLQMessages != w.DLQMessages {
				return fmt.Sprintf("Stats.DLQMessages: sut %d, model %d", g.DLQMessages, w.DLQMessages)
			}
			for l := range spool.Lanes {
				if d := g.Lanes[l].Messages - w.Lanes[l].Messages; d < 0 || d > int64(ttlPuts) {
					return fmt.Sprintf("lane %d messages: sut %d, model %d", l, g.Lanes[l].Messages, w.Lanes[l].Messages)
				}
			}
			return ""
		}
		deadline := time.Now().Add(guard)
		for {
			d := diff()
			if d == "" {
				return
			}
			if time.Now().After(deadline) {
				fail("%s (hang guard: still after %v, %s=%g)", d, guard, testkit.ScaleEnv, testkit.Scale())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// settle waits until the sut returned expired leases. The conformance
	// suite (LeaseTimeoutReturnsItems) requires a TryLease after the
	// deadline to see them at once; here the sut may return them in the
	// background, so that the model test goes on looking for other
	// differences.
	settle := func() {
		t.Helper()
		want := model.Stats().Leased
		deadline := time.Now().Add(guard)
		for sut.Stats().Leased != want && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
		if got := sut.Stats().Leased; got != want {
			// Tell a stuck lease from a miscount: lease everything from both.
			gi, gerr := sut.TryLease(100_000)
			wi, werr := model.TryLease(100_000)
			if gerr != nil || werr != nil {
				fail("TryLease: sut %v, model %v", gerr, werr)
			}
			history = append(history, fmt.Sprintf("TryLease(all) -> %d items", len(gi)))
			compareItems("TryLease(all) after expired leases were not returned", gi, wi)
			fail("hang guard: expired leases not returned after %v: sut Stats.Leased %d, model %d, yet TryLease hands out the same %d messages: Stats.Leased miscounts",
				guard, got, want, len(gi))
		}
		staleOK = false
	}
	lanes := []uint8{0, 1, 1, 4, 9}
	for range ops {
		switch r := rng.IntN(100); {
		case r < 35: // Put
			d := fmt.Sprintf("m%d", next)
			next++
			e := spool.Entry{Priority: lanes[rng.IntN(len(lanes))], Data: []byte(d)}
			if rng.IntN(5) == 0 {
				e.DedupeKey = fmt.Sprintf("k%d", rng.IntN(20))
			}
			if rng.IntN(10) == 0 {
				e.ExpiresAt = clk.Now().Add(time.Duration(1+rng.IntN(120))*time.Second + 500*time.Millisecond)
				ttlPuts++
			}
			history = append(history, fmt.Sprintf("Put(%s lane %d key %q exp %v)", d, e.Priority, e.DedupeKey, !e.ExpiresAt.IsZero()))
			gr, gerr := sut.Put(ctx, e)
			wr, werr := model.Put(ctx, e)
			if gerr != nil || werr != nil {
				fail("Put: sut %v, model %v", gerr, werr)
			}
			if gr.Duplicate != wr.Duplicate {
				fail("Put(%s key %q): sut duplicate=%v, model %v", d, e.DedupeKey, gr.Duplicate, wr.Duplicate)
			}
			if !gr.Duplicate {
				sutIDs[d], modelIDs[d] = gr.ID, wr.ID
			}
		case r < 60: // TryLease
			max := 1 + rng.IntN(8)
			history = append(history, fmt.Sprintf("TryLease(%d)", max))
			got, gerr := sut.TryLease(max)
			want, werr := model.TryLease(max)
			if gerr != nil || werr != nil {
				fail("TryLease: sut %v, model %v", gerr, werr)
			}
			compareItems("TryLease", got, want)
			// Leases that expired are now back in both; forget them.
			for d, l := range leased {
				if !clk.Now().Before(l.deadline) {
					delete(leased, d)
				}
			}
			staleOK = false
			for i := range got {
				d := string(got[i].Data)
				leased[d] = modelLease{sutID: got[i].ID, modelID: want[i].ID, deadline: clk.Now().Add(leaseTimeout)}
			}
			history[len(history)-1] += fmt.Sprint(" -> ", itemDatas(got))
		case r < 75: // Ack
			ds := pickLeased(1 + rng.IntN(4))
			history = append(history, fmt.Sprintf("Ack(%v)", ds))
			var gids, wids []uint64
			for _, d := range ds {
				gids, wids = append(gids, leased[d].sutID), append(wids, leased[d].modelID)
				delete(leased, d)
			}
			if gerr, werr := sut.Ack(ctx, gids...), model.Ack(ctx, wids...); gerr != nil || werr != nil {
				fail("Ack: sut %v, model %v", gerr, werr)
			}
		case r < 85: // Nack
			ds := pickLeased(1 + rng.IntN(3))
			history = append(history, fmt.Sprintf("Nack(%v)", ds))
			var gids, wids []uint64
			for _, d := range ds {
				gids, wids = append(gids, leased[d].sutID), append(wids, leased[d].modelID)
				delete(leased, d)
			}
			if gerr, werr := sut.Nack(ctx, gids...), model.Nack(ctx, wids...); gerr != nil || werr != nil {
				fail("Nack: sut %v, model %v", gerr, werr)
			}
		case r < 93: // clock
			d := time.Duration(1+rng.IntN(40)) * time.Second
			history = append(history, fmt.Sprintf("Advance(%v)", d))
			clk.Advance(d)
			for _, l := range leased {
				if !clk.Now().Before(l.deadline) {
					staleOK = true
				}
			}
			if staleOK {
				settle()
			}
		case r < 96: // DeadLetter a leased message
			ds := pickLeased(1)
			if len(ds) == 0 {
				continue
			}
			d := ds[0]
			history = append(history, fmt.Sprintf("DeadLetter(%s)", d))
			l := leased[d]
			delete(leased, d)
			if gerr, werr := sut.DeadLetter(ctx, l.sutID, "model"), model.DeadLetter(ctx, l.modelID, "model"); gerr != nil || werr != nil {
				fail("DeadLetter: sut %v, model %v", gerr, werr)
			}
			gd, gerr := sut.DLQ(0, 1000)
			wd, werr := model.DLQ(0, 1000)
			if gerr != nil || werr != nil {
				fail("DLQ: sut %v, model %v", gerr, werr)
			}
			var gi, wi []spool.Item
			for _, x := range gd {
				gi = append(gi, x.Item)
			}
			for _, x := range wd {
				wi = append(wi, x.Item)
			}
			compareItems("DLQ", gi, wi)
		case r < 97: // Requeue all
			history = append(history, "Requeue()")
			gn, gerr := sut.Requeue(ctx)
			wn, werr := model.Requeue(ctx)
			if gerr != nil || werr != nil || gn != wn {
				fail("Requeue: sut %d, %v; model %d, %v", gn, gerr, wn, werr)
			}
		default: // Reopen
			history = append(history, "Reopen")
			for d := range leased {
				uncertain[d] = true
			}
			clear(leased)
			staleOK = false
			sut = reopen()
			model.Restart()
		}
		compareStats()
	}
	// Drain both completely and compare.
	history = append(history, "final drain")
	clk.Advance(time.Hour)
	settle()
	for range 100_000 {
		got, gerr := sut.TryLease(50)
		want, werr := model.TryLease(50)
		if gerr != nil || werr != nil {
			fail("drain: sut %v, model %v", gerr, werr)
		}
		compareItems("drain", got, want)
		if len(got) == 0 {
			break
		}
	}
	t.Logf("%d ops, %d puts, %d ttl puts, final: %+v", len(history), next, ttlPuts, model.Stats().Dropped)
}

func itemDatas(items []spool.Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = string(it.Data)
	}
	return out
}

func join(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += "\n  "
		}
		out += s
	}
	return out
}
