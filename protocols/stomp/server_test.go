package stomp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// users is an Authorizer with one user u/p who may not publish to or
// subscribe under secret/.
type users struct{}

func (users) Authenticate(_ context.Context, l message.Login) error {
	if l.Username == "u" && (l.Certified || l.HasPassword && l.Password == "p") {
		return nil
	}
	return fmt.Errorf("%w: bad user or password", message.ErrNotAuthorized)
}
func (users) CanPublish(_, _, topic string) bool    { return !strings.HasPrefix(topic, "secret/") }
func (users) CanSubscribe(_, _, filter string) bool { return !strings.HasPrefix(filter, "secret/") }

type routerFunc func(string) message.Route

func (f routerFunc) Route(t string) message.Route { return f(t) }

func TestConnectNegotiation(t *testing.T) {
	_, addr := startServer(t, testOptions{})
	for _, tc := range []struct {
		accept string // "-": no header
		want   string // CONNECTED version, "" for none, "ERROR"
	}{
		{"-", ""},
		{"1.0", "1.0"},
		{"1.0,1.1", "1.1"},
		{"1.2,1.0", "1.2"},
		{"1.1, 1.2", "1.2"},
		{"2.0", "ERROR"},
		{"", "ERROR"},
	} {
		for _, cmd := range []string{frame.CONNECT, frame.STOMP} {
			t.Run(cmd+" "+tc.accept, func(t *testing.T) {
				c := dialRaw(t, addr)
				f := frame.New(cmd, "host", "x")
				if tc.accept != "-" {
					f.Header.Add(frame.AcceptVersion, tc.accept)
				}
				c.send(f)
				if tc.want == "ERROR" {
					ef := c.expectError("supported protocol versions")
					if ef.Header.Get(frame.Version) != "1.0,1.1,1.2" {
						t.Fatalf("version header %q", ef.Header.Get(frame.Version))
					}
					return
				}
				got := c.next()
				if got.Command != frame.CONNECTED || got.Header.Get(frame.Version) != tc.want || got.Header.Get(frame.Session) == "" {
					t.Fatalf("got %s %v", got.Command, headerList(got))
				}
			})
		}
	}
}

func TestConnectAuth(t *testing.T) {
	s, addr := startServer(t, testOptions{Options: Options{Auth: users{}}})
	for _, tc := range []struct {
		name string
		hdr  []string
		ok   bool
	}{
		{"good", []string{"login", "u", "passcode", "p"}, true},
		{"wrong passcode", []string{"login", "u", "passcode", "x"}, false},
		{"anonymous", nil, false},
		{"no passcode", []string{"login", "u"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			c.send(frame.New(frame.CONNECT, append([]string{frame.AcceptVersion, "1.2", "receipt", "r1"}, tc.hdr...)...))
			if !tc.ok {
				ef := c.expectError("authentication failed")
				if ef.Header.Get(frame.ReceiptId) != "r1" {
					t.Errorf("receipt-id %q", ef.Header.Get(frame.ReceiptId))
				}
				return
			}
			if f := c.next(); f.Command != frame.CONNECTED {
				t.Fatalf("got %s", f.Command)
			}
		})
	}
	if got := s.Stats().Errors[ingest.ReasonNotAuthorized]; got != 3 {
		t.Errorf("auth errors %d, want 3", got)
	}
}

func TestFirstFrameMustBeConnect(t *testing.T) {
	_, addr := startServer(t, testOptions{})
	c := dialRaw(t, addr)
	c.send(fr(frame.SEND, "x", frame.Destination, "/queue/a"))
	c.expectError("expected CONNECT")
}

