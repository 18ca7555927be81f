package mqtt

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// pending is how many messages of the only client are waiting for their
// answer.
func pending(s *Server) int {
	n := 0
	s.hook.sessions.Range(func(_, v any) bool { n += v.(*session).stream.Pending(); return true })
	return n
}

// TestRefusalMidStream: twenty publishes in flight on one connection, the
// eleventh refused. Each protocol version gets exactly the documented
// answer for it (doc.go), the ten before it are acknowledged in order
// first, and nothing sent after it is acknowledged out of order: a
// transient refusal (full, rate) refuses what was in flight behind it,
// which is then not stored; a refusal about the message itself (ACL, too
// large) is that message's only; MQTT 3.1.1 (and MQTT 5 QoS 2) end the
// connection after the ten acknowledgements, without reading further.
func TestRefusalMidStream(t *testing.T) {
	const n, k = 20, 10
	type answer struct {
		code   int  // reason code of acks 10..19 as expected, -1: none (closed)
		after  int  // code for 11..19, -1: closed after 10
		closed int  // DISCONNECT code when the connection ends (-1: closed without one), -2: stays open
		stored bool // 11..19 stored
	}
	full := fmt.Errorf("%w: test", message.ErrFull)
	large := fmt.Errorf("%w: test", message.ErrTooLarge)
	for _, tc := range []struct {
		name        string
		v5          bool
		qos         byte
		sinkErr     error
		deny        bool // message 10 goes to a denied topic
		rate        bool // message 10 is over the rate
		waitPending int  // messages the server holds before the sink is released
		want        answer
	}{
		{name: "v5/full", v5: true, qos: 1, sinkErr: full, waitPending: n, want: answer{code: 0x97, after: 0x97, closed: -2}},
		{name: "v5/rate", v5: true, qos: 1, rate: true, waitPending: n, want: answer{code: 0x97, after: 0x97, closed: -2}},
		{name: "v5/acl", v5: true, qos: 1, deny: true, waitPending: n, want: answer{code: 0x87, after: 0, closed: -2, stored: true}},
		{name: "v5/too-large", v5: true, qos: 1, sinkErr: large, waitPending: n, want: answer{code: 0x83, after: 0, closed: -2, stored: true}},
		{name: "v5/qos2-full", v5: true, qos: 2, sinkErr: full, waitPending: n, want: answer{code: -1, after: -1, closed: 0x97}},
		{name: "v3/full", qos: 1, sinkErr: full, waitPending: n, want: answer{code: -1, after: -1, closed: -1}},
		{name: "v3/acl", qos: 1, deny: true, waitPending: k + 1, want: answer{code: -1, after: -1, closed: -1}},
		{name: "v3/rate", qos: 1, rate: true, waitPending: k + 1, want: answer{code: -1, after: -1, closed: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The ingest core calls a plain Sink for one message of a
			// connection at a time: the gate holds message 0, and the
			// others queue behind it in the server.
			sink := &recsink.Sink{Gate: make(chan struct{}), Err: func(m *message.Message) error {
				if string(m.Payload) == strconv.Itoa(k) {
					return tc.sinkErr
				}
				return nil
			}}
			to := testOptions{Sink: sink}
			if tc.deny {
				to.Auth = &testAuth{anonymous: true, denyPub: []string{"deny/"}}
			}
			now := time.Now()
			if tc.rate {
				to.PublishRate, to.PublishBurst, to.Now = 0.001, k, func() time.Time { return now }
			}
			s, _ := startServer(t, to)
			rc, _ := dialRaw(t, s.Addr("tcp"), "pipe", connectOpts{v5: tc.v5})
			for i := range n {
				topic := "t/a"
				if tc.deny && i == k {
					topic = "deny/a"
				}
				rc.publish(topic, []byte(strconv.Itoa(i)), tc.qos, uint16(i+1))
			}
			waitFor(t, fmt.Sprintf("%d messages held by the server", tc.waitPending), func() bool { return pending(s) >= tc.waitPending })
			close(sink.Gate)
			ackType := byte(4)
			if tc.qos == 2 {
				ackType = 5
			}
			for i := range k {
				if code := rc.ack(ackType, uint16(i+1)); code != 0 {
					t.Fatalf("message %d: reason %#x, want success", i, code)
				}
			}
			if tc.want.code >= 0 {
				if code := rc.ack(ackType, k+1); int(code) != tc.want.code {
					t.Fatalf("message %d: reason %#x, want %#x", k, code, tc.want.code)
				}
				for i := k + 1; i < n; i++ {
					if code := rc.ack(ackType, uint16(i+1)); int(code) != tc.want.after {
						t.Fatalf("message %d: reason %#x, want %#x", i, code, tc.want.after)
					}
				}
			}
			if tc.want.closed != -2 {
				if got := rc.expectClosed(); got != tc.want.closed {
					t.Fatalf("connection ended with %d, want %d", got, tc.want.closed)
				}
			}
			want := []string{}
			for i := range k {
				want = append(want, strconv.Itoa(i))
			}
			if tc.want.stored {
				for i := k + 1; i < n; i++ {
					want = append(want, strconv.Itoa(i))
				}
			}
			if got := sink.Payloads(); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("stored %v\nwant   %v", got, want)
			}
		})
	}
}

