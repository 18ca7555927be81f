package message

import (
	"context"
	"errors"
)

// Sink takes messages from ingress. Accept returns nil only when the message
// is durable (or, for a route that does not spool, delivered as far as it
// goes); ingress acknowledges to the device only after that. A duplicate
// inside the dedupe window is accepted (nil): the device must stop resending.
//
// Accept is called concurrently from many connections and must honour ctx:
// ingress bounds the wait so that a device is answered before its keepalive
// runs out.
type Sink interface {
	Accept(ctx context.Context, m *Message) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(ctx context.Context, m *Message) error

// Accept calls f.
func (f SinkFunc) Accept(ctx context.Context, m *Message) error { return f(ctx, m) }

// LocalPublisher delivers an accepted message to the local subscribers of one
// protocol. The gateway wires MQTT and STOMP to each other through it, so a
// message accepted on one protocol reaches subscribers on the other.
// Implementations must not block on slow subscribers.
type LocalPublisher interface {
	PublishLocal(m *Message)
}

// The errors a Sink returns, wrapped or not. Ingress maps them to protocol
// answers with errors.Is; anything else is an implementation error.
var (
	// ErrFull: the spool is at its cap and the overflow policy refused the
	// message (MQTT 5 0x97, 3.1.1 disconnect, STOMP ERROR).
	ErrFull = errors.New("spool full")
	// ErrQuotaExceeded: a per-client or per-user limit (rate, connections).
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrExpired: the message expired before it could be stored.
	ErrExpired = errors.New("message expired")
	// ErrTooLarge: the message exceeds the configured size limit.
	ErrTooLarge = errors.New("message too large")
	// ErrShuttingDown: the gateway is stopping; the device should retry
	// elsewhere or later.
	ErrShuttingDown = errors.New("gateway shutting down")
	// ErrNotAuthorized: the sender may not publish to this topic.
	ErrNotAuthorized = errors.New("not authorized")
)