func TestSendBuildsMessage(t *testing.T) {
	sink := &recsink.Sink{}
	local := &recsink.Local{}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s, addr := startServer(t, testOptions{Sink: sink, Local: local, Router: routerFunc(func(topic string) message.Route {
		if topic == "local/x" {
			return message.Route{LocalOnly: true}
		}
		return message.Route{Priority: 3, TTL: time.Minute, UpstreamTopic: "up/" + topic, Dedupe: message.Dedupe{Kind: message.DedupeProperty}}
	}), Options: Options{Auth: users{}, Now: func() time.Time { return now }}})
	for _, v := range []Version{V10, V11, V12} {
		t.Run(v.String(), func(t *testing.T) {
			before := len(sink.Messages())
			c := connectRaw(t, addr, v, "login", "u", "passcode", "p")
			c.send(fr(frame.SEND, "payload\x00bin", frame.Destination, "/topic/sensors.room1", frame.ContentType, "application/octet-stream",
				frame.ContentLength, "11", frame.Receipt, "r-1", "msg-id", "dedupe-1", "x-colon", "a:b"))
			if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != "r-1" {
				t.Fatalf("got %s %v", f.Command, headerList(f))
			}
			msgs := sink.Messages()
			if len(msgs) != before+1 {
				t.Fatalf("sink has %d messages, want %d", len(msgs), before+1)
			}
			m := msgs[len(msgs)-1]
			if m.Topic != "sensors/room1" || string(m.Payload) != "payload\x00bin" || m.QoS != 1 || m.ContentType != "application/octet-stream" {
				t.Errorf("message %+v", m)
			}
			if len(m.ID) != 32 || !m.AcceptedAt.Equal(now) || m.Source.Protocol != message.ProtoSTOMP || m.Source.Username != "u" || !strings.HasPrefix(m.Source.ClientID, "ferry-") {
				t.Errorf("id/time/source: %q %v %+v", m.ID, m.AcceptedAt, m.Source)
			}
			if m.Priority != 3 || !m.ExpiresAt.Equal(now.Add(time.Minute)) || m.UpstreamTopic != "up/sensors/room1" || m.DedupeKey != message.ScopedDedupeKey("", m.Source, "dedupe-1") {
				t.Errorf("route not applied: %+v", m)
			}
			wantHdr := []message.Header{{Key: "msg-id", Value: "dedupe-1"}, {Key: "x-colon", Value: "a:b"}}
			if fmt.Sprint(m.Headers) != fmt.Sprint(wantHdr) {
				t.Errorf("headers %v, want %v", m.Headers, wantHdr)
			}
			// LocalOnly: receipted and fanned out, never sent to the Sink.
			c.send(fr(frame.SEND, "l", frame.Destination, "/queue/local.x", frame.Receipt, "r-2"))
			if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != "r-2" {
				t.Fatalf("got %s %v", f.Command, headerList(f))
			}
			if len(sink.Messages()) != before+1 {
				t.Fatal("a LocalOnly message reached the sink")
			}
		})
	}
	if got := len(local.Messages()); got != 6 {
		t.Errorf("Local got %d messages, want 6", got)
	}
	if st := s.Stats(); st.FramesAccepted != 6 || st.ReceiptsSent != 6 || st.ConnectionsTotal != 3 {
		t.Errorf("stats %+v", st)
	}
}

// TestReceiptOnlyAfterAccept: while Accept has not returned, no RECEIPT.
func TestReceiptOnlyAfterAccept(t *testing.T) {
	sink := &recsink.Sink{Gate: make(chan struct{}), Entered: make(chan *message.Message, 10)}
	_, addr := startServer(t, testOptions{Sink: sink})
	c := connectRaw(t, addr, V12)
	c.send(fr(frame.SEND, "x", frame.Destination, "/queue/a", frame.Receipt, "1"))
	select {
	case <-sink.Entered:
	case <-time.After(guard()):
		t.Fatal("hang guard: Accept not called")
	}
	// Accept stays blocked (AcceptTimeout is the guard): the short wait only
	// lets a premature RECEIPT show up.
	if f, err := c.nextErr(300 * time.Millisecond); err == nil {
		t.Fatalf("got %s %v before Accept returned", f.Command, headerList(f))
	}
	close(sink.Gate)
	if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != "1" {
		t.Fatalf("got %s %v", f.Command, headerList(f))
	}
	if len(sink.Messages()) != 1 {
		t.Fatal("message not in sink")
	}
}

// inFlight tracks the largest number of concurrent calls.
type inFlight struct{ cur, max atomic.Int64 }

func (f *inFlight) enter() {
	n := f.cur.Add(1)
	for {
		old := f.max.Load()
		if n <= old || f.max.CompareAndSwap(old, n) {
			return
		}
	}
}

