package gcfloor

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, floor uint64
		want        int
	}{
		{2 * mib, 16 * mib, 400},   // 2 + 14 = 16 MiB would be 700; 400 keeps 4 MiB × 4 at the floor
		{4 * mib, 16 * mib, 300},   // 4 + 12 = 16 MiB
		{8 * mib, 16 * mib, 100},   // 2 × live is the floor: GOGC's own rule
		{20 * mib, 16 * mib, 100},  // above the floor: GOGC's own rule
		{0, 16 * mib, 400},         // nothing live yet: the minimum heap's bound
		{1024, 64 * mib, 1600},     // a tiny heap: 4 MiB × 16 = 64 MiB
		{7 * mib, 16 * mib, 128},   // 7 + 9 = 16 MiB
		{16 * mib, 16 * mib, 100},  // at the floor
		{mib / 2, mib, 100},        // a floor under the minimum heap: GOGC's own rule
		{6 * mib, 13 * mib, 116},   // 6 + 7 = 13 MiB
		{3 * mib, 128 * mib, 3200}, // 3 + 125 would be 4166; the minimum heap bounds it
	} {
		if got := Percent(c.live, c.floor); got != c.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", c.live, c.floor, got, c.want)
		}
	}
}

// TestStartFollowsTheLiveHeap: after collections the runtime's GOGC follows
// the live heap: raised while it is small, GOGC's own 100 while it holds
// more than half the floor, raised again once that is garbage, so the
// tuner runs after every collection, not once.
func TestStartFollowsTheLiveHeap(t *testing.T) {
	const floor = 64 << 20
	Start(floor)
	gogc := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	// until collects until GOGC satisfies ok (the cleanup that retunes
	// runs after the collection, on its own goroutine).
	until := func(what string, ok func(uint64) bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute) // hang guard
		for runtime.GC(); !ok(gogc()); runtime.GC() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: GOGC still %d after a minute of collections", what, gogc())
			}
			time.Sleep(time.Millisecond)
		}
	}
	until("small heap", func(p uint64) bool { return p > 100 && p <= floor*100/heapMinimum })
	held := make([]*[1 << 20]byte, 40) // 40 MiB live: above half the floor
	for i := range held {
		held[i] = new([1 << 20]byte)
	}
	until("40 MiB live", func(p uint64) bool { return p == 100 })
	runtime.KeepAlive(held)
	until("released", func(p uint64) bool { return p > 100 })
}
