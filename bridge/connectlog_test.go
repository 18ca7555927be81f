package bridge

import (
	"testing"
	"time"
)

func TestConnectLogRateLimitsAnOutage(t *testing.T) {
	c := connectLog{every: 30 * time.Second}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	warns := 0
	suppressedSum := 0
	// An outage of 100 s with an attempt every 500 ms: 200 attempts.
	for i := range 200 {
		warn, n := c.failed(t0.Add(time.Duration(i) * 500 * time.Millisecond))
		if i == 0 && !warn {
			t.Fatal("the first failure of an outage is not logged")
		}
		if warn {
			warns++
			suppressedSum += n
		}
	}
	// WARN at 0, 30, 60, 90 s.
	if warns != 4 {
		t.Errorf("%d WARN lines over 100 s at a 30 s interval, want 4", warns)
	}
	if want := 200 - 4 - c.suppressed; suppressedSum != want {
		t.Errorf("the WARN lines report %d suppressed attempts, want %d", suppressedSum, want)
	}
	failures, down := c.connected(t0.Add(100 * time.Second))
	if failures != 200 || down != 100*time.Second {
		t.Errorf("connected: %d failures over %v, want 200 over 100s", failures, down)
	}
	// The next outage starts afresh: its first failure is logged at once.
	if warn, n := c.failed(t0.Add(101 * time.Second)); !warn || n != 0 {
		t.Errorf("first failure of the next outage: warn=%v suppressed=%d, want true 0", warn, n)
	}
	if f, d := (&connectLog{}).connected(t0); f != 0 || d != 0 {
		t.Errorf("connected without an outage: %d %v", f, d)
	}
}
