package spool

import (
	"math"
	"testing"
	"time"
)

// Times outside int64 nanoseconds saturate instead of wrapping: a wrapped
// "since year 9999" was negative and replayed everything (issue 11, item 10).
func TestNanoSaturates(t *testing.T) {
	for _, c := range []struct {
		t    time.Time
		want int64
	}{
		{time.Time{}, 0},
		{time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), math.MaxInt64},
		{time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC), math.MaxInt64},
		{time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC), math.MinInt64},
		{time.Unix(0, 42), 42},
	} {
		if got := nano(c.t); got != c.want {
			t.Errorf("nano(%v) = %d, want %d", c.t, got, c.want)
		}
	}
}
