package mqtt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

func TestNewValidatesOptions(t *testing.T) {
	sink := newCore(t, testOptions{Sink: &recsink.Sink{}})
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no ingest core", Options{Auth: message.AllowAll{}}, "ingest core is required"},
		{"no auth", Options{Ingest: sink}, "auth is required"},
		{"bad kind", Options{Ingest: sink, Auth: message.AllowAll{}, Listeners: []Listener{{Name: "a", Kind: "udp", Address: ":1"}}}, "kind must be"},
		{"tls without config", Options{Ingest: sink, Auth: message.AllowAll{}, Listeners: []Listener{{Name: "a", Kind: KindTLS, Address: ":1"}}}, "needs a TLS config"},
		{"duplicate name", Options{Ingest: sink, Auth: message.AllowAll{}, Listeners: []Listener{{Name: "a", Kind: KindTCP, Address: ":1"}, {Name: "a", Kind: KindTCP, Address: ":2"}}}, "duplicate name"},
		{"negative rate", Options{Ingest: sink, Auth: message.AllowAll{}, PublishRate: -1}, "publish rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestStartFailsOnBusyPort(t *testing.T) {
	s1, _ := startServer(t, testOptions{})
	s2, err := New(Options{Ingest: newCore(t, testOptions{Sink: &recsink.Sink{}}), Auth: message.AllowAll{},
		Listeners: []Listener{{Name: "tcp", Kind: KindTCP, Address: s1.Addr("tcp")}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(); err == nil {
		t.Fatal("Start on a busy port succeeded")
	}
	if err := s2.Close(context.Background()); err != nil {
		t.Fatalf("Close after failed Start: %v", err)
	}
}

func TestPublishReachesSink(t *testing.T) {
	s, sink := startServer(t, testOptions{})
	c, _ := pahoClient(t, s.Addr("tcp"), "dev-1", func(o *paho.ClientOptions) { o.SetUsername("alice").SetPassword("pw") })
	for qos := byte(0); qos <= 2; qos++ {
		tok := c.Publish(fmt.Sprintf("sensors/room1/q%d", qos), qos, false, fmt.Sprintf("payload-%d", qos))
		if !tok.WaitTimeout(guard()) || tok.Error() != nil {
			t.Fatalf("publish qos %d: %v", qos, tok.Error())
		}
	}
	msgs := sink.WaitMessages(t, 3)
	for qos, m := range msgs {
		if m.Topic != fmt.Sprintf("sensors/room1/q%d", qos) || string(m.Payload) != fmt.Sprintf("payload-%d", qos) || int(m.QoS) != qos {
			t.Errorf("message %d: topic %q payload %q qos %d", qos, m.Topic, m.Payload, m.QoS)
		}
		if m.Source != (message.Source{Protocol: message.ProtoMQTT, ClientID: "dev-1", Username: "alice"}) {
			t.Errorf("message %d: source %+v", qos, m.Source)
		}
		if len(m.ID) != 32 || m.AcceptedAt.IsZero() || m.Retain {
			t.Errorf("message %d: id %q accepted %v retain %v", qos, m.ID, m.AcceptedAt, m.Retain)
		}
	}
	st := s.Stats()
	if st.Accepted != [3]uint64{1, 1, 1} || st.Connections != 1 || st.ClientsConnected != 1 {
		t.Errorf("stats: %+v", st)
	}
}

func TestRetainedMessage(t *testing.T) {
	s, sink := startServer(t, testOptions{})
	pub, _ := pahoClient(t, s.Addr("tcp"), "pub", nil)
	if tok := pub.Publish("state/door", 1, true, "open"); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	if m := sink.WaitMessages(t, 1)[0]; !m.Retain {
		t.Error("spooled message lost its retain flag")
	}
	sub, _ := pahoClient(t, s.Addr("tcp"), "late-sub", nil)
	got := expectMessage(t, subscribe(t, sub, "state/#", 1))
	if !got.Retained() || string(got.Payload()) != "open" {
		t.Errorf("late subscriber: retained %v payload %q", got.Retained(), got.Payload())
	}
}

func TestRouteIsApplied(t *testing.T) {
	router := routerFunc(func(topic string) message.Route {
		return message.Route{Priority: 3, TTL: time.Hour, UpstreamTopic: "site/" + topic, UpstreamQoS: 1,
			Dedupe: message.Dedupe{Kind: message.DedupeJSON, Name: "id"}}
	})
	s, sink := startServer(t, testOptions{Router: router})
	c, _ := pahoClient(t, s.Addr("tcp"), "dev", nil)
	if tok := c.Publish("a/b", 1, false, `{"id":"m-17","v":1}`); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	m := sink.WaitMessages(t, 1)[0]
	if m.Priority != 3 || m.UpstreamTopic != "site/a/b" || m.UpstreamQoS != 1 || m.DedupeKey != message.ScopedDedupeKey("", m.Source, "m-17") ||
		m.ExpiresAt.Sub(m.AcceptedAt) != time.Hour {
		t.Errorf("route not applied: %+v", m)
	}
}

func TestMQTT5PropertiesBecomeHeaders(t *testing.T) {
	s, sink := startServer(t, testOptions{})
	rc, code := dialRaw(t, s.Addr("tcp"), "v5dev", connectOpts{v5: true})
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	rc.publish("t/props", []byte("x"), 1, 7, "msg-id", "abc", "unit", "C")
	if got := rc.ack(4, 7); got != 0 {
		t.Fatalf("PUBACK %#x", got)
	}
	m := sink.WaitMessages(t, 1)[0]
	want := []message.Header{{Key: "msg-id", Value: "abc"}, {Key: "unit", Value: "C"}}
	if fmt.Sprint(m.Headers) != fmt.Sprint(want) {
		t.Errorf("headers %v, want %v", m.Headers, want)
	}
}

// A PUBACK (and a PUBREC) leaves only after Sink.Accept has returned.
func TestAckOnlyAfterAccept(t *testing.T) {
	for _, qos := range []byte{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			sink := &recsink.Sink{Gate: make(chan struct{}), Entered: make(chan *message.Message, 1)}
			s, _ := startServer(t, testOptions{Sink: sink})

			// paho: the token completes only after the release.
			c, _ := pahoClient(t, s.Addr("tcp"), "paho", nil)
			tok := c.Publish("slow/disk", qos, false, "m1")
			<-sink.Entered
			// The short waits below only give a premature ack the chance to
			// show: a slow machine can make them weaker, never fail them.
			// (Accept stays blocked: startServer's AcceptTimeout is the hang
			// guard.)
			if tok.WaitTimeout(300 * time.Millisecond) {
				t.Fatal("paho got its ack while Accept was still blocked")
			}

			// raw: no PUBACK/PUBREC bytes at all before the release.
			rc, _ := dialRaw(t, s.Addr("tcp"), "raw", connectOpts{})
			rc.publish("slow/disk", []byte("m2"), qos, 1)
			<-sink.Entered
			if p, err := rc.read(300 * time.Millisecond); err == nil {
				t.Fatalf("got packet type %d while Accept was blocked", p.typ)
			}
			close(sink.Gate)
			if !tok.WaitTimeout(guard()) || tok.Error() != nil {
				t.Fatalf("paho ack after release: %v", tok.Error())
			}
			want := byte(4) // PUBACK
			if qos == 2 {
				want = 5 // PUBREC
			}
			rc.ack(want, 1)
			if n := len(sink.Messages()); n != 2 {
				t.Fatalf("sink has %d messages, want 2", n)
			}
		})
	}
}

func TestV5FullGetsPuback0x97(t *testing.T) {
	sink := &recsink.Sink{}
	sink.SetErr(func(*message.Message) error { return fmt.Errorf("spool says: %w", message.ErrFull) })
	local := &recsink.Local{}
	s, _ := startServer(t, testOptions{Sink: sink, Local: local})
	watcher, _ := pahoClient(t, s.Addr("tcp"), "watcher", nil)
	seen := subscribe(t, watcher, "full/#", 1)

	rc, _ := dialRaw(t, s.Addr("tcp"), "v5dev", connectOpts{v5: true})
	rc.publish("full/x", []byte("refused"), 1, 1)
	if got := rc.ack(4, 1); got != 0x97 {
		t.Fatalf("PUBACK reason %#x, want 0x97", got)
	}
	expectNone(t, seen, 300*time.Millisecond) // a refused message is not delivered locally
	if len(local.Messages()) != 0 {
		t.Error("a refused message reached the cross-protocol fan-out")
	}

	// The connection stays usable: once the spool has room the same client
	// gets through.
	sink.SetErr(nil)
	rc.publish("full/x", []byte("accepted"), 1, 2)
	if got := rc.ack(4, 2); got != 0 {
		t.Fatalf("PUBACK reason %#x after recovery", got)
	}
	if m := expectMessage(t, seen); string(m.Payload()) != "accepted" {
		t.Errorf("subscriber got %q", m.Payload())
	}
	if len(local.Messages()) != 1 {
		t.Errorf("local fan-out got %d messages, want 1", len(local.Messages()))
	}
	if st := s.Stats(); st.Rejected[ingest.ReasonFull] != 1 || st.Accepted[1] != 1 {
		t.Errorf("stats: rejected %v accepted %v", st.Rejected, st.Accepted)
	}
}

func TestV311FullDisconnects(t *testing.T) {
	sink := &recsink.Sink{}
	sink.SetErr(func(*message.Message) error { return message.ErrFull })
	s, _ := startServer(t, testOptions{Sink: sink})
	watcher, _ := pahoClient(t, s.Addr("tcp"), "watcher", nil)
	seen := subscribe(t, watcher, "full/#", 1)

	c, lost := pahoClient(t, s.Addr("tcp"), "v3dev", nil)
	tok := c.Publish("full/x", 1, false, "refused")
	expectLost(t, lost, "3.1.1 client not disconnected")
	expectNotAcked(t, tok, "a 3.1.1 publish the sink refused")
	expectNone(t, seen, 300*time.Millisecond)
	if n := len(sink.Messages()); n != 0 {
		t.Fatalf("sink holds %d messages", n)
	}
	// Other clients are unaffected.
	sink.SetErr(nil)
	if tok := watcher.Publish("other", 0, false, "x"); !tok.WaitTimeout(guard()) || !watcher.IsConnectionOpen() {
		t.Error("an unrelated client was affected")
	}
	if st := s.Stats(); st.Rejected[ingest.ReasonFull] != 1 {
		t.Errorf("rejected %v", st.Rejected)
	}
}

// QoS 2 failures never get a reason code (mochi would send a PUBACK for a
// QoS 2 publish): MQTT 5 gets DISCONNECT 0x97 and no PUBREC.
func TestV5QoS2FullDisconnects(t *testing.T) {
	sink := &recsink.Sink{}
	sink.SetErr(func(*message.Message) error { return message.ErrFull })
	s, _ := startServer(t, testOptions{Sink: sink})
	rc, _ := dialRaw(t, s.Addr("tcp"), "v5dev", connectOpts{v5: true})
	rc.publish("full/x", []byte("refused"), 2, 1)
	if code := rc.expectClosed(); code != 0x97 {
		t.Fatalf("DISCONNECT reason %d, want 0x97", code)
	}
}

func TestRejectedQoS0IsDropped(t *testing.T) {
	sink := &recsink.Sink{}
	sink.SetErr(func(*message.Message) error { return message.ErrFull })
	s, _ := startServer(t, testOptions{Sink: sink})
	watcher, _ := pahoClient(t, s.Addr("tcp"), "watcher", nil)
	seen := subscribe(t, watcher, "q0/#", 0)
	c, _ := pahoClient(t, s.Addr("tcp"), "dev", nil)
	c.Publish("q0/x", 0, false, "x").WaitTimeout(guard())
	// Once the refusal is counted, the hook has decided: a delivery, if
	// any, would be under way.
	waitFor(t, "rejected count", func() bool { return s.Stats().Rejected[ingest.ReasonFull] == 1 })
	expectNone(t, seen, 300*time.Millisecond)
	if !c.IsConnectionOpen() {
		t.Error("a QoS 0 refusal closed the connection")
	}
}

func TestSinkErrorMapping(t *testing.T) {
	tests := []struct {
		err    error
		reason ingest.Reason
		puback byte
	}{
		{message.ErrFull, ingest.ReasonFull, 0x97},
		{message.ErrQuotaExceeded, ingest.ReasonQuota, 0x97},
		{message.ErrTooLarge, ingest.ReasonTooLarge, 0x83},
		{message.ErrExpired, ingest.ReasonExpired, 0x83},
		{message.ErrNotAuthorized, ingest.ReasonNotAuthorized, 0x87},
		{errors.New("disk on fire"), ingest.ReasonInternal, 0x83},
	}
	for _, tt := range tests {
		t.Run(tt.reason.String(), func(t *testing.T) {
			sink := &recsink.Sink{}
			sink.SetErr(func(*message.Message) error { return fmt.Errorf("wrapped: %w", tt.err) })
			s, _ := startServer(t, testOptions{Sink: sink})
			rc, _ := dialRaw(t, s.Addr("tcp"), "v5dev", connectOpts{v5: true})
			rc.publish("x/y", []byte("m"), 1, 9)
			if got := rc.ack(4, 9); got != tt.puback {
				t.Errorf("PUBACK %#x, want %#x", got, tt.puback)
			}
			if got := s.Stats().Rejected[tt.reason]; got != 1 {
				t.Errorf("Rejected[%s] = %d", tt.reason, got)
			}
		})
	}
}

// Close ends a pending Accept rather than waiting for it: neither
// AcceptTimeout nor the client's keepalive cap can end this one within the
// hang guard that bounds Close, so Close returning nil within it (and the
// Accept's cause) is the proof.
func TestCloseFailsPendingAccept(t *testing.T) {
	sink := &recsink.Sink{Gate: make(chan struct{}), Entered: make(chan *message.Message, 1), Cancelled: make(chan error, 1)}
	defer close(sink.Gate)
	core, err := ingest.New(ingest.Options{Sink: sink, Timeout: 2 * guard()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Ingest: core, Auth: message.AllowAll{}, AcceptTimeout: 2 * guard(),
		Listeners: []Listener{{Name: "tcp", Kind: KindTCP, Address: "127.0.0.1:0"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c, _, err := pahoConnect(s.Addr("tcp"), "dev", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(0)
	tok := c.Publish("x", 1, false, "pending")
	<-sink.Entered
	ctx, cancel := context.WithTimeout(context.Background(), guard())
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close with a pending Accept: %v", err)
	}
	if cause := <-sink.Cancelled; !errors.Is(cause, message.ErrShuttingDown) {
		t.Errorf("pending Accept ended with cause %v, want ErrShuttingDown", cause)
	}
	expectNotAcked(t, tok, "the pending publish")
	if st := s.Stats(); st.Rejected[ingest.ReasonShuttingDown] != 1 {
		t.Errorf("rejected %v", st.Rejected)
	}
	if err := s.Close(ctx); err != nil { // a second Close is harmless
		t.Errorf("second Close: %v", err)
	}
}

func TestLocalPubSubBetweenClients(t *testing.T) {
	local := &recsink.Local{}
	s, sink := startServer(t, testOptions{Local: local})
	sub, _ := pahoClient(t, s.Addr("tcp"), "sub", nil)
	ch := subscribe(t, sub, "chat/+", 1)
	pub, _ := pahoClient(t, s.Addr("tcp"), "pub", nil)
	pub.Publish("chat/room", 1, false, "hello").WaitTimeout(guard())
	if m := expectMessage(t, ch); m.Topic() != "chat/room" || string(m.Payload()) != "hello" {
		t.Errorf("got %s %q", m.Topic(), m.Payload())
	}
	sink.WaitMessages(t, 1)
	if got := local.Messages(); len(got) != 1 || got[0].Topic != "chat/room" {
		t.Errorf("cross-protocol fan-out got %v", got)
	}
}

func TestPublishLocal(t *testing.T) {
	local := &recsink.Local{}
	s, sink := startServer(t, testOptions{Local: local})
	sub, _ := pahoClient(t, s.Addr("tcp"), "sub", nil)
	ch := subscribe(t, sub, "cmd/#", 1)
	rc, _ := dialRaw(t, s.Addr("tcp"), "v5sub", connectOpts{v5: true})
	if code := rc.subscribe("cmd/#", 0, 1); code != 0 {
		t.Fatalf("SUBACK %#x", code)
	}

	s.PublishLocal(&message.Message{ID: "x1", Topic: "cmd/dev1/reboot", Payload: []byte("now"), QoS: 1,
		ContentType: "text/plain", Headers: []message.Header{{Key: "reply-to", Value: "/queue/answers"}},
		Source: message.Source{Protocol: message.ProtoSTOMP}})

	if m := expectMessage(t, ch); m.Topic() != "cmd/dev1/reboot" || string(m.Payload()) != "now" {
		t.Errorf("paho got %s %q", m.Topic(), m.Payload())
	}
	p, err := rc.read(guard())
	if err != nil || p.typ != 3 {
		t.Fatalf("v5 subscriber: %v type %d", err, p.typ)
	}
	topic, props, payload := userProps(p.body)
	if topic != "cmd/dev1/reboot" || string(payload) != "now" || props["reply-to"] != "/queue/answers" || props["content-type"] != "text/plain" {
		t.Errorf("v5 subscriber got topic %q payload %q props %v", topic, payload, props)
	}
	// Let a wrong Sink call or loop-back show up: a slow machine can make
	// this check weaker, never fail it.
	time.Sleep(100 * time.Millisecond)
	if n := sink.Calls(); n != 0 {
		t.Errorf("an injected message reached the Sink (%d calls)", n)
	}
	if n := len(local.Messages()); n != 0 {
		t.Errorf("an injected message looped back to the cross-protocol fan-out (%d)", n)
	}
	if st := s.Stats(); st.Injected != 1 {
		t.Errorf("injected %d", st.Injected)
	}

	// Invalid and expired messages are dropped.
	s.PublishLocal(&message.Message{Topic: "cmd/+/bad", Payload: []byte("x")})
	s.PublishLocal(&message.Message{Topic: "cmd/old", Payload: []byte("x"), ExpiresAt: time.Now().Add(-time.Second)})
	expectNone(t, ch, 200*time.Millisecond)
}

// TestPublishLocalWithoutSubscribers: with no MQTT subscription at all, a
// message that is not retained is not injected into mochi (it would go
// nowhere); a retained one still is, and an offline persistent session's
// subscription still counts: it gets the message when it comes back.
func TestPublishLocalWithoutSubscribers(t *testing.T) {
	s, _ := startServer(t, testOptions{})
	s.PublishLocal(&message.Message{Topic: "cmd/a", Payload: []byte("nobody"), QoS: 1})
	if st := s.Stats(); st.Injected != 0 {
		t.Fatalf("injected %d with no subscriber, want 0", st.Injected)
	}
	s.PublishLocal(&message.Message{Topic: "cmd/kept", Payload: []byte("retained"), QoS: 1, Retain: true})
	if st := s.Stats(); st.Injected != 1 {
		t.Fatalf("a retained message with no subscriber: injected %d, want 1", st.Injected)
	}
	late, _ := pahoClient(t, s.Addr("tcp"), "late", nil)
	if m := expectMessage(t, subscribe(t, late, "cmd/kept", 1)); string(m.Payload()) != "retained" {
		t.Fatalf("a later subscriber got %q, want the retained message", m.Payload())
	}
	late.Disconnect(50) // clean session: its subscription goes
	testkit.Wait(t, "the clean session's subscription removed", func() bool { return atomic.LoadInt64(&s.ms.Info.Subscriptions) == 0 })

	persistent := func(o *paho.ClientOptions) { o.SetCleanSession(false) }
	away, _ := pahoClient(t, s.Addr("tcp"), "away", persistent)
	subscribe(t, away, "live/#", 1)
	away.Disconnect(50)
	testkit.Wait(t, "the persistent session offline", func() bool { return s.Stats().ClientsConnected == 0 })
	s.PublishLocal(&message.Message{Topic: "live/b", Payload: []byte("queued"), QoS: 1})
	if st := s.Stats(); st.Injected != 2 {
		t.Fatalf("an offline session subscribes: injected %d, want 2", st.Injected)
	}
	ch := make(chan paho.Message, 10)
	back, _ := pahoClient(t, s.Addr("tcp"), "away", func(o *paho.ClientOptions) {
		persistent(o)
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { ch <- m })
	})
	defer back.Disconnect(50)
	if m := expectMessage(t, ch); string(m.Payload()) != "queued" {
		t.Fatalf("the returning session got %q, want the message queued while it was away", m.Payload())
	}
}

func TestLocalOnlyAndQoS0DropRoutes(t *testing.T) {
	router := routerFunc(func(topic string) message.Route {
		switch {
		case strings.HasPrefix(topic, "local/"):
			return message.Route{LocalOnly: true}
		case strings.HasPrefix(topic, "tele/"):
			return message.Route{QoS0: message.QoS0Drop}
		}
		return message.Route{}
	})
	local := &recsink.Local{}
	s, sink := startServer(t, testOptions{Router: router, Local: local})
	sub, _ := pahoClient(t, s.Addr("tcp"), "sub", nil)
	ch := subscribe(t, sub, "#", 1)
	pub, _ := pahoClient(t, s.Addr("tcp"), "pub", nil)
	pub.Publish("local/a", 1, false, "1").WaitTimeout(guard())
	pub.Publish("tele/a", 0, false, "2").WaitTimeout(guard())
	pub.Publish("tele/a", 1, false, "3").WaitTimeout(guard()) // QoS 1 on a QoS0Drop route is spooled
	for range 3 {
		expectMessage(t, ch)
	}
	sink.WaitMessages(t, 1)
	time.Sleep(100 * time.Millisecond) // let a wrongly spooled one show up (weaker when slow, never failing)
	if msgs := sink.Messages(); len(msgs) != 1 || string(msgs[0].Payload) != "3" {
		t.Fatalf("sink got %d messages, want only the QoS 1 one", len(msgs))
	}
	if n := len(local.Messages()); n != 3 {
		t.Errorf("cross-protocol fan-out got %d, want 3", n)
	}
	if st, lo := s.Stats(), s.opts.Ingest.Stats().LocalOnly; lo != 2 || st.Accepted[1] != 1 {
		t.Errorf("stats: local only %d accepted %v", lo, st.Accepted)
	}
}

func TestSysTopicsNeverReachSink(t *testing.T) {
	s, sink := startServer(t, testOptions{})
	sub, _ := pahoClient(t, s.Addr("tcp"), "sub", nil)
	subscribe(t, sub, "$SYS/#", 0) // mochi publishes its $SYS tree now and then
	rc, _ := dialRaw(t, s.Addr("tcp"), "v5dev", connectOpts{v5: true})
	rc.publish("$SYS/broker/fake", []byte("x"), 1, 1)
	if code := rc.expectClosed(); code != 0x90 {
		t.Errorf("DISCONNECT %d, want 0x90 (topic name invalid)", code)
	}
	if n := sink.Calls(); n != 0 {
		t.Errorf("sink called %d times", n)
	}
}

func TestAuth(t *testing.T) {
	auth := &testAuth{users: map[string]string{"alice": "secret"}}
	s, _ := startServer(t, testOptions{Options: Options{Auth: auth}})
	addr := s.Addr("tcp")

	if _, _, err := pahoConnect(addr, "good", func(o *paho.ClientOptions) { o.SetUsername("alice").SetPassword("secret") }); err != nil {
		t.Fatalf("valid credentials refused: %v", err)
	}
	_, _, err := pahoConnect(addr, "bad", func(o *paho.ClientOptions) { o.SetUsername("alice").SetPassword("wrong") })
	if err == nil || !strings.Contains(err.Error(), "bad user name or password") {
		t.Errorf("wrong password: %v", err)
	}
	_, _, err = pahoConnect(addr, "anon", nil)
	if err == nil || !strings.Contains(err.Error(), "not Authorized") {
		t.Errorf("anonymous: %v", err)
	}
	_, code := dialRaw(t, addr, "v5bad", connectOpts{v5: true, user: "alice", pass: "wrong"})
	if code != 0x86 {
		t.Errorf("v5 wrong password: CONNACK %#x, want 0x86", code)
	}
	_, code = dialRaw(t, addr, "v5anon", connectOpts{v5: true})
	if code != 0x87 {
		t.Errorf("v5 anonymous: CONNACK %#x, want 0x87", code)
	}
	// Connections counts in OnSessionEstablished, which mochi calls after it
	// wrote the CONNACK: wait for it rather than race it.
	waitFor(t, "stats: 4 refused, 1 connection", func() bool {
		st := s.Stats()
		return st.Refused[ingest.ReasonNotAuthorized] == 4 && st.Connections == 1
	})
}

func TestACL(t *testing.T) {
	auth := &testAuth{anonymous: true, denyPub: []string{"secret/"}, denySub: []string{"private/"}}
	s, sink := startServer(t, testOptions{Options: Options{Auth: auth}})
	addr := s.Addr("tcp")
	watcher, _ := pahoClient(t, addr, "watcher", nil)
	seen := subscribe(t, watcher, "secret/#", 1)

	t.Run("v5 publish gets PUBACK 0x87", func(t *testing.T) {
		rc, _ := dialRaw(t, addr, "v5dev", connectOpts{v5: true})
		rc.publish("secret/x", []byte("m"), 1, 1)
		if got := rc.ack(4, 1); got != 0x87 {
			t.Errorf("PUBACK %#x, want 0x87", got)
		}
	})
	t.Run("3.1.1 publish disconnects", func(t *testing.T) {
		c, lost := pahoClient(t, addr, "v3dev", nil)
		tok := c.Publish("secret/x", 1, false, "m")
		expectLost(t, lost, "not disconnected")
		expectNotAcked(t, tok, "a denied publish")
	})
	t.Run("subscribe denied", func(t *testing.T) {
		rc, _ := dialRaw(t, addr, "v5sub", connectOpts{v5: true})
		if code := rc.subscribe("private/#", 1, 3); code != 0x87 {
			t.Errorf("SUBACK %#x, want 0x87", code)
		}
		c, _ := pahoClient(t, addr, "v3sub", nil)
		tok := c.Subscribe("private/x", 1, nil)
		tok.WaitTimeout(guard())
		if res := tok.(*paho.SubscribeToken).Result()["private/x"]; res != 0x80 {
			t.Errorf("3.1.1 SUBACK %#x, want 0x80", res)
		}
	})
	t.Run("will topic denied at connect", func(t *testing.T) {
		_, code := dialRaw(t, addr, "v5will", connectOpts{v5: true, willTopic: "secret/will", willMsg: "bye"})
		if code != 0x87 {
			t.Errorf("CONNACK %#x, want 0x87", code)
		}
	})
	expectNone(t, seen, 200*time.Millisecond)
	if n := sink.Calls(); n != 0 {
		t.Errorf("sink called %d times", n)
	}
	st := s.Stats()
	if st.Rejected[ingest.ReasonNotAuthorized] != 2 || st.SubscribeDenied != 2 || st.Refused[ingest.ReasonNotAuthorized] != 1 {
		t.Errorf("stats: rejected %v subscribe denied %d refused %v", st.Rejected, st.SubscribeDenied, st.Refused)
	}
}

func TestWillGoesToSink(t *testing.T) {
	s, sink := startServer(t, testOptions{})
	sub, _ := pahoClient(t, s.Addr("tcp"), "sub", nil)
	ch := subscribe(t, sub, "status/#", 1)
	rc, code := dialRaw(t, s.Addr("tcp"), "dev-will", connectOpts{willTopic: "status/dev-will", willMsg: "offline"})
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	_ = rc.c.Close() // no DISCONNECT: the will is due
	if m := expectMessage(t, ch); string(m.Payload()) != "offline" {
		t.Errorf("subscriber got %q", m.Payload())
	}
	m := sink.WaitMessages(t, 1)[0]
	if m.Topic != "status/dev-will" || string(m.Payload) != "offline" || m.QoS != 1 || m.Source.ClientID != "dev-will" {
		t.Errorf("will in sink: %+v", m)
	}
	waitFor(t, "will counted", func() bool { return s.Stats().Wills == 1 })
}

func TestOversizePacket(t *testing.T) {
	s, sink := startServer(t, testOptions{Options: Options{MaxPacketSize: 1024}})
	other, _ := pahoClient(t, s.Addr("tcp"), "other", nil)
	c, lost := pahoClient(t, s.Addr("tcp"), "big", nil)
	tok := c.Publish("big/x", 1, false, strings.Repeat("x", 2000))
	expectLost(t, lost, "oversize publisher not disconnected")
	expectNotAcked(t, tok, "an oversize publish")
	if tok := other.Publish("small/x", 1, false, "ok"); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Errorf("other client affected: %v", tok.Error())
	}
	msgs := sink.WaitMessages(t, 1)
	if len(msgs) != 1 || msgs[0].Topic != "small/x" {
		t.Errorf("sink: %d messages", len(msgs))
	}
	waitFor(t, "too_large counted", func() bool { return s.Stats().Rejected[ingest.ReasonTooLarge] == 1 })
}

func TestInvalidTopics(t *testing.T) {
	s, sink := startServer(t, testOptions{Options: Options{MaxTopicLength: 64, MaxTopicLevels: 4}})
	addr := s.Addr("tcp")
	tests := []struct {
		name  string
		topic string
		v5    int // expected DISCONNECT code for MQTT 5, -1: closed without one
	}{
		{"too long", strings.Repeat("a", 65), 0x90},
		{"too many levels", "a/b/c/d/e", 0x90},
		{"$SYS", "$SYS/x", 0x90},
		{"wildcard", "a/+/c", 0x90},
		{"bad utf-8", "a/\xff\xfe", -1}, // mochi: malformed packet, closed
		{"NUL", "a/\x00", -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, v5 := range []bool{false, true} {
				rc, _ := dialRaw(t, addr, "bad-"+tt.name, connectOpts{v5: v5})
				rc.publish(tt.topic, []byte("m"), 1, 1)
				code := rc.expectClosed()
				if v5 && code != tt.v5 {
					t.Errorf("v5: DISCONNECT %d, want %d", code, tt.v5)
				}
				if !v5 && code != -1 {
					t.Errorf("3.1.1: got a DISCONNECT (%d)", code)
				}
			}
		})
	}
	if n := sink.Calls(); n != 0 {
		t.Errorf("sink called %d times", n)
	}
	waitFor(t, "all counted", func() bool {
		st := s.Stats()
		return st.Rejected[ingest.ReasonInvalidTopic] == uint64(2*len(tests)) && st.Rejected[ingest.ReasonMalformed] == 0
	})
}

func TestMaxConnections(t *testing.T) {
	s, _ := startServer(t, testOptions{Options: Options{MaxConnections: 2}})
	pahoClient(t, s.Addr("tcp"), "c1", nil)
	pahoClient(t, s.Addr("tcp"), "c2", nil)
	_, _, err := pahoConnect(s.Addr("tcp"), "c3", nil)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "server unavailable") {
		t.Errorf("third connection: %v", err)
	}
	_, code := dialRaw(t, s.Addr("tcp"), "c4", connectOpts{v5: true})
	if code != 0x89 {
		t.Errorf("v5 CONNACK %#x, want 0x89 server busy", code)
	}
	if st := s.Stats(); st.Refused[ingest.ReasonQuota] != 2 {
		t.Errorf("refused %v", st.Refused)
	}
}

func TestPublishRateLimit(t *testing.T) {
	now := time.Unix(1_700_000_000, 0) // a frozen clock: the bucket never refills
	s, sink := startServer(t, testOptions{Options: Options{PublishRate: 1, PublishBurst: 2, Now: func() time.Time { return now }}})
	rc, _ := dialRaw(t, s.Addr("tcp"), "v5dev", connectOpts{v5: true})
	for id := uint16(1); id <= 2; id++ {
		rc.publish("r", []byte("m"), 1, id)
		if got := rc.ack(4, id); got != 0 {
			t.Fatalf("publish %d: PUBACK %#x", id, got)
		}
	}
	rc.publish("r", []byte("m"), 1, 3)
	if got := rc.ack(4, 3); got != 0x97 {
		t.Errorf("over the rate: PUBACK %#x, want 0x97", got)
	}
	// A 3.1.1 client over the rate is disconnected.
	c, lost := pahoClient(t, s.Addr("tcp"), "v3dev", nil)
	for range 3 {
		c.Publish("r", 1, false, "m")
	}
	expectLost(t, lost, "3.1.1 client over the rate not disconnected")
	if n := len(sink.Messages()); n != 4 {
		t.Errorf("sink has %d messages, want 4", n)
	}
	if st := s.Stats(); st.Rejected[ingest.ReasonQuota] != 2 {
		t.Errorf("rejected %v", st.Rejected)
	}
}

// A refused retained message is neither delivered nor retained.
func TestRefusedRetainedIsNotRetained(t *testing.T) {
	sink := &recsink.Sink{}
	sink.SetErr(func(*message.Message) error { return message.ErrFull })
	s, _ := startServer(t, testOptions{Sink: sink})
	rc, _ := dialRaw(t, s.Addr("tcp"), "v5dev", connectOpts{v5: true})
	body := append(mqttString("state/x"), 0, 1, 0) // packet id 1, no properties
	rc.write(packet(0x30|1<<1|1, append(body, "refused"...)))
	if got := rc.ack(4, 1); got != 0x97 {
		t.Fatalf("PUBACK %#x", got)
	}
	sub, _ := pahoClient(t, s.Addr("tcp"), "late", nil)
	expectNone(t, subscribe(t, sub, "state/#", 1), 300*time.Millisecond)
}

// Many publishers and concurrent PublishLocal calls: every spooled message is
// in the sink exactly once, every message reaches the subscriber, and the
// race detector watches the hook's shared state.
func TestConcurrentPublishers(t *testing.T) {
	const publishers, perPublisher, injectors, perInjector = 8, 50, 2, 50
	local := &recsink.Local{}
	s, sink := startServer(t, testOptions{Local: local})
	sub, _ := pahoClient(t, s.Addr("tcp"), "sub", nil)
	got := make(chan paho.Message, publishers*perPublisher+injectors*perInjector)
	if tok := sub.Subscribe("load/#", 1, func(_ paho.Client, m paho.Message) { got <- m }); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	var wg sync.WaitGroup
	for i := range publishers {
		c, _ := pahoClient(t, s.Addr("tcp"), fmt.Sprintf("pub-%d", i), nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perPublisher {
				tok := c.Publish(fmt.Sprintf("load/%d", i), 1, false, fmt.Sprintf("%d-%d", i, j))
				if !tok.WaitTimeout(guard()) || tok.Error() != nil {
					t.Errorf("publish: %v", tok.Error())
					return
				}
			}
		}()
	}
	for i := range injectors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perInjector {
				s.PublishLocal(&message.Message{Topic: fmt.Sprintf("load/in/%d", i), Payload: fmt.Appendf(nil, "in-%d-%d", i, j), QoS: 1})
			}
		}()
	}
	wg.Wait()
	msgs := sink.WaitMessages(t, publishers*perPublisher)
	seen := map[string]bool{}
	for _, m := range msgs {
		if seen[string(m.Payload)] {
			t.Fatalf("duplicate %s in sink", m.Payload)
		}
		seen[string(m.Payload)] = true
	}
	if len(msgs) != publishers*perPublisher {
		t.Errorf("sink has %d messages, want %d", len(msgs), publishers*perPublisher)
	}
	for range cap(got) {
		expectMessage(t, got)
	}
	st := s.Stats()
	if st.Accepted[1] != publishers*perPublisher || st.Injected != injectors*perInjector+publishers*perPublisher || len(local.Messages()) != publishers*perPublisher {
		t.Errorf("stats: accepted %v injected %d local %d", st.Accepted, st.Injected, len(local.Messages()))
	}
}

