// Package spooltest holds what tests of the spool and of its users need: the
// Queue interface that both the bbolt spool and the in-memory fake implement,
// the fake itself (NewMemory), an injectable Clock, and Run, the conformance
// suite that both implementations must pass.
//
// The suite pins the semantics of spool/api.go and spool/spool.go; where the
// doc comments leave a choice open, the test that decides it says so in a
// comment starting with "Contract:".
package spooltest

import (
	"context"
	"sync"
	"time"

	"github.com/ferrymq/ferry/spool"
)

// Queue is the method set of *spool.Spool that the conformance suite
// exercises. *spool.Spool and *Memory implement it.
type Queue interface {
	Put(ctx context.Context, e spool.Entry) (spool.PutResult, error)
	Lease(ctx context.Context, max int) ([]spool.Item, error)
	TryLease(max int) ([]spool.Item, error)
	Ack(ctx context.Context, ids ...uint64) error
	Nack(ctx context.Context, ids ...uint64) error
	DeadLetter(ctx context.Context, id uint64, reason string) error
	DLQ(afterID uint64, max int) ([]spool.DeadLetter, error)
	Requeue(ctx context.Context, ids ...uint64) (int, error)
	PurgeDLQ(ctx context.Context, ids ...uint64) (int, error)
	Replay(ctx context.Context, since time.Time) (int, error)
	Stats() spool.Stats
	Close() error
}

var (
	_ Queue = (*spool.Spool)(nil)
	_ Queue = (*Memory)(nil)
)

// Clock is a manual clock for Options.Now. It starts at a whole second and
// only moves when Advance is called. Safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock set to the current wall time truncated to the
// second (so that times survive any sub-second storage precision).
func NewClock() *Clock {
	return &Clock{t: time.Now().UTC().Truncate(time.Second)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
