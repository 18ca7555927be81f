package bridge

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// fakeQueue is an in-memory Queue with the spool's ordering contract: Lease
// hands out the lowest ids first, Nack puts ids back at their position with
// Attempts+1. It works inside a synctest bubble.
type fakeQueue struct {
	mu       sync.Mutex
	items    map[uint64]*spool.Item
	avail    idHeap
	leased   map[uint64]bool
	next     uint64
	sig      chan struct{}
	acked    int
	nacks    int
	dead     map[uint64]string
	leaseErr error
}

func newFakeQueue() *fakeQueue {
	return &fakeQueue{items: map[uint64]*spool.Item{}, leased: map[uint64]bool{}, dead: map[uint64]string{}, sig: make(chan struct{}, 1)}
}

func (q *fakeQueue) put(m *message.Message) uint64 {
	q.mu.Lock()
	q.next++
	id := q.next
	q.items[id] = &spool.Item{ID: id, Data: message.Encode(nil, m), Priority: m.Priority}
	heap.Push(&q.avail, id)
	q.mu.Unlock()
	signal(q.sig)
	return id
}

// putN puts n messages on topics[i%len(topics)] with payload "<seq>" per
// topic.
func (q *fakeQueue) putN(n int, topics ...string) {
	seq := map[string]int{}
	for i := range n {
		t := topics[i%len(topics)]
		q.put(&message.Message{ID: fmt.Sprintf("m%d", i), Topic: t, Payload: fmt.Appendf(nil, "%d", seq[t])})
		seq[t]++
	}
}

func (q *fakeQueue) Lease(ctx context.Context, max int) ([]spool.Item, error) {
	for {
		q.mu.Lock()
		if q.leaseErr != nil {
			q.mu.Unlock()
			return nil, q.leaseErr
		}
		if q.avail.Len() > 0 {
			var out []spool.Item
			for q.avail.Len() > 0 && len(out) < max {
				id := heap.Pop(&q.avail).(uint64)
				q.leased[id] = true
				out = append(out, *q.items[id])
			}
			q.mu.Unlock()
			return out, nil
		}
		q.mu.Unlock()
		select {
		case <-q.sig:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (q *fakeQueue) Ack(_ context.Context, ids ...uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, id := range ids {
		if q.leased[id] {
			delete(q.leased, id)
			delete(q.items, id)
			q.acked++
		}
	}
	return nil
}

func (q *fakeQueue) Nack(_ context.Context, ids ...uint64) error {
	q.mu.Lock()
	for _, id := range ids {
		if q.leased[id] {
			delete(q.leased, id)
			q.items[id].Attempts++
			heap.Push(&q.avail, id)
			q.nacks++
		}
	}
	q.mu.Unlock()
	signal(q.sig)
	return nil
}

func (q *fakeQueue) DeadLetter(_ context.Context, id uint64, reason string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.items[id]; !ok {
		return errors.New("fake: not found")
	}
	delete(q.leased, id)
	delete(q.items, id)
	q.dead[id] = reason
	return nil
}

// remaining is how many messages are neither acked nor dead.
func (q *fakeQueue) remaining() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *fakeQueue) deadLetters() map[uint64]string {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := map[uint64]string{}
	for k, v := range q.dead {
		out[k] = v
	}
	return out
}

type idHeap []uint64

func (h idHeap) Len() int           { return len(h) }
func (h idHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h idHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idHeap) Push(x any)        { *h = append(*h, x.(uint64)) }
func (h *idHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// fakeUpstream is a scripted Upstream: connections that ack at once, never,
// or by hand, and that can be dropped.
type fakeUpstream struct {
	mu       sync.Mutex
	attempts int
	fail     func(attempt int) error // nil: connect succeeds
	ack      bool                    // new connections ack at once
	dropIf   func(topic string, payload []byte) bool
	conns    []*fakeConn
	received []fakePub // everything that reached the "broker", in order
	newConn  chan *fakeConn
}

type fakePub struct {
	conn    int
	topic   string
	payload string
}

func newFakeUpstream(ack bool) *fakeUpstream {
	return &fakeUpstream{ack: ack, newConn: make(chan *fakeConn, 1000)}
}

func (u *fakeUpstream) Connect(ctx context.Context, cfg ConnConfig) (Conn, error) {
	u.mu.Lock()
	u.attempts++
	n := u.attempts
	fail := u.fail
	u.mu.Unlock()
	if fail != nil {
		if err := fail(n); err != nil {
			return nil, err
		}
	}
	u.mu.Lock()
	c := &fakeConn{u: u, n: len(u.conns), cfg: cfg, lost: make(chan struct{}), ack: u.ack}
	u.conns = append(u.conns, c)
	u.mu.Unlock()
	u.newConn <- c
	return c, nil
}

func (u *fakeUpstream) log() []fakePub {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]fakePub(nil), u.received...)
}

type fakeConn struct {
	u    *fakeUpstream
	n    int
	cfg  ConnConfig
	lost chan struct{}
	once sync.Once
	err  error

	mu      sync.Mutex
	ack     bool
	pending []*fakeToken
}

type fakeToken struct {
	done chan struct{}
	err  error
}

func (t *fakeToken) Done() <-chan struct{} { return t.done }
func (t *fakeToken) Error() error          { return t.err }

func (c *fakeConn) Publish(topic string, payload []byte) Token {
	t := &fakeToken{done: make(chan struct{})}
	select {
	case <-c.lost:
		t.err = errors.New("fake: not connected")
		close(t.done)
		return t
	default:
	}
	c.u.mu.Lock()
	c.u.received = append(c.u.received, fakePub{c.n, topic, string(payload)})
	drop := c.u.dropIf != nil && c.u.dropIf(topic, payload)
	c.u.mu.Unlock()
	c.mu.Lock()
	if c.ack && !drop {
		close(t.done)
	} else {
		c.pending = append(c.pending, t)
	}
	c.mu.Unlock()
	if drop {
		c.drop(errors.New("fake: broker closed the connection"))
	}
	return t
}

// ackAll acks every pending publish.
func (c *fakeConn) ackAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.pending {
		close(t.done)
	}
	c.pending = nil
}

// drop loses the connection; pending tokens fail, as paho's cleanup does.
func (c *fakeConn) drop(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.lost)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.pending {
		t.err = errors.New("fake: connection lost before publish completed")
		close(t.done)
	}
	c.pending = nil
}

func (c *fakeConn) Lost() <-chan struct{} { return c.lost }
func (c *fakeConn) Err() error {
	select {
	case <-c.lost:
		return c.err
	default:
		return nil
	}
}
func (c *fakeConn) Close() { c.drop(nil) }

var itemGarbage = spool.Item{ID: 3, Data: []byte{0xff, 1, 2}}
