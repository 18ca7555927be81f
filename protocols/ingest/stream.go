package ingest

import (
	"context"
	"fmt"
	"sync"

	"github.com/ferrymq/ferry/protocols/message"
)

// Stream is the ordered ingest path of one connection: see the package
// comment. Submit and Refuse are called by one goroutine (the connection's
// reader); answers come from the Stream's own goroutine, in submission
// order.
type Stream struct {
	c      *Core
	answer func(*Ticket, Outcome)
	ctx    context.Context
	stop   context.CancelFunc
	depth  int
	share  ctxShare // the submitting goroutine's

	mu     sync.Mutex
	queue  []*Ticket // submitted, not yet answered; queue[0] is being waited for
	closed bool
	exited bool // run has returned: answers are given inline
	// barrier is set from a transient refusal until its answer is out:
	// messages submitted meanwhile are refused with it, so that nothing the
	// device sent after the refused message is stored before it is sent
	// again.
	barrier *Outcome
	grew    chan struct{} // cap 1: queue grew or closed (run waits)
	room    chan struct{} // cap 1: queue shrank or closed (Submit waits)
	done    chan struct{}
}

// NewStream opens a Stream with at most depth messages pending (minimum 1).
// The messages' contexts derive from ctx: cancel it with cause
// message.ErrShuttingDown to fail what is pending when the server stops.
// answer is called for every message in submission order, from the
// Stream's goroutine, once its outcome is known; the message is fanned out
// after answer returns when it was accepted and Ticket.FanOut is set. answer
// writes the protocol's acknowledgement or refusal; it must not block for
// long (the protocols' socket writes do not block).
func (c *Core) NewStream(ctx context.Context, depth int, answer func(*Ticket, Outcome)) *Stream {
	s := &Stream{c: c, answer: answer, depth: max(1, depth),
		grew: make(chan struct{}, 1), room: make(chan struct{}, 1), done: make(chan struct{})}
	s.ctx, s.stop = c.bind(ctx)
	go s.run()
	return s
}

// Pending returns how many messages are submitted and not yet answered.
func (s *Stream) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Depth is the Stream's bound on pending messages.
func (s *Stream) Depth() int { return s.depth }

// Submit runs m through the path (route, apply, local-only, Sink) and
// queues it for its answer; tag is returned in the Ticket. It blocks while
// Depth messages are pending, until ctx is done (then it returns false and
// m was not submitted) or the Stream closes (false).
func (s *Stream) Submit(ctx context.Context, m *message.Message, o SubmitOptions, tag any) bool {
	return s.submitWith(ctx, tag, func() *Ticket { return s.c.submit(s.ctx, &s.share, m, o) }, func() *Ticket { return &Ticket{M: m, Tag: tag} })
}

// submitWith queues the Ticket mk submits, or, behind a barrier, the one
// refused makes instead, with the barrier's outcome. Neither func escapes:
// the Ticket of a refusal costs nothing unless it is needed.
func (s *Stream) submitWith(ctx context.Context, tag any, mk, refused func() *Ticket) bool {
	for {
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			return false
		case s.barrier != nil:
			out := *s.barrier
			t := refused()
			t.out = Outcome{Reason: out.Reason, Err: fmt.Errorf("%w (%w)", ErrCancelledAfter, out.Err)}
			s.queue = append(s.queue, t)
			s.mu.Unlock()
			s.c.cancelled.Add(1)
			signal(s.grew)
			return true
		case len(s.queue) < s.depth:
			s.mu.Unlock()
			t := mk()
			t.Tag, t.FanOut = tag, true
			s.push(t)
			return true
		}
		s.mu.Unlock()
		select {
		case <-s.room:
		case <-ctx.Done():
			return false
		}
	}
}

// Refuse queues the answer for a message refused before it reached the
// Sink (ACL, invalid topic, too large, rate), in order with the others: it
// is answered after every earlier message. m may be nil. It never waits.
func (s *Stream) Refuse(m *message.Message, r Reason, err error, tag any) {
	s.push(&Ticket{M: m, Tag: tag, out: Outcome{Reason: r, Err: err}})
}

func (s *Stream) push(t *Ticket) {
	s.mu.Lock()
	if s.exited {
		s.mu.Unlock()
		out := t.out
		if t.done != nil {
			t.withdrawAfter(ReasonShuttingDown, message.ErrShuttingDown)
			out = t.wait()
		}
		s.answer(t, out)
		return
	}
	if !t.out.OK() && t.done == nil && t.out.Reason.Transient() && resent(t) && s.barrier == nil {
		// Refused at read time: nothing later is pending yet.
		out := t.out
		s.barrier = &out
	}
	s.queue = append(s.queue, t)
	s.mu.Unlock()
	signal(s.grew)
}

// resent reports whether the device sends t's message again after a
// refusal: everything but QoS 0, which nobody resends (and whose refusal
// therefore holds nothing back).
func resent(t *Ticket) bool { return t.M == nil || t.M.QoS > 0 }

// Close ends the Stream once every message submitted so far has been
// answered (they are not withdrawn: the device gets no answer, but what is
// stored was sent before anything it sends after reconnecting). Close waits
// for that; each message is bounded by its timeout.
func (s *Stream) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	signal(s.grew)
	signal(s.room)
	<-s.done
	s.stop()
}

func (s *Stream) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		for len(s.queue) == 0 {
			if s.closed {
				s.exited = true
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			<-s.grew
			s.mu.Lock()
		}
		t := s.queue[0]
		s.mu.Unlock()

		out := t.wait()
		if !out.OK() && out.Reason.Transient() && resent(t) {
			s.withdrawLater(out)
		}
		// Fan out before the answer: a retained message is then the
		// topic's retained message (and live subscribers have it queued)
		// by the time the device holds its acknowledgement, so a client
		// that subscribes after it gets it as retained. PublishLocal
		// never waits for a subscriber.
		if out.OK() && t.FanOut {
			if t.M != nil {
				s.c.FanOut(t.M)
			}
			for _, m := range t.Batch {
				s.c.FanOut(m)
			}
		}
		s.answer(t, out)

		s.mu.Lock()
		s.queue[0] = nil
		s.queue = s.queue[1:]
		if len(s.queue) == 0 {
			s.queue = nil // let the backing array go
		}
		if s.barrier != nil && !out.OK() && out.Reason.Transient() && resent(t) {
			s.barrier = nil // the refusal is out: what the device sends next is new
		}
		s.mu.Unlock()
		signal(s.room)
	}
}

// withdrawLater withdraws every pending message after queue[0] (which just
// failed with out) and refuses what is submitted until out is answered.
// Only the Stream's goroutine calls it.
func (s *Stream) withdrawLater(out Outcome) {
	s.mu.Lock()
	if s.barrier == nil {
		s.barrier = &out
	}
	later := append([]*Ticket(nil), s.queue[1:]...)
	s.mu.Unlock()
	n := 0
	for _, l := range later {
		if l.withdrawAfter(out.Reason, out.Err) {
			n++
		}
	}
	s.c.cancelled.Add(uint64(n))
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
