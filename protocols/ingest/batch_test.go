package ingest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/message"
)

// ticketName is a message's payload, or a batch's payloads joined by '+'.
func ticketName(t *Ticket) string {
	if t.M != nil {
		return string(t.M.Payload)
	}
	names := make([]string, len(t.Batch))
	for i, m := range t.Batch {
		names[i] = string(m.Payload)
	}
	return strings.Join(names, "+")
}

// batchFake is fakeSink that also takes batches: a batch is one pending
// decision, keyed by its payloads joined by '+', stored whole or not.
type batchFake struct{ *fakeSink }

func (f batchFake) SubmitBatch(ctx context.Context, ms []*message.Message) func() error {
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = string(m.Payload)
	}
	return f.Submit(ctx, &message.Message{Payload: []byte(strings.Join(names, "+"))})
}

func batch(payloads ...string) []*message.Message {
	out := make([]*message.Message, len(payloads))
	for i, p := range payloads {
		out[i] = msg("t/"+p, p, 1)
	}
	return out
}

// TestBatchAnsweredInOrder: a batch is one answer, in order with the
// messages around it, and its messages are fanned out after its commit.
func TestBatchAnsweredInOrder(t *testing.T) {
	sink := batchFake{newFakeSink()}
	c := newCore(t, Options{Sink: sink})
	loc := &recsink.Local{}
	c.AddLocal(loc)
	a := newAnswers()
	s := c.NewStream(t.Context(), 64, a.answer)
	defer s.Close()
	s.Submit(t.Context(), msg("t", "1", 1), SubmitOptions{}, nil)
	if !s.SubmitBatch(t.Context(), batch("a", "b"), SubmitOptions{}, nil) {
		t.Fatal("batch refused")
	}
	s.Submit(t.Context(), msg("t", "2", 1), SubmitOptions{}, nil)
	sink.decide(t, "2", nil)
	sink.decide(t, "a+b", nil)
	sink.decide(t, "1", nil)
	if got := a.waitN(t, 3); !slices.Equal(got, []string{"1:ok", "a+b:ok", "2:ok"}) {
		t.Fatalf("answers %v", got)
	}
	testkit.Wait(t, "fan-out", func() bool { return len(loc.Payloads()) == 4 })
	if got := loc.Payloads(); !slices.Equal(got, []string{"1", "a", "b", "2"}) {
		t.Fatalf("fan-out %v", got)
	}
}

// TestBatchRefusedWithdrawsLater: a batch refused "full" is not fanned
// out, and what the connection sent after it is withdrawn.
func TestBatchRefusedWithdrawsLater(t *testing.T) {
	sink := batchFake{newFakeSink()}
	c := newCore(t, Options{Sink: sink})
	loc := &recsink.Local{}
	c.AddLocal(loc)
	a := newAnswers()
	s := c.NewStream(t.Context(), 64, a.answer)
	defer s.Close()
	s.SubmitBatch(t.Context(), batch("a", "b"), SubmitOptions{}, nil)
	s.Submit(t.Context(), msg("t", "3", 1), SubmitOptions{}, nil)
	sink.decide(t, "a+b", fmt.Errorf("%w: test", message.ErrFull))
	if got := a.waitN(t, 2); !slices.Equal(got, []string{"a+b:full", "3:full/after"}) {
		t.Fatalf("answers %v", got)
	}
	if got := loc.Payloads(); len(got) != 0 {
		t.Fatalf("fanned out %v", got)
	}
}

// localRouter makes topics under local/ local only.
type localRouter struct{}

func (localRouter) Route(topic string) message.Route {
	return message.Route{LocalOnly: strings.HasPrefix(topic, "local/")}
}

// TestBatchSinks: a plain Sink that cannot store batches refuses them (an
// internal error, never a partial store); a BatchSink is called in order;
// a batch of local-only messages needs no Sink at all.
func TestBatchSinks(t *testing.T) {
	t.Run("no batches", func(t *testing.T) {
		c := newCore(t, Options{Sink: message.SinkFunc(func(context.Context, *message.Message) error { return nil })})
		a := newAnswers()
		s := c.NewStream(t.Context(), 8, a.answer)
		defer s.Close()
		s.SubmitBatch(t.Context(), batch("a", "b"), SubmitOptions{}, nil)
		if got := a.waitN(t, 1); got[0] != "a+b:internal" {
			t.Fatalf("answers %v", got)
		}
	})
	t.Run("plain batch sink", func(t *testing.T) {
		var got []string
		c := newCore(t, Options{Sink: plainBatch{func(ms []*message.Message) error {
			for _, m := range ms {
				got = append(got, string(m.Payload))
			}
			if len(ms) == 3 {
				return fmt.Errorf("%w: three", message.ErrTooLarge)
			}
			return nil
		}}})
		a := newAnswers()
		s := c.NewStream(t.Context(), 8, a.answer)
		defer s.Close()
		s.SubmitBatch(t.Context(), batch("a", "b"), SubmitOptions{}, nil)
		s.SubmitBatch(t.Context(), batch("c", "d", "e"), SubmitOptions{}, nil)
		if ans := a.waitN(t, 2); !slices.Equal(ans, []string{"a+b:ok", "c+d+e:too_large"}) {
			t.Fatalf("answers %v", ans)
		}
		if !slices.Equal(got, []string{"a", "b", "c", "d", "e"}) {
			t.Fatalf("sink saw %v", got)
		}
	})
	t.Run("local only", func(t *testing.T) {
		sink := batchFake{newFakeSink()}
		c := newCore(t, Options{Sink: sink, Router: localRouter{}})
		loc := &recsink.Local{}
		c.AddLocal(loc)
		a := newAnswers()
		s := c.NewStream(t.Context(), 8, a.answer)
		defer s.Close()
		ms := []*message.Message{msg("local/x", "x", 1), msg("local/y", "y", 1)}
		s.SubmitBatch(t.Context(), ms, SubmitOptions{}, nil)
		mixed := []*message.Message{msg("local/p", "p", 1), msg("q", "q", 1)}
		s.SubmitBatch(t.Context(), mixed, SubmitOptions{}, nil)
		sink.decide(t, "q", nil) // only the spooled one reaches the Sink
		if got := a.waitN(t, 2); !slices.Equal(got, []string{"x+y:ok", "p+q:ok"}) {
			t.Fatalf("answers %v", got)
		}
		testkit.Wait(t, "fan-out", func() bool { return len(loc.Payloads()) == 4 })
		if got := loc.Payloads(); !slices.Equal(got, []string{"x", "y", "p", "q"}) {
			t.Fatalf("fan-out %v", got)
		}
	})
}

type plainBatch struct {
	f func([]*message.Message) error
}

func (p plainBatch) Accept(context.Context, *message.Message) error {
	return errors.New("not for batches")
}

func (p plainBatch) AcceptBatch(_ context.Context, ms []*message.Message) error { return p.f(ms) }