func (f *inFlight) leave() { f.cur.Add(-1) }

// sendPipelined writes n SENDs in one go, topic i%topics, receipt and body
// i, and checks the receipts come back in order.
func sendPipelined(t *testing.T, c *rawClient, n, topics int) {
	t.Helper()
	var buf []byte
	for i := range n {
		dest := "/queue/p." + strconv.Itoa(i%topics)
		buf = AppendFrame(buf, fr(frame.SEND, strconv.Itoa(i), frame.Destination, dest, frame.Receipt, strconv.Itoa(i)), V12)
	}
	go func() { _, _ = c.nc.Write(buf) }()
	for i := range n {
		f := c.next()
		if f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != strconv.Itoa(i) {
			t.Fatalf("receipt %d: got %s %v", i, f.Command, headerList(f))
		}
	}
}

// checkTopicOrder checks that each topic's messages are in body order.
func checkTopicOrder(t *testing.T, msgs []*message.Message) {
	t.Helper()
	last := map[string]int{}
	for _, m := range msgs {
		i, _ := strconv.Atoi(string(m.Payload))
		if prev, ok := last[m.Topic]; ok && i < prev {
			t.Fatalf("topic %s: message %d stored after %d (G3)", m.Topic, i, prev)
		}
		last[m.Topic] = i
	}
}

// TestPipelinedReceiptsInOrder: many SENDs in flight on one connection
// over a plain Sink, which the ingest core calls for one message of a
// connection at a time: receipts in frame order, stored in frame order,
// fanned out in frame order.
func TestPipelinedReceiptsInOrder(t *testing.T) {
	var fl inFlight
	rec := &recsink.Sink{}
	sink := message.SinkFunc(func(ctx context.Context, m *message.Message) error {
		fl.enter()
		defer fl.leave()
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		return rec.Accept(ctx, m)
	})
	local := &recsink.Local{}
	_, addr := startServer(t, testOptions{Sink: sink, Local: local, Options: Options{MaxPipelined: 64}})
	c := connectRaw(t, addr, V12)
	const n = 400
	sendPipelined(t, c, n, 8)
	if m := fl.max.Load(); m != 1 {
		t.Errorf("max concurrent Accepts %d, want 1 (a plain Sink is called in order)", m)
	}
	checkTopicOrder(t, rec.Messages())
	// Local fan-out is in frame order.
	waitFor(t, "local fan-out", func() bool { return len(local.Messages()) == n })
	for i, m := range local.Messages() {
		if string(m.Payload) != strconv.Itoa(i) {
			t.Fatalf("local fan-out %d: got %q", i, m.Payload)
		}
	}
}

// orderedSink implements message.OrderedSink: Submit stores in call order
// at once; the message is durable a random time later, as with a group
// commit, whether or not anyone waits for it yet.
type orderedSink struct {
	fl     inFlight
	mu     sync.Mutex
	stored []*message.Message
	delay  func() time.Duration
}

func (s *orderedSink) Accept(ctx context.Context, m *message.Message) error {
	return s.Submit(ctx, m)()
}

