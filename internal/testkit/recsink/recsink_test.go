package recsink

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ferrymq/ferry/protocols/message"
)

func msg(p string) *message.Message { return &message.Message{Topic: "t", Payload: []byte(p)} }

// TestSink: Entered sees each call, Gate holds it, Err refuses without
// recording, a batch is recorded whole or not at all, and a context that
// ends a held Accept is reported on Cancelled.
func TestSink(t *testing.T) {
	s := &Sink{Entered: make(chan *message.Message, 1), Gate: make(chan struct{}), Cancelled: make(chan error, 1)}
	done := make(chan error, 1)
	go func() { done <- s.Accept(t.Context(), msg("a")) }()
	if m := <-s.Entered; string(m.Payload) != "a" {
		t.Fatalf("entered %q", m.Payload)
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d recorded before the gate opened", n)
	}
	close(s.Gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	refuse := errors.New("refused")
	s.SetErr(func(m *message.Message) error {
		if string(m.Payload) == "x" {
			return refuse
		}
		return nil
	})
	if err := s.Accept(t.Context(), msg("x")); !errors.Is(err, refuse) {
		t.Fatalf("Accept x: %v", err)
	}
	<-s.Entered
	if err := s.AcceptBatch(t.Context(), []*message.Message{msg("b"), msg("x")}); !errors.Is(err, refuse) {
		t.Fatalf("AcceptBatch with x: %v", err)
	}
	if err := s.AcceptBatch(t.Context(), []*message.Message{msg("b"), msg("c")}); err != nil {
		t.Fatal(err)
	}
	if got := s.Payloads(); !slices.Equal(got, []string{"a", "b", "c"}) || s.Calls() != 2 {
		t.Fatalf("recorded %v after %d calls, want [a b c] after 2", got, s.Calls())
	}
	if got := s.WaitMessages(t, 3); len(got) != 3 {
		t.Fatalf("WaitMessages: %d", len(got))
	}

	held := &Sink{Gate: make(chan struct{}), Cancelled: make(chan error, 1)}
	ctx, cancel := context.WithCancelCause(t.Context())
	cause := errors.New("shutting down")
	cancel(cause)
	if err := held.Accept(ctx, msg("d")); !errors.Is(err, context.Canceled) {
		t.Fatalf("held Accept: %v", err)
	}
	if got := <-held.Cancelled; !errors.Is(got, cause) {
		t.Fatalf("cancelled with %v, want %v", got, cause)
	}
	if n := len(held.Messages()); n != 0 {
		t.Fatalf("%d recorded after a cancelled Accept", n)
	}
}

// TestLocal: what is published is recorded in order.
func TestLocal(t *testing.T) {
	var l Local
	l.PublishLocal(msg("1"))
	l.PublishLocal(msg("2"))
	if got := l.Payloads(); !slices.Equal(got, []string{"1", "2"}) || len(l.Messages()) != 2 {
		t.Fatalf("published %v", got)
	}
}