// TestPipelinedOrderAcrossReconnect: one client keeps 64 publishes in flight
// over 4 topics into the real spool; halfway its connection is cut, it
// reconnects and sends again what was not acknowledged (DUP), then goes on.
// The PUBACKs come in publish order on each connection, and the spool and a
// local subscriber see each topic's messages, first arrivals, in send order
// and complete (G3).
func TestPipelinedOrderAcrossReconnect(t *testing.T) {
	sp := openSpool(t, filepath.Join(t.TempDir(), "spool.db"))
	t.Cleanup(func() { _ = sp.Close() })
	s, _ := startServer(t, testOptions{Sink: spoolSink(sp)})
	const n, topics = 4000, 4
	var lmu sync.Mutex
	var local []paho.Message
	sub, _ := pahoClient(t, s.Addr("tcp"), "local-sub", nil)
	if tok := sub.Subscribe("ord/#", 1, func(_ paho.Client, m paho.Message) {
		lmu.Lock()
		local = append(local, m)
		lmu.Unlock()
	}); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	var amu sync.Mutex
	acked := 0
	onAck := func(pipeMsg) { amu.Lock(); acked++; amu.Unlock() }
	ackedN := func() int { amu.Lock(); defer amu.Unlock(); return acked }
	run := func(c *pipeClient, msgs []pipeMsg, dup bool, stop chan struct{}) chan error {
		done := make(chan error, 1)
		go func() { done <- c.readAcks(onAck) }()
		go func() {
			for _, m := range msgs {
				if !c.publish(m.topic, m.payload, dup, stop) {
					return
				}
			}
		}()
		return done
	}
	msgs := make([]pipeMsg, n)
	for i := range msgs {
		tp := i % topics
		msgs[i] = pipeMsg{topic: fmt.Sprintf("ord/%d", tp), payload: fmt.Appendf(nil, "%d-%d", tp, i/topics)}
	}
	// First connection: cut after half is acknowledged.
	c1, err := dialPipe(s.Addr("tcp"), "pipe-dev", false, 1, 64)
	if err != nil {
		t.Fatal(err)
	}
	stop1 := make(chan struct{})
	done1 := run(c1, msgs, false, stop1)
	waitFor(t, "half acknowledged", func() bool { return ackedN() >= n/2 })
	c1.close()
	close(stop1)
	<-done1
	unacked := c1.unacked()
	sentAll := ackedN() + len(unacked)
	t.Logf("cut with %d acknowledged, %d in flight", ackedN(), len(unacked))

	// Second connection: what was in flight again, in order, then the rest.
	c2, err := dialPipe(s.Addr("tcp"), "pipe-dev", false, 1, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.close()
	stop2 := make(chan struct{})
	defer close(stop2)
	rest := append(append([]pipeMsg(nil), unacked...), msgs[sentAll:]...)
	run(c2, rest, false, stop2)
	waitFor(t, "all acknowledged", func() bool { return ackedN() >= n })

	firstInOrder := func(what string, payloads []string) {
		t.Helper()
		next := make([]int, topics)
		for _, p := range payloads {
			var tp, seq int
			if _, err := fmt.Sscanf(p, "%d-%d", &tp, &seq); err != nil {
				t.Fatalf("%s: payload %q", what, p)
			}
			switch {
			case seq < next[tp]: // a duplicate of what was in flight at the cut
			case seq == next[tp]:
				next[tp]++
			default:
				t.Fatalf("%s: topic %d: first arrival of %d, want %d (reordered)", what, tp, seq, next[tp])
			}
		}
		for tp, got := range next {
			if got != n/topics {
				t.Fatalf("%s: topic %d: %d of %d", what, tp, got, n/topics)
			}
		}
	}
	var spooled []string
	for {
		items, err := sp.TryLease(1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			m, err := message.Decode(it.Data)
			if err != nil {
				t.Fatal(err)
			}
			spooled = append(spooled, string(m.Payload))
		}
	}
	firstInOrder("spool", spooled)
	waitFor(t, "local subscriber", func() bool { lmu.Lock(); defer lmu.Unlock(); return len(local) >= n })
	lmu.Lock()
	var got []string
	for _, m := range local {
		got = append(got, string(m.Payload()))
	}
	lmu.Unlock()
	firstInOrder("local subscriber", got)
}

// TestStuckSubscriberDoesNotHoldPublishers: a local QoS 1 subscriber with
// keepalive 0 stops reading. Publishers of its topic keep being
// acknowledged, another subscriber keeps receiving, and the stuck one is
// disconnected and counted (it used to freeze every publisher: mochi writes
// to a subscriber holding its lock, with no deadline, and delivery ran in
// the publisher's path). It is found either by the bytes waiting to be
// written to it or by its unacknowledged deliveries, whichever limit it
// reaches first.
func TestStuckSubscriberDoesNotHoldPublishers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		payload  int
		queue    int  // SubscriberQueue
		allReach bool // the healthy subscriber gets everything (its queue holds all)
	}{
		{"write buffer", 16 << 10, 20000, true},
		{"unacknowledged", 64, 256, false},
	} {
		t.Run(tc.name, func(t *testing.T) { testStuckSubscriber(t, tc.payload, tc.queue, tc.allReach) })
	}
}

