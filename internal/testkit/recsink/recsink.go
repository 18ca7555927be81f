// Package recsink is the recording message.Sink of the tests: it keeps every
// message it accepted, in the order Accept returned, and can be told to hold
// messages (Gate), to take its time (Delay), to refuse (Err), and to report
// each call (Entered) and each wait a context ended (Cancelled). It imports
// protocols/message and testkit only, so that the tests of every package
// above message can use it. Only tests import it.
//
// A Sink is a plain message.Sink plus AcceptBatch (ingest.BatchSink): it is
// not a message.OrderedSink, so the ingest core calls it for one message of
// a connection at a time. A test that needs an OrderedSink, or decides each
// message by hand, keeps its own.
package recsink

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
)

// Sink records accepted messages. The zero value accepts and records
// everything. Set the fields before the sink is in use; only Err may
// change later, through SetErr. Safe for concurrent use.
type Sink struct {
	// Entered, when set, receives each message as Accept is called, before
	// anything else happens to it (AcceptBatch does not send).
	Entered chan *message.Message
	// Gate, when set, makes Accept and AcceptBatch wait until it is closed
	// (or their ctx ends).
	Gate chan struct{}
	// Delay, when set, makes Accept wait that long after Gate (or until its
	// ctx ends).
	Delay time.Duration
	// Cancelled, when set, receives context.Cause(ctx) when ctx ends a wait
	// at Gate or Delay.
	Cancelled chan error
	// Err, when set, decides the answer to each message that got past Gate
	// and Delay: an error refuses it (not recorded), nil records it.
	Err func(*message.Message) error

	recording // its mu also guards calls and Err
	calls     int
}

// Accept records m unless Err refuses it; see the fields for what happens
// before.
func (s *Sink) Accept(ctx context.Context, m *message.Message) error {
	s.mu.Lock()
	s.calls++
	entered, errf := s.Entered, s.Err
	s.mu.Unlock()
	if entered != nil {
		entered <- m
	}
	if err := s.hold(ctx, true); err != nil {
		return err
	}
	if errf != nil {
		if err := errf(m); err != nil {
			return err
		}
	}
	s.add(m)
	return nil
}

// AcceptBatch records ms all or none (a STOMP transaction's COMMIT): it
// waits at Gate (not Delay), and one message refused by Err refuses the
// batch.
func (s *Sink) AcceptBatch(ctx context.Context, ms []*message.Message) error {
	if err := s.hold(ctx, false); err != nil {
		return err
	}
	s.mu.Lock()
	errf := s.Err
	s.mu.Unlock()
	if errf != nil {
		for _, m := range ms {
			if err := errf(m); err != nil {
				return err
			}
		}
	}
	s.add(ms...)
	return nil
}

// hold waits at Gate and, with delay, for Delay.
func (s *Sink) hold(ctx context.Context, delay bool) error {
	if s.Gate != nil {
		select {
		case <-s.Gate:
		case <-ctx.Done():
			return s.cancelled(ctx)
		}
	}
	if delay && s.Delay > 0 {
		t := time.NewTimer(s.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return s.cancelled(ctx)
		}
	}
	return nil
}

func (s *Sink) cancelled(ctx context.Context) error {
	if s.Cancelled != nil {
		s.Cancelled <- context.Cause(ctx)
	}
	return ctx.Err()
}

// SetErr replaces Err while the sink is in use (nil: accept everything).
func (s *Sink) SetErr(f func(*message.Message) error) {
	s.mu.Lock()
	s.Err = f
	s.mu.Unlock()
}

// Calls is how many times Accept was called, refused calls included.
func (s *Sink) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// WaitMessages waits (hang guard: testkit.DefaultWait) until the sink
// holds at least n messages and returns them.
func (s *Sink) WaitMessages(t testing.TB, n int) []*message.Message {
	t.Helper()
	var msgs []*message.Message
	testkit.Wait(t, fmt.Sprintf("%d messages in the sink", n), func() bool {
		msgs = s.Messages()
		return len(msgs) >= n
	})
	return msgs
}

// Local is a message.LocalPublisher that records what ingress fans out to
// local subscribers, in order. The zero value is ready. Safe for
// concurrent use.
type Local struct {
	recording
}

// PublishLocal records m.
func (l *Local) PublishLocal(m *message.Message) { l.add(m) }

// recording is the list of messages a Sink or a Local keeps.
type recording struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (r *recording) add(ms ...*message.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, ms...)
	r.mu.Unlock()
}

// Messages returns a copy of the messages recorded so far, in order.
func (r *recording) Messages() []*message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*message.Message(nil), r.msgs...)
}

// Payloads returns the payloads of Messages as strings.
func (r *recording) Payloads() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.msgs))
	for i, m := range r.msgs {
		out[i] = string(m.Payload)
	}
	return out
}
