package ingest

import (
	"context"
	"errors"

	"github.com/ferrymq/ferry/protocols/message"
)

// BatchSink is a Sink that stores several messages in one transaction, all
// or none (a STOMP transaction's SENDs at COMMIT). AcceptBatch returns nil
// only when every message is durable; on an error none of them is stored.
type BatchSink interface {
	AcceptBatch(ctx context.Context, ms []*message.Message) error
}

// OrderedBatchSink is the batch form of message.OrderedSink: SubmitBatch
// hands the batch to the store and returns at once; a batch and messages
// submitted one after another by one goroutine are stored in that order.
// wait returns what AcceptBatch would have; it must be called once.
type OrderedBatchSink interface {
	SubmitBatch(ctx context.Context, ms []*message.Message) (wait func() error)
}

// ErrNoBatches: the Sink cannot store messages all or none.
var ErrNoBatches = errors.New("ingest: the sink cannot store a batch atomically")

// SubmitBatch runs ms through the path as one unit: each is routed (and
// applied) as Submit does, those that are spooled are stored in one
// transaction, all or none, and the batch is answered once, in order with
// the Stream's other messages, by one Ticket (Ticket.Batch). Once it was
// stored, every message of it (and those of it that are local only) is
// fanned out, in order. It blocks as Submit does: a batch counts as one
// pending message.
func (s *Stream) SubmitBatch(ctx context.Context, ms []*message.Message, o SubmitOptions, tag any) bool {
	return s.submitWith(ctx, tag, func() *Ticket { return s.c.submitBatch(s.ctx, &s.share, ms, o) },
		func() *Ticket { return &Ticket{Batch: ms, Tag: tag} })
}

// submitBatch routes ms and hands the spooled ones to the Sink.
func (c *Core) submitBatch(ctx context.Context, sh *ctxShare, ms []*message.Message, o SubmitOptions) *Ticket {
	t := &Ticket{Batch: ms}
	var spooled []*message.Message
	for _, m := range ms {
		if !c.route(m, o) {
			spooled = append(spooled, m)
		}
	}
	if len(spooled) == 0 {
		return t // local only, all of them
	}
	if c.Closing() {
		t.out = Outcome{Reason: ReasonShuttingDown, Err: message.ErrShuttingDown}
		return t
	}
	switch bs := c.o.Sink.(type) {
	case OrderedBatchSink:
		c.arm(ctx, sh, t, o, func(mctx context.Context) { t.done = bs.SubmitBatch(mctx, spooled) })
	case BatchSink:
		c.arm(ctx, sh, t, o, func(mctx context.Context) {
			t.done = func() error { return bs.AcceptBatch(mctx, spooled) }
		})
		t.lazy = true
	default:
		t.out = Outcome{Reason: ReasonInternal, Err: ErrNoBatches}
	}
	return t
}
