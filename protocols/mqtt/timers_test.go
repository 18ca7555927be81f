package mqtt

import (
	"bufio"
	"context"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// The server's timers (AcceptTimeout, its keepalive cap, ConnectTimeout) are
// tested inside synctest bubbles, where time is virtual: the server's own
// listener runs over net.Pipe connections, so every goroutine blocks
// durably and the clock jumps straight to the next deadline. What is
// asserted is exact virtual time, which no machine load can change.

// pipeMochi is the server's own TCP listener (the CONNECT deadline,
// connection tracking, Close) with a testkit.PipeListener where Init would bind a
// socket.
type pipeMochi struct {
	*listener
	pipes *testkit.PipeListener
}

func (p pipeMochi) Init(log *slog.Logger) error {
	p.log = log
	p.mu.Lock()
	p.ln = p.pipes
	p.mu.Unlock()
	return nil
}

// bubbleServer runs a server whose only listener is a testkit.PipeListener; call it
// inside synctest.Test. The server is closed when fn returns.
func bubbleServer(t *testing.T, to testOptions, fn func(s *Server, ln *testkit.PipeListener)) {
	t.Helper()
	if to.Sink == nil {
		to.Sink = &recsink.Sink{}
	}
	opts := to.Options
	opts.Ingest = newCore(t, to)
	opts.Auth = message.AllowAll{}
	opts.Listeners = nil
	opts.Logger = testLogger(t)
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln := testkit.NewPipeListener()
	if err := s.ms.AddListener(pipeMochi{newListener(Listener{Name: "pipe", Kind: KindTCP, Address: "pipe"}, &s.opts, s.pre, &s.hook.stats), ln}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	fn(s, ln)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A blocked Accept is answered with PUBACK 0x97 exactly AcceptTimeout after
// the publish.
func TestAcceptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &recsink.Sink{Gate: make(chan struct{})}
		defer close(sink.Gate)
		const timeout = 3 * time.Second
		bubbleServer(t, testOptions{Sink: sink, Options: Options{AcceptTimeout: timeout}}, func(s *Server, ln *testkit.PipeListener) {
			rc, _ := connectOn(t, ln.Dial(), "v5dev", connectOpts{v5: true})
			start := time.Now()
			rc.publish("slow", []byte("m"), 1, 1)
			if got := rc.ack(4, 1); got != 0x97 {
				t.Fatalf("PUBACK %#x, want 0x97", got)
			}
			if d := time.Since(start); d != timeout {
				t.Errorf("answer after %v, want AcceptTimeout (%v)", d, timeout)
			}
			if st := s.Stats(); st.Rejected[ingest.ReasonTimeout] != 1 {
				t.Errorf("rejected %v", st.Rejected)
			}
			_ = rc.c.Close()
		})
	})
}

// The wait is capped by the client's keepalive, so that a device with a short
// keepalive is answered before it gives up on the connection.
func TestAcceptWaitFollowsKeepalive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &recsink.Sink{Gate: make(chan struct{})}
		defer close(sink.Gate)
		bubbleServer(t, testOptions{Sink: sink, Options: Options{AcceptTimeout: time.Minute}}, func(s *Server, ln *testkit.PipeListener) {
			rc, _ := connectOn(t, ln.Dial(), "v5dev", connectOpts{v5: true, keepalive: 1})
			start := time.Now()
			rc.publish("slow", []byte("m"), 1, 1)
			if got := rc.ack(4, 1); got != 0x97 {
				t.Fatalf("PUBACK %#x, want 0x97", got)
			}
			if d, want := time.Since(start), 750*time.Millisecond; d != want {
				t.Errorf("answer after %v, want %v (3/4 of the 1s keepalive)", d, want)
			}
			if st := s.Stats(); st.Rejected[ingest.ReasonTimeout] != 1 {
				t.Errorf("rejected %v", st.Rejected)
			}
			_ = rc.c.Close()
		})
	})
}

// A connection that never sends CONNECT is closed ConnectTimeout after it
// was accepted, and so is one that sends only part of it.
func TestConnectTimeout(t *testing.T) {
	for _, tc := range []struct {
		name    string
		partial []byte
	}{
		{"no CONNECT", nil},
		{"half CONNECT", packet(0x10, append(mqttString("MQTT"), 4, 0x02, 0, 60))[:8]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const timeout = 7 * time.Second
				bubbleServer(t, testOptions{Options: Options{ConnectTimeout: timeout}}, func(s *Server, ln *testkit.PipeListener) {
					c := ln.Dial()
					defer func() { _ = c.Close() }()
					start := time.Now()
					rc := &rawConn{t: t, c: c, br: bufio.NewReader(c)}
					if len(tc.partial) > 0 {
						rc.write(tc.partial)
					}
					if code := rc.expectClosed(); code != -1 {
						t.Errorf("got DISCONNECT %d", code)
					}
					if d := time.Since(start); d != timeout {
						t.Errorf("closed after %v, want ConnectTimeout (%v)", d, timeout)
					}
				})
			})
		})
	}
}