func (s *orderedSink) Submit(ctx context.Context, m *message.Message) func() error {
	s.mu.Lock()
	s.stored = append(s.stored, m)
	s.mu.Unlock()
	s.fl.enter()
	done := make(chan struct{})
	time.AfterFunc(s.delay(), func() { s.fl.leave(); close(done) })
	return func() error {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TestOrderedSinkPipelinesOneTopic: with an OrderedSink, SENDs to one
// topic are in flight together (submitted, not yet durable) and still
// stored in frame order.
func TestOrderedSinkPipelinesOneTopic(t *testing.T) {
	sink := &orderedSink{delay: func() time.Duration { return time.Duration(rand.IntN(2000)) * time.Microsecond }}
	_, addr := startServer(t, testOptions{Sink: sink, Options: Options{MaxPipelined: 32}})
	c := connectRaw(t, addr, V12)
	sendPipelined(t, c, 300, 1)
	if m := sink.fl.max.Load(); m < 2 || m > 32 {
		t.Errorf("max in flight %d, want 2..32", m)
	}
	checkTopicOrder(t, sink.stored)
}

func TestSinkErrors(t *testing.T) {
	for _, tc := range []struct {
		err    error
		want   string
		reason ingest.Reason
	}{
		{message.ErrFull, "spool full", ingest.ReasonFull},
		{fmt.Errorf("wrapped: %w", message.ErrQuotaExceeded), "quota exceeded", ingest.ReasonQuota},
		{message.ErrTooLarge, "message too large", ingest.ReasonTooLarge},
		{message.ErrNotAuthorized, "not authorized", ingest.ReasonNotAuthorized},
		{message.ErrShuttingDown, "shutting down", ingest.ReasonShuttingDown},
		{message.ErrExpired, "expired", ingest.ReasonExpired},
		{context.DeadlineExceeded, "timed out", ingest.ReasonTimeout},
		{errors.New("disk on fire"), "internal error", ingest.ReasonInternal},
	} {
		t.Run(tc.want, func(t *testing.T) {
			sink := &recsink.Sink{Err: func(m *message.Message) error {
				if string(m.Payload) == "bad" {
					return tc.err
				}
				return nil
			}}
			s, addr := startServer(t, testOptions{Sink: sink})
			c := connectRaw(t, addr, V12)
			var buf []byte
			for i, body := range []string{"ok1", "bad", "ok2"} {
				buf = AppendFrame(buf, fr(frame.SEND, body, frame.Destination, "/queue/a", frame.Receipt, strconv.Itoa(i)), V12)
			}
			c.write(buf)
			if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != "0" {
				t.Fatalf("first: %s %v", f.Command, headerList(f))
			}
			ef := c.expectError(tc.want)
			if ef.Header.Get(frame.ReceiptId) != "1" {
				t.Errorf("receipt-id %q, want 1", ef.Header.Get(frame.ReceiptId))
			}
			if got := s.Stats().Errors[tc.reason]; got != 1 {
				t.Errorf("Errors[%s] = %d", tc.reason, got)
			}
		})
	}
}

func TestRefusedFrames(t *testing.T) {
	s, addr := startServer(t, testOptions{Options: Options{Auth: users{}, MaxSubscriptions: 1}})
	for _, tc := range []struct {
		name   string
		frames []*frame.Frame
		want   string
		reason ingest.Reason
	}{
		{"no destination", []*frame.Frame{fr(frame.SEND, "x", frame.Receipt, "r")}, "without destination", ingest.ReasonProtocol},
		{"unknown prefix", []*frame.Frame{fr(frame.SEND, "x", frame.Destination, "/exchange/a", frame.Receipt, "r")}, "invalid destination", ingest.ReasonInvalidTopic},
		{"wildcard in SEND", []*frame.Frame{fr(frame.SEND, "x", frame.Destination, "/topic/a.#", frame.Receipt, "r")}, "invalid destination", ingest.ReasonInvalidTopic},
		{"empty name", []*frame.Frame{fr(frame.SEND, "x", frame.Destination, "/topic/", frame.Receipt, "r")}, "invalid destination", ingest.ReasonInvalidTopic},
		{"publish ACL", []*frame.Frame{fr(frame.SEND, "x", frame.Destination, "/topic/secret.a", frame.Receipt, "r")}, "not authorized", ingest.ReasonNotAuthorized},
		{"subscribe ACL", []*frame.Frame{fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/secret.#", frame.Id, "1", frame.Receipt, "r")}, "not authorized", ingest.ReasonNotAuthorized},
		{"bad filter", []*frame.Frame{fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/a#", frame.Id, "1", frame.Receipt, "r")}, "invalid destination", ingest.ReasonInvalidTopic},
		{"subscribe without id", []*frame.Frame{fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/a", frame.Receipt, "r")}, "without id", ingest.ReasonProtocol},
		{"bad ack mode", []*frame.Frame{fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/a", frame.Id, "1", frame.Ack, "sometimes", frame.Receipt, "r")}, "invalid ack mode", ingest.ReasonProtocol},
		{"duplicate id", []*frame.Frame{fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/a", frame.Id, "1"), fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/b", frame.Id, "1", frame.Receipt, "r")}, "already in use", ingest.ReasonProtocol},
		{"too many subscriptions", []*frame.Frame{fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/a", frame.Id, "1"), fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/b", frame.Id, "2", frame.Receipt, "r")}, "too many subscriptions", ingest.ReasonTooLarge},
		{"unknown unsubscribe", []*frame.Frame{fr(frame.UNSUBSCRIBE, "", frame.Id, "9", frame.Receipt, "r")}, "no subscription", ingest.ReasonProtocol},
		{"unknown ack", []*frame.Frame{fr(frame.ACK, "", frame.Id, "9", frame.Receipt, "r")}, "unknown message", ingest.ReasonProtocol},
		{"SEND in a transaction never begun", []*frame.Frame{fr(frame.SEND, "x", frame.Destination, "/queue/a", frame.Transaction, "t", frame.Receipt, "r")}, "no transaction", ingest.ReasonProtocol},
		{"second CONNECT", []*frame.Frame{fr(frame.CONNECT, "", frame.Receipt, "r")}, "already connected", ingest.ReasonProtocol},
		{"server frame", []*frame.Frame{fr(frame.MESSAGE, "", frame.Receipt, "r")}, "unexpected command", ingest.ReasonProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().Errors[tc.reason]
			c := connectRaw(t, addr, V12, "login", "u", "passcode", "p")
			for _, f := range tc.frames {
				c.send(f)
			}
			ef := c.expectError(tc.want)
			if ef.Header.Get(frame.ReceiptId) != "r" {
				t.Errorf("receipt-id %q", ef.Header.Get(frame.ReceiptId))
			}
			if got := s.Stats().Errors[tc.reason] - before; got != 1 {
				t.Errorf("Errors[%s] grew by %d", tc.reason, got)
			}
		})
	}
}

// TestBadInputHarmsNoOneElse (G8): malformed and oversized frames close
// only their own connection.
func TestBadInputHarmsNoOneElse(t *testing.T) {
	sink := &recsink.Sink{}
	s, addr := startServer(t, testOptions{Sink: sink, Options: Options{MaxFrameSize: 1024, MaxHeaders: 8, MaxHeaderLine: 256}})
	bystander := connectRaw(t, addr, V12)
	for _, tc := range []struct {
		name, raw, want string
		reason          ingest.Reason
	}{
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n\x00", "malformed frame", ingest.ReasonMalformed},
		{"unknown command", "PUBLISH\n\n\x00", "malformed frame", ingest.ReasonMalformed},
		{"bad escape", "SEND\ndestination:/queue/a\\t\n\nx\x00", "malformed frame", ingest.ReasonMalformed},
		{"bad content-length", "SEND\ndestination:/queue/a\ncontent-length:x\n\nx\x00", "malformed frame", ingest.ReasonMalformed},
		{"oversized by content-length", "SEND\ndestination:/queue/a\ncontent-length:4096\n\n" + strings.Repeat("x", 4096) + "\x00", "frame too large", ingest.ReasonTooLarge},
		{"oversized without content-length", "SEND\ndestination:/queue/a\n\n" + strings.Repeat("x", 4096) + "\x00", "frame too large", ingest.ReasonTooLarge},
		{"huge content-length", "SEND\ndestination:/queue/a\ncontent-length:1099511627776\n\n", "frame too large", ingest.ReasonTooLarge},
		{"too many headers", "SEND\n" + strings.Repeat("h:v\n", 9) + "\n\x00", "frame too large", ingest.ReasonTooLarge},
		{"long header", "SEND\nh:" + strings.Repeat("v", 300) + "\n\n\x00", "frame too large", ingest.ReasonTooLarge},
		{"endless line", strings.Repeat("A", 100_000), "frame too large", ingest.ReasonTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().Errors[tc.reason]
			c := connectRaw(t, addr, V12)
			go func() { _, _ = c.nc.Write([]byte(tc.raw)) }()
			c.expectError(tc.want)
			if got := s.Stats().Errors[tc.reason] - before; got != 1 {
				t.Errorf("Errors[%s] grew by %d", tc.reason, got)
			}
			bystander.send(fr(frame.SEND, "still here", frame.Destination, "/queue/ok", frame.Receipt, tc.name))
			if f := bystander.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != tc.name {
				t.Fatalf("bystander: %s %v", f.Command, headerList(f))
			}
		})
	}
	for _, m := range sink.Messages() {
		if string(m.Payload) != "still here" {
			t.Errorf("bad input reached the sink: %q", m.Payload)
		}
	}
}

// TestMaxConnections: MaxConnections caps logged-in connections; the
// one over it gets its ERROR in answer to CONNECT. Sockets that have not
// sent CONNECT do not count (MaxPending caps them).
func TestMaxConnections(t *testing.T) {
	s, addr := startServer(t, testOptions{Options: Options{MaxConnections: 1}})
	idle := dialRaw(t, addr) // not logged in: takes no session slot
	connectRaw(t, addr, V12)
	c := dialRaw(t, addr)
	c.send(fr(frame.CONNECT, "", frame.AcceptVersion, "1.2", frame.Host, "x"))
	c.expectError("too many connections")
	if st := s.Stats(); st.ConnectionsRefused != 1 || st.ConnectionsTotal != 1 {
		t.Errorf("stats %+v", st)
	}
	_ = idle
}

// TestDisconnectReceiptAfterPending: the DISCONNECT receipt follows every
// earlier receipt, including SENDs still being accepted.
func TestDisconnectReceiptAfterPending(t *testing.T) {
	sink := &recsink.Sink{Gate: make(chan struct{}), Entered: make(chan *message.Message, 10)}
	_, addr := startServer(t, testOptions{Sink: sink})
	c := connectRaw(t, addr, V12)
	c.send(fr(frame.SEND, "x", frame.Destination, "/queue/a", frame.Receipt, "send"))
	c.send(fr(frame.DISCONNECT, "", frame.Receipt, "bye"))
	<-sink.Entered
	if f, err := c.nextErr(200 * time.Millisecond); err == nil { // weaker when slow, never failing
		t.Fatalf("got %s before the SEND was accepted", f.Command)
	}
	close(sink.Gate)
	for _, want := range []string{"send", "bye"} {
		if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != want {
			t.Fatalf("want receipt %s, got %s %v", want, f.Command, headerList(f))
		}
	}
	c.expectClosed()
}

// TestCloseFailsPendingAccepts: Close cancels Accepts; the client gets an
// ERROR instead of a receipt. AcceptTimeout lies beyond the guard that
// bounds Close, so only the cancellation can end the Accept.
func TestCloseFailsPendingAccepts(t *testing.T) {
	sink := &recsink.Sink{Gate: make(chan struct{}), Entered: make(chan *message.Message, 10)}
	s, err := NewServer(Options{Ingest: newCore(t, testOptions{Sink: sink}), Auth: message.AllowAll{}, AcceptTimeout: 2 * guard()})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenLocal(t)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c := connectRaw(t, ln.Addr().String(), V12)
	idle := connectRaw(t, ln.Addr().String(), V11)
	c.send(fr(frame.SEND, "x", frame.Destination, "/queue/a", frame.Receipt, "1"))
	<-sink.Entered
	ctx, cancel := context.WithTimeout(context.Background(), guard())
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- s.Close(ctx) }()
	ef := c.expectError("shutting down")
	if ef.Header.Get(frame.ReceiptId) != "1" {
		t.Errorf("receipt-id %q", ef.Header.Get(frame.ReceiptId))
	}
	idle.expectError("shutting down")
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("serve: %v", err)
	}
	if len(sink.Messages()) != 0 {
		t.Fatal("message stored after failed accept")
	}
	if s.Stats().ConnectionsCurrent != 0 {
		t.Fatal("connections left")
	}
}

func TestNewServerRequires(t *testing.T) {
	if _, err := NewServer(Options{Auth: message.AllowAll{}}); err == nil {
		t.Error("no ingest core accepted")
	}
	if _, err := NewServer(Options{Ingest: newCore(t, testOptions{Sink: &recsink.Sink{}})}); err == nil {
		t.Error("no authorizer accepted")
	}
}
