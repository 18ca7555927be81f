package stomp_test

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/protocols/stomp"
)

// The gateway's wiring in miniature: a Sink that makes messages durable
// (here: pretends to), an Authorizer, and a listener. The server answers a
// SEND with its RECEIPT only after Accept returned nil.
func ExampleServer() {
	sink := message.SinkFunc(func(ctx context.Context, m *message.Message) error {
		// spool.Put(ctx, spool.Entry{Data: message.Encode(nil, m), ...})
		return nil
	})
	s, err := stomp.NewServer(stomp.Options{
		Sink:   sink,
		Auth:   message.AllowAll{}, // the gateway passes its users and ACLs
		Logger: slog.Default(),
	})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0") // tls.NewListener(ln, conf) for TLS
	if err != nil {
		panic(err)
	}
	go func() { _ = s.Serve(ln) }() // returns stomp.ErrServerClosed after Close

	// ... on shutdown: pending SENDs get "server shutting down", no RECEIPT.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.Close(ctx)
}
