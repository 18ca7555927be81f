package spooltest

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// Sink stores accepted messages in sp the way the gateway's sink does: a
// message.OrderedSink over spool.PutAsync (so pipelined messages keep their
// order and share commits), with the spool's errors mapped to the ones
// ingress answers devices with. For ingress tests and benchmarks.
func Sink(sp *spool.Spool) message.OrderedSink { return sink{sp} }

type sink struct{ sp *spool.Spool }

func (s sink) Accept(ctx context.Context, m *message.Message) error { return s.Submit(ctx, m)() }

func (s sink) Submit(ctx context.Context, m *message.Message) func() error {
	wait := s.sp.PutAsync(ctx, spool.Entry{Priority: m.Priority, ExpiresAt: m.ExpiresAt, DedupeKey: m.DedupeKey, Data: message.Encode(nil, m)})
	return func() error {
		_, err := wait()
		switch {
		case err == nil:
			return nil
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
}
