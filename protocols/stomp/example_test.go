package stomp_test

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/protocols/stomp"
)

// The gateway's wiring in miniature: an ingest core over a Sink that makes
// messages durable (here: pretends to; the gateway passes
// spoolsink.New(spool, ...)), an Authorizer, and a listener. The server
// answers a SEND with its RECEIPT only after the Sink stored it.
func ExampleServer() {
	sink := message.SinkFunc(func(ctx context.Context, m *message.Message) error {
		return nil
	})
	core, err := ingest.New(ingest.Options{Sink: sink})
	if err != nil {
		panic(err)
	}
	s, err := stomp.NewServer(stomp.Options{
		Ingest: core,
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
