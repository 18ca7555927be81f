package message

import "context"

// OrderedSink is an optional extension of Sink for ingress that keeps many
// messages of one connection in flight (STOMP pipelining) without letting
// them overtake each other, which concurrent Accept calls cannot promise:
// each call races to the store.
//
// Submit hands m to the store and returns without waiting for durability;
// messages submitted one after another (by one goroutine) are stored in
// that order. It may block briefly for backpressure. The returned wait
// blocks until m is durable (or refused) and returns what Accept would
// have returned; it must be called exactly once. ctx bounds the submission
// and the wait.
type OrderedSink interface {
	Sink
	Submit(ctx context.Context, m *Message) (wait func() error)
}