func testStuckSubscriber(t *testing.T, size, queue int, allReach bool) {
	n := min(20000, (64<<20)/size) // more than the socket buffers and the write buffer can hold
	s, _ := startServer(t, testOptions{Sink: message.SinkFunc(func(context.Context, *message.Message) error { return nil }),
		Options: Options{WriteBuffer: 4 << 20, SubscriberQueue: queue}})
	stuck, _ := dialRaw(t, s.Addr("tcp"), "stuck", connectOpts{keepalive: 0})
	if code := stuck.subscribe("hot/#", 1, 1); code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}
	// It never reads again. Another subscriber reads everything.
	healthy, _ := dialRaw(t, s.Addr("tcp"), "healthy", connectOpts{})
	if code := healthy.subscribe("hot/#", 0, 1); code != 0 {
		t.Fatalf("SUBACK %#x", code)
	}
	var hmu sync.Mutex
	received := 0
	go func() {
		for {
			p, err := healthy.read(guard())
			if err != nil {
				return
			}
			if p.typ == 3 {
				hmu.Lock()
				received++
				hmu.Unlock()
			}
		}
	}()
	pub, err := dialPipe(s.Addr("tcp"), "pub", false, 1, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.close()
	var amu sync.Mutex
	acked := 0
	go func() { _ = pub.readAcks(func(pipeMsg) { amu.Lock(); acked++; amu.Unlock() }) }()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := range n {
			payload := make([]byte, size)
			binary.BigEndian.PutUint32(payload, uint32(i))
			if !pub.publish("hot/x", payload, false, stop) {
				return
			}
		}
	}()
	waitFor(t, "every publish acknowledged", func() bool { amu.Lock(); defer amu.Unlock(); return acked == n })
	waitFor(t, "the stuck subscriber disconnected and counted", func() bool { return s.Stats().SlowConsumers >= 1 })
	if allReach {
		waitFor(t, "the healthy subscriber to get every message", func() bool { hmu.Lock(); defer hmu.Unlock(); return received == n })
	}
	if st := s.Stats(); st.Accepted[1] != uint64(n) || st.Rejected[ingest.ReasonTimeout] != 0 {
		t.Fatalf("accepted %v, refused as timeout %d", st.Accepted, st.Rejected[ingest.ReasonTimeout])
	}
}

// TestReceiveMaximum: an MQTT 5 client is told MaxInflight as Receive
// Maximum in CONNACK and is disconnected with 0x93 when it sends more QoS 1
// messages than that before any is answered; an MQTT 3.1.1 client (which
// cannot be told) is simply not read while it has that many pending, and
// gets every acknowledgement once the spool answers.
func TestReceiveMaximum(t *testing.T) {
	const max = 4
	t.Run("v5", func(t *testing.T) {
		sink := &recsink.Sink{Gate: make(chan struct{})}
		defer close(sink.Gate)
		s, _ := startServer(t, testOptions{Sink: sink, Options: Options{MaxInflight: max}})
		rc, code := dialRaw(t, s.Addr("tcp"), "rm5", connectOpts{v5: true})
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		for i := range max + 1 {
			rc.publish("t/a", []byte(strconv.Itoa(i)), 1, uint16(i+1))
		}
		if got := rc.expectClosed(); got != 0x93 {
			t.Fatalf("connection ended with %d, want DISCONNECT 0x93 (receive maximum exceeded)", got)
		}
	})
	t.Run("v3", func(t *testing.T) {
		sink := &recsink.Sink{Gate: make(chan struct{})}
		s, _ := startServer(t, testOptions{Sink: sink, Options: Options{MaxInflight: max}})
		rc, _ := dialRaw(t, s.Addr("tcp"), "rm3", connectOpts{})
		const n = 3 * max
		for i := range n {
			rc.publish("t/a", []byte(strconv.Itoa(i)), 1, uint16(i+1))
		}
		waitFor(t, "the bound reached", func() bool { return pending(s) == max })
		time.Sleep(50 * time.Millisecond) // a wrongly read fifth one would show up (weaker when slow, never failing)
		if p := pending(s); p != max {
			t.Fatalf("%d pending, want at most %d", p, max)
		}
		close(sink.Gate)
		for i := range n {
			if code := rc.ack(4, uint16(i+1)); code != 0 {
				t.Fatalf("message %d: %#x", i, code)
			}
		}
	})
}
