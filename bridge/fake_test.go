package bridge

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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
	// leaseTimeout > 0 hands a leased message out again after this long
	// without Ack or Nack, as the spool does.
	leaseTimeout time.Duration
	leasedAt     map[uint64]time.Time
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
		q.expireLocked()
		if q.leaseErr != nil {
			q.mu.Unlock()
			return nil, q.leaseErr
		}
		if q.avail.Len() > 0 {
			var out []spool.Item
			for q.avail.Len() > 0 && len(out) < max {
				id := heap.Pop(&q.avail).(uint64)
				q.leased[id] = true
				if q.leaseTimeout > 0 {
					if q.leasedAt == nil {
						q.leasedAt = map[uint64]time.Time{}
					}
					q.leasedAt[id] = time.Now()
				}
				out = append(out, *q.items[id])
			}
			q.mu.Unlock()
			return out, nil
		}
		var expiry <-chan time.Time
		if q.leaseTimeout > 0 && len(q.leasedAt) > 0 {
			expiry = time.After(q.leaseTimeout / 10)
		}
		q.mu.Unlock()
		select {
		case <-q.sig:
		case <-expiry:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// expireLocked puts messages whose lease ran out back, like a Nack.
func (q *fakeQueue) expireLocked() {
	for id, at := range q.leasedAt {
		if q.leased[id] && time.Since(at) >= q.leaseTimeout {
			delete(q.leased, id)
			delete(q.leasedAt, id)
			q.items[id].Attempts++
			heap.Push(&q.avail, id)
		}
	}
}

// leasedCount is how many messages are leased now.
func (q *fakeQueue) leasedCount() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.leased)
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
// or by hand, that answer PINGREQs (unless blackholed), and that can be
// dropped. Acks and ping answers are delivered in order by one goroutine
// per connection, after latency.
type fakeUpstream struct {
	mu       sync.Mutex
	attempts int
	fail     func(attempt int) error // nil: connect succeeds
	ack      bool                    // new connections ack at once
	// dropIf makes the "broker" close the connection when it receives a
	// publish, after answering what came before it (as mosquitto does).
	dropIf func(topic string, payload []byte) bool
	// dropLoses: answers the broker sent within this long before such a
	// close are lost with it (a TCP reset discards what the client had not
	// read yet).
	dropLoses time.Duration
	// refuseIf makes Publish fail at once without sending.
	refuseIf func(topic string, payload []byte) bool
	// latency delays connects, acks and ping answers by a round trip.
	latency time.Duration
	// explicit: the connections refuse single messages explicitly, as
	// JetStream does (explicitRefusals).
	explicit bool
	// cutAfter, when it returns d > 0, drops connection n (0-based) d after
	// it came up: a flapping link.
	cutAfter func(n int) time.Duration
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
	fail, lat := u.fail, u.latency
	u.mu.Unlock()
	if fail != nil {
		if err := fail(n); err != nil {
			return nil, err
		}
	}
	if lat > 0 {
		select {
		case <-time.After(lat):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	u.mu.Lock()
	c := &fakeConn{u: u, n: len(u.conns), cfg: cfg, lossSignal: lossSignal{lost: make(chan struct{})}, ack: u.ack, latency: lat,
		out: make(chan *fakeDelivery, 1<<14)}
	u.conns = append(u.conns, c)
	cut := u.cutAfter
	u.mu.Unlock()
	go c.deliver()
	if cut != nil {
		if d := cut(c.n); d > 0 {
			time.AfterFunc(d, func() { c.drop(errors.New("fake: link cut")) })
		}
	}
	u.newConn <- c
	return c, nil
}

func (u *fakeUpstream) log() []fakePub {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]fakePub(nil), u.received...)
}

type fakeConn struct {
	u   *fakeUpstream
	n   int
	cfg ConnConfig
	lossSignal
	latency time.Duration
	out     chan *fakeDelivery

	mu        sync.Mutex
	ack       bool
	blackhole bool
	pending   []uint16        // received, not acked
	queued    []*fakeDelivery // sent, not delivered yet
}

// fakeDelivery is an ack, a ping answer or the broker's close on its way
// back.
type fakeDelivery struct {
	sent, due time.Time
	pids      []uint16
	drop      error
	lost      bool // guarded by fakeConn.mu
	pong      *Pong
}

func (c *fakeConn) deliver() {
	for {
		select {
		case d := <-c.out:
			if w := time.Until(d.due); w > 0 {
				select {
				case <-time.After(w):
				case <-c.lost:
					return
				}
			}
			c.mu.Lock()
			lost := d.lost
			c.queued = c.queued[1:]
			c.mu.Unlock()
			if lost || !c.alive() {
				continue
			}
			switch {
			case d.drop != nil:
				c.drop(d.drop)
			case d.pong != nil:
				d.pong.Answer()
			case c.cfg.OnAck != nil:
				c.cfg.OnAck(d.pids)
			}
		case <-c.lost:
			return
		}
	}
}

// send queues d; c.mu is held.
func (c *fakeConn) send(d *fakeDelivery) {
	d.sent = time.Now()
	d.due = d.sent.Add(c.latency)
	c.queued = append(c.queued, d)
	c.out <- d
}

func (c *fakeConn) alive() bool {
	select {
	case <-c.lost:
		return false
	default:
		return true
	}
}

func (c *fakeConn) Publish(pid uint16, topic string, payload []byte) error {
	if !c.alive() {
		return errors.New("fake: not connected")
	}
	c.u.mu.Lock()
	if c.u.refuseIf != nil && c.u.refuseIf(topic, payload) {
		c.u.mu.Unlock()
		return errors.New("fake: publish failed before it was sent")
	}
	c.mu.Lock()
	bh := c.blackhole
	c.mu.Unlock()
	if bh {
		c.u.mu.Unlock()
		return nil
	}
	c.u.received = append(c.u.received, fakePub{c.n, topic, string(payload)})
	drop := c.u.dropIf != nil && c.u.dropIf(topic, payload)
	loses := c.u.dropLoses
	c.u.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if drop {
		for _, d := range c.queued {
			if time.Since(d.sent) < loses {
				d.lost = true
			}
		}
		c.send(&fakeDelivery{drop: errors.New("fake: broker closed the connection")})
		return nil
	}
	if c.ack {
		c.send(&fakeDelivery{pids: []uint16{pid}})
	} else {
		c.pending = append(c.pending, pid)
	}
	return nil
}

func (c *fakeConn) Flush() {}

func (c *fakeConn) RefusesExplicitly() bool { return c.u.explicit }

// inFlight is how many publishes the "broker" received and has not acked.
func (c *fakeConn) inFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

func (c *fakeConn) Ping() *Pong {
	pong := NewPong()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.alive() && !c.blackhole {
		c.send(&fakeDelivery{pong: pong})
	}
	return pong
}

// ackAll acks every pending publish.
func (c *fakeConn) ackAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) > 0 && c.alive() {
		c.send(&fakeDelivery{pids: c.pending})
	}
	c.pending = nil
}

// setBlackhole makes the connection drop everything from now on, like a
// dead route: nothing arrives, nothing is answered, nothing is closed.
func (c *fakeConn) setBlackhole() {
	c.mu.Lock()
	c.blackhole = true
	c.mu.Unlock()
}

// drop loses the connection (nil: as Close does).
func (c *fakeConn) drop(err error) {
	if err == nil {
		c.closeLost()
		return
	}
	c.setLost(err)
}

func (c *fakeConn) Close() { c.drop(nil) }

var itemGarbage = spool.Item{ID: 3, Data: []byte{0xff, 1, 2}}
