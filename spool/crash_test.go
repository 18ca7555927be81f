package spool_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
)

const (
	crashEnvPath   = "FERRY_SPOOL_CRASH_PATH"
	crashEnvCycle  = "FERRY_SPOOL_CRASH_CYCLE"
	crashProducers = 6
)

// crashLane is the lane of producer p: two producers per lane.
func crashLane(p int) uint8 { return []uint8{0, 3, 9}[p%3] }

// crashMarker is the payload of message seq of producer p in cycle c,
// padded to 64 bytes.
func crashMarker(c, p, seq int) []byte {
	b := fmt.Appendf(nil, "c%03d-p%d-s%07d|", c, p, seq)
	return append(b, bytes.Repeat([]byte{'.'}, 64-len(b))...)
}

type crashKey struct{ c, p, seq int }

// crashConsumed records the child's consumer: ids it was about to ack and
// ids whose Ack returned.
type crashConsumed struct {
	acking, acked map[uint64]bool
}

func parseMarker(b []byte) (crashKey, bool) {
	var k crashKey
	if len(b) != 64 {
		return k, false
	}
	n, err := fmt.Sscanf(string(b[:bytes.IndexByte(b, '|')+1]), "c%03d-p%d-s%07d|", &k.c, &k.p, &k.seq)
	return k, err == nil && n == 3 && bytes.Equal(crashMarker(k.c, k.p, k.seq), b)
}

