package stomp

import (
	"runtime"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
)

// TestConnectContentLengthAllocatesNothing (issue 11 item 7): a CONNECT
// with content-length:1048576 (max_frame_size) and no body made the
// server allocate 1 MiB for a client that has not logged in, and hold it
// until the connect deadline. The CONNECT frame is bounded by
// MaxConnectSize: refused from its header, at once, with next to nothing
// allocated.
func TestConnectContentLengthAllocatesNothing(t *testing.T) {
	s, addr := startServer(t, testOptions{})
	const conns = 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cs := make([]*rawClient, conns)
	for i := range cs {
		cs[i] = dialRaw(t, addr)
		cs[i].write([]byte("CONNECT\naccept-version:1.2\nhost:x\ncontent-length:1048576\n\n"))
	}
	for _, c := range cs {
		c.expectError("frame too large")
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / conns; per > 64<<10 {
		t.Errorf("%d bytes allocated per connection that sent a CONNECT header, want < 64 KiB", per)
	}
	if got := s.Stats().Errors[ingest.ReasonTooLarge]; got != conns {
		t.Errorf("Errors[too_large] %d, want %d", got, conns)
	}
	// After the login the frame limit is max_frame_size again.
	c := connectRaw(t, addr, V12)
	c.send(frame.New(frame.SEND, frame.Destination, "/queue/big", frame.Receipt, "r"))
	big := AppendFrame(nil, &frame.Frame{Command: frame.SEND, Header: frame.NewHeader(frame.Destination, "/queue/big",
		frame.ContentLength, "100000", frame.Receipt, "big"), Body: make([]byte, 100000)}, V12)
	c.write(big)
	for _, want := range []string{"r", "big"} {
		if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != want {
			t.Fatalf("got %s %v, want RECEIPT %s", f.Command, headerList(f), want)
		}
	}
}

// TestPendingConnectionsCapped (issue 11 item 7): 200 idle sockets (the
// connection limit) locked real logins out for the read timeout. Sockets
// before their login are capped by MaxPending, not MaxConnections, and a
// new one closes the oldest: a real client logs in while they keep coming.
func TestPendingConnectionsCapped(t *testing.T) {
	const pending = 3
	s, addr := startServer(t, testOptions{Options: Options{MaxPending: pending, MaxConnections: pending}})
	idle := make([]*rawClient, 3*pending)
	for i := range idle {
		idle[i] = dialRaw(t, addr)
		waitFor(t, "the connection to be tracked", func() bool { return s.pre.Len() == min(i+1, pending) })
	}
	for _, c := range idle[:2*pending] {
		c.expectClosed()
	}
	waitFor(t, "the closed ones counted", func() bool { return s.Stats().PendingClosed == 2*pending })
	c := connectRaw(t, addr, V12)
	c.send(frame.New(frame.SEND, frame.Destination, "/queue/a", frame.Receipt, "1"))
	if f := c.next(); f.Command != frame.RECEIPT {
		t.Fatalf("got %s %v", f.Command, headerList(f))
	}
	if n := s.pre.Len(); n > pending {
		t.Fatalf("%d connections before login, cap %d", n, pending)
	}
}

// TestPublishRate (issue 11 item 12): a per-connection rate limit like
// MQTT's publish_rate: the SEND over the bucket gets an ERROR (quota) and
// the connection ends; what came before it was received.
func TestPublishRate(t *testing.T) {
	now := time.Unix(1e9, 0) // the clock stands still: only the burst is available
	sink := &recsink.Sink{}
	s, addr := startServer(t, testOptions{Sink: sink, Options: Options{PublishRate: 1, PublishBurst: 2, Now: func() time.Time { return now }}})
	c := connectRaw(t, addr, V12)
	for i := range 3 {
		c.send(frame.New(frame.SEND, frame.Destination, "/queue/a", frame.Receipt, string(rune('1'+i))))
	}
	for _, want := range []string{"1", "2"} {
		if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != want {
			t.Fatalf("got %s %v, want RECEIPT %s", f.Command, headerList(f), want)
		}
	}
	if f := c.expectError("quota exceeded"); f.Header.Get(frame.ReceiptId) != "3" {
		t.Errorf("ERROR for receipt %q, want 3", f.Header.Get(frame.ReceiptId))
	}
	if got := s.Stats().Errors[ingest.ReasonQuota]; got != 1 {
		t.Errorf("Errors[quota] %d", got)
	}
	if n := len(sink.Messages()); n != 2 {
		t.Errorf("%d messages stored, want 2", n)
	}
}

// TestClientIDHeader: the client-id header of CONNECT is the client id of
// the messages (and %c of the ACLs); without it, the session id.
func TestClientIDHeader(t *testing.T) {
	sink := &recsink.Sink{}
	_, addr := startServer(t, testOptions{Sink: sink})
	for _, id := range []string{"pump1", ""} {
		var hdr []string
		if id != "" {
			hdr = []string{"client-id", id}
		}
		c := connectRaw(t, addr, V12, hdr...)
		c.send(frame.New(frame.SEND, frame.Destination, "/queue/a", frame.Receipt, "1"))
		c.next()
	}
	waitFor(t, "two messages", func() bool { return len(sink.Messages()) == 2 })
	ms := sink.Messages()
	if got := ms[0].Source.ClientID; got != "pump1" {
		t.Errorf("client id %q, want pump1", got)
	}
	if got := ms[1].Source.ClientID; len(got) < 7 || got[:6] != "ferry-" {
		t.Errorf("client id without client-id header %q, want the session id ferry-N", got)
	}
}
