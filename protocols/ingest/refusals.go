package ingest

import (
	"sync"
	"time"
)

// RefusalLogInterval is how often a RefusalLimiter lets a line for one
// Reason through by default.
const RefusalLogInterval = 10 * time.Second

// RefusalLimiter rate-limits the log lines about refusals, per Reason: an
// operator must see that a device is denied or sends what is too large,
// but a device that keeps doing it must not fill the log (an SD card).
// The counters (ferry_ingress_rejected_total) count every refusal; the log
// has the first one, then at most one a RefusalLogInterval per reason,
// each saying how many were left out since the last. Safe for concurrent
// use; the zero value uses RefusalLogInterval.
type RefusalLimiter struct {
	Interval time.Duration

	mu         sync.Mutex
	next       [NumReasons]time.Time
	suppressed [NumReasons]int
}

// Allow reports whether a refusal for r may be logged now, and how many
// refusals for r were not logged since the last one that was.
func (l *RefusalLimiter) Allow(r Reason) (ok bool, suppressed int) {
	if r >= NumReasons {
		r = ReasonInternal
	}
	every := l.Interval
	if every <= 0 {
		every = RefusalLogInterval
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next[r]) {
		l.suppressed[r]++
		return false, 0
	}
	l.next[r] = now.Add(every)
	n := l.suppressed[r]
	l.suppressed[r] = 0
	return true, n
}
