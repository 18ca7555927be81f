// Package spoolsink is the one adapter from the spool to ingress: a
// message.OrderedSink that stores each message in a *spool.Spool
// (message.Encode, PutAsync) and maps the spool's errors to the ones the
// protocols answer devices with; batches (a STOMP transaction) go to
// spool.PutBatchAsync, all or none. The gateway uses it, and so do the ingress
// tests, so that the durability tests run against production code.
package spoolsink

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// Options configure the adapter.
type Options struct {
	// OnAccepted is called for every message the spool took: stored, or
	// recognised as a duplicate inside its dedupe window (the device is
	// acknowledged either way); nil: none. It runs in the waiter's
	// goroutine.
	OnAccepted func(m *message.Message)
	// OnDuplicate is called, after OnAccepted, for a duplicate; nil: none.
	OnDuplicate func(m *message.Message)
	// Retained: a retained message also sets (an empty one clears) the
	// retained state of its topic (spool.StateRetained: topic →
	// message.Encode), in the same transaction, so that its
	// acknowledgement means both are durable. A QoS 0 one is skipped at
	// the state's cap, a QoS 1/2 one refused (ErrFull).
	Retained bool
}

// Sink is the adapter: a message.OrderedSink that also stores batches all
// or none (AcceptBatch, SubmitBatch: the ingest core's batch interfaces).
type Sink interface {
	message.OrderedSink
	AcceptBatch(ctx context.Context, ms []*message.Message) error
	SubmitBatch(ctx context.Context, ms []*message.Message) (wait func() error)
}

// New returns the Sink over sp.
func New(sp *spool.Spool, o Options) Sink { return &sink{sp: sp, o: o} }

type sink struct {
	sp *spool.Spool
	o  Options
}

func (s *sink) Accept(ctx context.Context, m *message.Message) error { return s.Submit(ctx, m)() }

func (s *sink) entry(m *message.Message) spool.Entry {
	e := spool.Entry{
		Priority:         m.Priority,
		ExpiresAt:        m.ExpiresAt,
		DedupeKey:        m.DedupeKey,
		DedupeRecordOnly: m.DedupeRecordOnly,
		Data:             message.Encode(nil, m),
	}
	if s.o.Retained && m.Retain && len(m.Topic) <= spool.MaxStateKey {
		e.State = []spool.StateOp{RetainedOp(m, e.Data)}
	}
	return e
}

func (s *sink) AcceptBatch(ctx context.Context, ms []*message.Message) error {
	return s.SubmitBatch(ctx, ms)()
}

// SubmitBatch queues ms for the spool's writer as one batch, stored in one
// transaction, all or none (spool.PutBatchAsync), in order with what the
// same goroutine submits before and after it.
func (s *sink) SubmitBatch(ctx context.Context, ms []*message.Message) func() error {
	es := make([]spool.Entry, len(ms))
	for i, m := range ms {
		es[i] = s.entry(m)
	}
	wait := s.sp.PutBatchAsync(ctx, es)
	return func() error {
		res, err := wait()
		if err != nil {
			return mapErr(err)
		}
		for i, m := range ms {
			if s.o.OnAccepted != nil {
				s.o.OnAccepted(m)
			}
			if res[i].Duplicate && s.o.OnDuplicate != nil {
				s.o.OnDuplicate(m)
			}
		}
		return nil
	}
}

// Submit queues m for the spool's writer and returns at once; messages
// submitted one after another are stored in that order (spool.PutAsync).
func (s *sink) Submit(ctx context.Context, m *message.Message) func() error {
	wait := s.sp.PutAsync(ctx, s.entry(m))
	return func() error {
		res, err := wait()
		if err == nil {
			if s.o.OnAccepted != nil {
				s.o.OnAccepted(m)
			}
			if res.Duplicate && s.o.OnDuplicate != nil {
				s.o.OnDuplicate(m)
			}
			return nil
		}
		return mapErr(err)
	}
}

// RetainedOp is the state change of a retained message m whose encoding
// is enc: the topic's retained message is m, or none when m's payload is
// empty. Its stamp (m.AcceptedAt) keeps a later write of an older message
// from replacing it.
func RetainedOp(m *message.Message, enc []byte) spool.StateOp {
	op := spool.StateOp{Kind: spool.StateRetained, Key: []byte(m.Topic), BestEffort: m.QoS == 0}
	if !m.AcceptedAt.IsZero() {
		op.Stamp = m.AcceptedAt.UnixNano()
	}
	if len(m.Payload) > 0 {
		op.Value = enc
	}
	return op
}

// mapErr turns a spool error into the message error ingress answers with,
// keeping the spool's text.
func mapErr(err error) error {
	switch {
	case errors.Is(err, spool.ErrFull):
		return fmt.Errorf("%w: %w", message.ErrFull, err)
	case errors.Is(err, spool.ErrTooLarge):
		return fmt.Errorf("%w: %w", message.ErrTooLarge, err)
	case errors.Is(err, spool.ErrExpired):
		return fmt.Errorf("%w: %w", message.ErrExpired, err)
	case errors.Is(err, spool.ErrClosed):
		return fmt.Errorf("%w: %w", message.ErrShuttingDown, err)
	}
	return err
}