// TestCloseDisconnectsWithoutMochiCloseFn: a listener's Close disconnects
// its clients without mochi's CloseFn, whose Clients.GetByListener takes
// the clients' read lock twice and deadlocks when a client connects or
// leaves in between (mochi-mqtt/server#488; a CI run hung in Server.Close
// with GetByListener waiting on its second RLock behind two Deletes). The
// CloseFn given here blocks forever, as that one did.
func TestCloseDisconnectsWithoutMochiCloseFn(t *testing.T) {
	s, _ := startServer(t, testOptions{})
	c, err := dialPipe(s.Addr("tcp"), "v5-dash", true, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	testkit.WaitUntil(t, testkit.DefaultWait, "the client registered", func() bool {
		_, ok := s.ms.Clients.Get("v5-dash")
		return ok
	})
	var ln *listener
	for _, l := range s.lns {
		if l.id == "tcp" {
			ln = l
		}
	}
	if ln == nil {
		t.Fatal("no tcp listener")
	}
	hung := make(chan struct{})
	t.Cleanup(func() { close(hung) })
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		ln.Close(func(string) { <-hung }) // mochi's CloseFn, deadlocked
	}()
	select {
	case <-closed:
	case <-time.After(guard()):
		t.Fatal("hang guard: the listener's Close waited for mochi's CloseFn")
	}
	for {
		if _, err := c.read(); err != nil {
			break // disconnected
		}
	}
	testkit.WaitUntil(t, testkit.DefaultWait, "mochi forgot the client", func() bool {
		cl, ok := s.ms.Clients.Get("v5-dash")
		return !ok || cl.Closed()
	})
}

// TestCloseDisconnectsMQTT5WithShuttingDown: at shutdown an MQTT 5 client
// is told why, DISCONNECT 0x8B (Server shutting down, doc.go's table),
// before its connection closes; an MQTT 3.1.1 client (no DISCONNECT from
// a server in that version) sees the connection close.
func TestCloseDisconnectsMQTT5WithShuttingDown(t *testing.T) {
	s, _ := startServer(t, testOptions{})
	v5, code := dialRaw(t, s.Addr("tcp"), "dev5", connectOpts{v5: true})
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	v4, code := dialRaw(t, s.Addr("tcp"), "dev4", connectOpts{})
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), guard())
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	pk, err := v5.read(guard())
	if err != nil {
		t.Fatalf("MQTT 5 client: %v before a DISCONNECT", err)
	}
	if pk.typ != packets.Disconnect || len(pk.body) == 0 || pk.body[0] != packets.ErrServerShuttingDown.Code {
		t.Fatalf("MQTT 5 client got packet type %d body %x, want DISCONNECT 0x8B", pk.typ, pk.body)
	}
	v5.expectClosed()
	v4.expectClosed()
}