// runCrashChild is the child process of TestCrash (TestMain runs it when
// crashEnvPath is set). It opens the spool, Puts from several goroutines in
// Sync durability and prints "ack <cycle> <producer> <seq> <id>" after each
// Put returned, until it is killed. It never returns.
func runCrashChild() {
	path := os.Getenv(crashEnvPath)
	cycle, _ := strconv.Atoi(os.Getenv(crashEnvCycle))
	s, err := spool.Open(path, spool.Options{Durability: spool.Sync, LowerLaneShare: -1})
	if err != nil {
		fmt.Fprintf(os.Stderr, "open: %v\n", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
		mu.Unlock()
	}
	if r := s.Salvaged(); r != nil {
		say("salvaged %s", r)
	}
	say("ready")
	var wg sync.WaitGroup
	for p := range crashProducers {
		wg.Go(func() {
			for seq := 0; ; seq++ {
				r, err := s.Put(context.Background(), spool.Entry{Priority: crashLane(p), Data: crashMarker(cycle, p, seq)})
				if err != nil {
					fmt.Fprintf(os.Stderr, "put: %v\n", err)
					os.Exit(3)
				}
				say("ack %d %d %d %d", cycle, p, seq, r.ID)
			}
		})
	}
	// In even cycles a consumer leases and acks, slower than the producers
	// put, printing "acking <id>" before each Ack and "acked <id>" after.
	if cycle%2 == 0 {
		wg.Go(func() {
			for {
				items, err := s.Lease(context.Background(), 10)
				if err != nil {
					fmt.Fprintf(os.Stderr, "lease: %v\n", err)
					os.Exit(4)
				}
				ids := make([]uint64, len(items))
				for i, it := range items {
					ids[i] = it.ID
					say("acking %d", it.ID)
				}
				if err := s.Ack(context.Background(), ids...); err != nil {
					fmt.Fprintf(os.Stderr, "ack: %v\n", err)
					os.Exit(5)
				}
				for _, id := range ids {
					say("acked %d", id)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait() // never: the producers only end with the process
	os.Exit(0)
}

// TestCrash SIGKILLs a child that Puts in Sync durability (and, every other
// cycle, Leases and Acks) at random moments, cycle after cycle on the same
// file, and then checks that every message whose Put returned and that was
// not being acked is in the spool exactly once, with its id, in its lane, in
// order; that no message whose Ack returned came back; and that no producer
// has a gap.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test: skipped under -short")
	}
	rng := rand.New(rand.NewPCG(testSeed(t), 0xc4a5))
	path := filepath.Join(t.TempDir(), "spool.db")
	acked := map[crashKey]uint64{}
	cons := &crashConsumed{acking: map[uint64]bool{}, acked: map[uint64]bool{}}
	// At least minCycles whatever the machine; the time budget only decides
	// how many extra cycles a fast machine runs (it bounds nothing).
	const minCycles, maxCycles, budget = 20, 40, 25 * time.Second
	start := time.Now()
	cycle := 0
	for ; cycle < maxCycles && (cycle < minCycles || time.Since(start) < budget); cycle++ {
		n := crashCycle(t, rng, path, cycle, acked, cons)
		t.Logf("cycle %d: %d acknowledged", cycle, n)
	}
	if len(acked) == 0 {
		t.Fatalf("no Put was acknowledged in %d cycles", cycle)
	}

	s, err := spool.Open(path, spool.Options{LowerLaneShare: -1, LeaseTimeout: time.Hour})
	if err != nil {
		t.Fatalf("Open after %d crashes: %v", cycle, err)
	}
	defer s.Close()
	if r := s.Salvaged(); r != nil {
		t.Fatalf("Open after SIGKILL salvaged the file (bbolt is crash-safe; no damage expected): %v", r)
	}
	found := map[crashKey]uint64{}
	var lastLane uint8
	var lastID uint64
	seqs := map[[2]int][]int{}
	for {
		items, err := s.TryLease(1000)
		if err != nil {
			t.Fatalf("TryLease: %v", err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			k, ok := parseMarker(it.Data)
			if !ok {
				t.Fatalf("id %d: garbled payload %q", it.ID, it.Data)
			}
			if _, dup := found[k]; dup {
				t.Fatalf("%v stored twice (ids %d and %d)", k, found[k], it.ID)
			}
			found[k] = it.ID
			if it.Priority != crashLane(k.p) {
				t.Fatalf("%v in lane %d, want %d", k, it.Priority, crashLane(k.p))
			}
			if it.Priority < lastLane || (it.Priority == lastLane && it.ID <= lastID) {
				t.Fatalf("lease order: id %d lane %d after id %d lane %d", it.ID, it.Priority, lastID, lastLane)
			}
			lastLane, lastID = it.Priority, it.ID
			pk := [2]int{k.c, k.p}
			seqs[pk] = append(seqs[pk], k.seq)
		}
	}
	for k, id := range acked {
		got, ok := found[k]
		switch {
		case !ok && !cons.acking[id]:
			t.Errorf("acknowledged %v (id %d) is missing", k, id)
		case ok && got != id:
			t.Errorf("acknowledged %v had id %d, now %d", k, id, got)
		}
	}
	for k, id := range found {
		if cons.acked[id] {
			t.Errorf("%v (id %d) is back after its Ack returned", k, id)
		}
	}
	// Lanes are leased in id order, and one producer's Puts are sequential:
	// its messages must come out in seq order.
	maxSeq := map[[2]int]int{}
	for k := range acked {
		pk := [2]int{k.c, k.p}
		if v, ok := maxSeq[pk]; !ok || k.seq > v {
			maxSeq[pk] = k.seq
		}
	}
	for pk, ss := range seqs {
		if !slices.IsSorted(ss) {
			t.Fatalf("cycle %d producer %d: seqs out of order in id order: %v", pk[0], pk[1], ss)
		}
	}
	// A producer prints a Put's line before its next Put: the lines read
	// must cover every seq up to its last (else the parent misread them).
	for pk, m := range maxSeq {
		for seq := 0; seq <= m; seq++ {
			if _, ok := acked[crashKey{pk[0], pk[1], seq}]; !ok {
				t.Fatalf("cycle %d producer %d: no acknowledgement read for seq %d but for %d", pk[0], pk[1], seq, m)
			}
		}
	}
	t.Logf("consumer: %d acks started, %d returned", len(cons.acking), len(cons.acked))
	if st := s.Stats(); st.Messages != int64(len(found)) {
		t.Errorf("Stats.Messages = %d, leased %d", st.Messages, len(found))
	}
	t.Logf("%d cycles in %v: %d acknowledged, %d stored", cycle, time.Since(start).Round(time.Millisecond), len(acked), len(found))
}

// crashCycle runs one child, kills it at a random moment and records what it
// acknowledged. It returns how many Puts were acknowledged in this cycle.
func crashCycle(t *testing.T, rng *rand.Rand, path string, cycle int, acked map[crashKey]uint64, cons *crashConsumed) int {
	t.Helper()
	c := testkit.StartChild(t, crashEnvPath+"="+path, crashEnvCycle+"="+strconv.Itoa(cycle))
	// Mostly kill while Puts run; one cycle in five during Open. The delays
	// pick the moment of the kill: they are the scenario, not a bound. The
	// waits for the child (WaitLine, Wait) are hang guards only.
	var delay time.Duration
	if rng.IntN(5) == 0 {
		delay = time.Duration(rng.IntN(150)) * time.Millisecond
	} else {
		c.WaitLine("ready") // fails the test if the child ends first
		delay = time.Duration(20+rng.IntN(800)) * time.Millisecond
	}
	time.Sleep(delay)
	c.Kill()
	werr := c.Wait()
	n := 0
	for _, line := range c.Lines() { // complete lines only: a torn last line is not an acknowledgement
		put, err := crashLine(line, acked, cons)
		if err != nil {
			t.Fatalf("cycle %d: %v; stderr:\n%s", cycle, err, c.Stderr())
		}
		if put {
			n++
		}
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("cycle %d: child ended on its own (%v) before the kill; stderr:\n%s", cycle, werr, c.Stderr())
	}
	return n
}

// crashLine records one line of the child: "ready", "acking <id>",
// "acked <id>" or "ack <cycle> <producer> <seq> <id>" (true: a Put was
// acknowledged); anything else is an error.
func crashLine(line string, acked map[crashKey]uint64, cons *crashConsumed) (bool, error) {
	f := strings.Fields(line)
	switch {
	case len(f) == 1 && f[0] == "ready":
	case len(f) == 2 && (f[0] == "acking" || f[0] == "acked"):
		id, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return false, fmt.Errorf("bad line %q: %w", line, err)
		}
		if f[0] == "acking" {
			cons.acking[id] = true
		} else {
			cons.acked[id] = true
		}
	case len(f) == 5 && f[0] == "ack":
		var k crashKey
		var id uint64
		if _, err := fmt.Sscanf(line, "ack %d %d %d %d", &k.c, &k.p, &k.seq, &id); err != nil {
			return false, fmt.Errorf("bad line %q: %w", line, err)
		}
		acked[k] = id
		return true, nil
	default:
		return false, fmt.Errorf("child said %q", strings.TrimSpace(line))
	}
	return false, nil
}
