package bridge

import (
	"math/rand/v2"
	"time"
)

// backoff is exponential backoff with full jitter: the n-th delay is
// uniform in [0, min(max, base·2ⁿ)]. Not safe for concurrent use.
type backoff struct {
	base, max time.Duration
	n         int
	rand      func(n int64) int64 // [0, n); nil: math/rand/v2
}

// next returns the next delay and advances.
func (b *backoff) next() time.Duration {
	c := b.ceiling()
	if b.n < 62 {
		b.n++
	}
	r := b.rand
	if r == nil {
		r = rand.Int64N
	}
	return time.Duration(r(int64(c) + 1))
}

// ceiling is the current upper bound.
func (b *backoff) ceiling() time.Duration {
	c := b.base
	for i := 0; i < b.n && c < b.max; i++ {
		c *= 2
	}
	return min(c, b.max)
}

func (b *backoff) reset() { b.n = 0 }

// short returns a delay in [0, base] and leaves the ceiling where it is:
// for a retry that is not the link's fault.
func (b *backoff) short() time.Duration {
	r := b.rand
	if r == nil {
		r = rand.Int64N
	}
	return time.Duration(r(int64(b.base) + 1))
}
