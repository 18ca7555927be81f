package stomp

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/message"
)

func localMsg(topic, body string) *message.Message {
	return &message.Message{ID: message.NewID(time.Now()), Topic: topic, Payload: []byte(body), ContentType: "text/plain",
		Headers: []message.Header{{Key: "x-from", Value: "mqtt"}}}
}

func (c *rawClient) subscribe(dest, id, ack string) {
	c.t.Helper()
	c.send(fr(frame.SUBSCRIBE, "", frame.Destination, dest, frame.Id, id, frame.Ack, ack, frame.Receipt, "sub-"+id))
	if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != "sub-"+id {
		c.t.Fatalf("SUBSCRIBE: got %s %v", f.Command, headerList(f))
	}
}

func (c *rawClient) expectMessage(dest, body string) *frame.Frame {
	c.t.Helper()
	f := c.next()
	if f.Command != frame.MESSAGE || f.Header.Get(frame.Destination) != dest || string(f.Body) != body {
		c.t.Fatalf("want MESSAGE %s %q, got %s %v %q", dest, body, f.Command, headerList(f), f.Body)
	}
	return f
}

// ackFrame builds ACK or NACK of a MESSAGE in the form of version v.
func ackFrame(cmd string, v Version, m *frame.Frame, receipt string) *frame.Frame {
	var f *frame.Frame
	if v == V12 {
		f = frame.New(cmd, frame.Id, m.Header.Get(frame.Ack))
	} else {
		f = frame.New(cmd, frame.MessageId, m.Header.Get(frame.MessageId), frame.Subscription, m.Header.Get(frame.Subscription))
	}
	f.Header.Add(frame.Receipt, receipt)
	return f
}

func (c *rawClient) ackOK(cmd string, m *frame.Frame, receipt string) {
	c.t.Helper()
	c.send(ackFrame(cmd, c.v, m, receipt))
	// MESSAGE frames are not ordered with receipts: keep them for later.
	var msgs []*frame.Frame
	for {
		f := c.next()
		if f.Command == frame.MESSAGE {
			msgs = append(msgs, f)
			continue
		}
		if f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != receipt {
			c.t.Fatalf("%s: got %s %v %q", cmd, f.Command, headerList(f), f.Body)
		}
		break
	}
	c.unread = append(c.unread, msgs...)
}

func TestSubscribeAckNackPerVersion(t *testing.T) {
	s, addr := startServer(t, testOptions{})
	for _, v := range []Version{V11, V12} {
		t.Run(v.String(), func(t *testing.T) {
			before := s.Stats()
			c := connectRaw(t, addr, v)
			dest := "/queue/work.v" + strings.ReplaceAll(v.String(), ".", "")
			c.subscribe(dest, "s1", "client-individual")
			topic, _, _ := message.FromSTOMP(dest)
			s.PublishLocal(localMsg(topic, "job1"))
			m := c.expectMessage(dest, "job1")
			if m.Header.Get(frame.Subscription) != "s1" || m.Header.Get(frame.ContentType) != "text/plain" || m.Header.Get("x-from") != "mqtt" {
				t.Errorf("MESSAGE headers %v", headerList(m))
			}
			if v == V12 && m.Header.Get(frame.Ack) == "" {
				t.Error("1.2 MESSAGE without ack header")
			}
			c.ackOK(frame.NACK, m, "n1")
			again := c.expectMessage(dest, "job1")
			if again.Header.Get("redelivered") != "true" || again.Header.Get(frame.MessageId) == m.Header.Get(frame.MessageId) {
				t.Errorf("redelivery headers %v", headerList(again))
			}
			c.ackOK(frame.ACK, again, "a1")
			// Acked: acking again is an error.
			c.send(ackFrame(frame.ACK, v, again, "a2"))
			c.expectError("unknown message")
			st := s.Stats()
			if st.Redeliveries-before.Redeliveries != 1 || st.LocalDeliveries-before.LocalDeliveries != 2 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestAckClientCumulative: in ack:client mode one ACK acknowledges every
// earlier message of the subscription; unacked messages bound delivery.
func TestAckClientCumulative(t *testing.T) {
	s, addr := startServer(t, testOptions{Options: Options{SubscriptionQueue: 2}})
	c := connectRaw(t, addr, V10)
	c.subscribe("/topic/t", "s", "client")
	s.PublishLocal(localMsg("t", "m0"))
	s.PublishLocal(localMsg("t", "m1"))
	c.expectMessage("/topic/t", "m0")
	m1 := c.expectMessage("/topic/t", "m1")
	// Two unacked: the next two wait in the queue, the rest are dropped.
	drops := s.Stats().LocalDrops
	for i := 2; i < 10; i++ {
		s.PublishLocal(localMsg("t", "m"+strconv.Itoa(i)))
	}
	// PublishLocal enqueues or drops synchronously, so the drops below are
	// counted already; the short wait only lets a wrong delivery show up.
	if f, err := c.nextErr(200 * time.Millisecond); err == nil {
		t.Fatalf("got %s %q past the unacked bound", f.Command, f.Body)
	}
	if got := s.Stats().LocalDrops - drops; got != 6 {
		t.Fatalf("LocalDrops grew by %d, want 6", got)
	}
	c.ackOK(frame.ACK, m1, "a") // acks m0 and m1
	c.expectMessage("/topic/t", "m2")
	m3 := c.expectMessage("/topic/t", "m3")
	c.ackOK(frame.ACK, m3, "b")
	c.send(ackFrame(frame.ACK, V10, m1, "c"))
	c.expectError("unknown message")
}

func TestNackIn10IsAnError(t *testing.T) {
	_, addr := startServer(t, testOptions{})
	c := connectRaw(t, addr, V10)
	c.send(fr(frame.NACK, "", frame.MessageId, "1", frame.Receipt, "r"))
	c.expectError("NACK is not defined")
}

// TestQueueCompetesTopicFansOut: each message goes to one member of a
// /queue group and to every /topic subscriber.
func TestQueueCompetesTopicFansOut(t *testing.T) {
	_, addr := startServer(t, testOptions{})
	q1, q2 := connectRaw(t, addr, V12), connectRaw(t, addr, V11)
	t1, t2 := connectRaw(t, addr, V12), connectRaw(t, addr, V10)
	q1.subscribe("/queue/jobs.*", "q", "auto")
	q2.subscribe("/queue/jobs.*", "q", "auto")
	t1.subscribe("/topic/jobs.#", "t", "auto")
	t2.subscribe("/topic/jobs.a", "t", "auto")
	pub := connectRaw(t, addr, V12)
	const n = 20
	for i := range n {
		pub.send(fr(frame.SEND, strconv.Itoa(i), frame.Destination, "/queue/jobs.a", frame.Receipt, strconv.Itoa(i)))
	}
	for i := range n {
		if f := pub.next(); f.Header.Get(frame.ReceiptId) != strconv.Itoa(i) {
			t.Fatalf("receipt %d: %v", i, headerList(f))
		}
	}
	for _, tc := range []*rawClient{t1, t2} {
		for i := range n {
			tc.expectMessage("/topic/jobs.a", strconv.Itoa(i))
		}
	}
	// Read both queue members at once until n messages arrived (the hang
	// guard bounds it; a quiet spell no longer ends the count early), then
	// give an extra delivery a short chance to show up.
	type got struct {
		member int
		f      *frame.Frame
	}
	frames := make(chan got, 2*n)
	var readers sync.WaitGroup
	for i, c := range []*rawClient{q1, q2} {
		readers.Go(func() {
			for {
				f, err := c.nextErr(guard())
				if err != nil {
					return
				}
				frames <- got{i, f}
			}
		})
	}
	seen := map[string]int{}
	var k [2]int
	take := func(g got) {
		if d := g.f.Header.Get(frame.Destination); g.f.Command != frame.MESSAGE || d != "/queue/jobs.a" {
			t.Fatalf("queue member %d: %s %v", g.member+1, g.f.Command, headerList(g.f))
		}
		seen[string(g.f.Body)]++
		k[g.member]++
	}
	for range n {
		select {
		case g := <-frames:
			take(g)
		case <-time.After(guard()):
			t.Fatalf("hang guard: queue members got %d and %d of %d", k[0], k[1], n)
		}
	}
	select {
	case g := <-frames:
		take(g)
	case <-time.After(300 * time.Millisecond): // weaker when slow, never failing
	}
	_, _ = q1.nc.Close(), q2.nc.Close() // ends the readers
	readers.Wait()
	if k[0] == 0 || k[1] == 0 || k[0]+k[1] != n {
		t.Fatalf("queue members got %d and %d, want a split of %d", k[0], k[1], n)
	}
	for i := range n {
		if seen[strconv.Itoa(i)] != 1 {
			t.Fatalf("message %d delivered %d times on the queue", i, seen[strconv.Itoa(i)])
		}
	}
}

// TestUnsubscribeHandsBackQueueMessages: unacked /queue messages of a
// subscription that goes away go to another member.
func TestUnsubscribeHandsBackQueueMessages(t *testing.T) {
	s, addr := startServer(t, testOptions{})
	a, b := connectRaw(t, addr, V12), connectRaw(t, addr, V12)
	a.subscribe("/queue/q", "a", "client-individual")
	s.PublishLocal(localMsg("q", "held"))
	a.expectMessage("/queue/q", "held")
	b.subscribe("/queue/q", "b", "client-individual")
	a.send(fr(frame.UNSUBSCRIBE, "", frame.Id, "a", frame.Receipt, "u"))
	if f := a.next(); f.Header.Get(frame.ReceiptId) != "u" {
		t.Fatalf("got %v", headerList(f))
	}
	m := b.expectMessage("/queue/q", "held")
	b.ackOK(frame.ACK, m, "ok")
	// The same when the connection drops.
	s.PublishLocal(localMsg("q", "again"))
	m = b.expectMessage("/queue/q", "again")
	a.subscribe("/queue/q", "a2", "auto")
	_ = b.nc.Close()
	a.expectMessage("/queue/q", "again")
	_ = m
}

func TestRedeliveriesBounded(t *testing.T) {
	s, addr := startServer(t, testOptions{Options: Options{MaxRedeliveries: 2}})
	c := connectRaw(t, addr, V12)
	c.subscribe("/topic/r", "s", "client-individual")
	s.PublishLocal(localMsg("r", "x"))
	m := c.expectMessage("/topic/r", "x")
	for i := range 2 {
		c.ackOK(frame.NACK, m, "n"+strconv.Itoa(i))
		m = c.expectMessage("/topic/r", "x")
	}
	drops := s.Stats().LocalDrops
	c.ackOK(frame.NACK, m, "last")
	if f, err := c.nextErr(200 * time.Millisecond); err == nil { // weaker when slow, never failing
		t.Fatalf("redelivered past MaxRedeliveries: %s", f.Command)
	}
	if s.Stats().LocalDrops != drops+1 {
		t.Fatal("exhausted redelivery not counted as a drop")
	}
}

func TestUnsubscribeByDestinationIn10(t *testing.T) {
	s, addr := startServer(t, testOptions{})
	c := connectRaw(t, addr, V10)
	c.subscribe("/topic/u10", "explicit-id", "auto")
	c.send(fr(frame.UNSUBSCRIBE, "", frame.Destination, "/topic/u10", frame.Receipt, "u"))
	if f := c.next(); f.Header.Get(frame.ReceiptId) != "u" {
		t.Fatalf("got %s %v", f.Command, headerList(f))
	}
	s.PublishLocal(localMsg("u10", "after"))
	if f, err := c.nextErr(200 * time.Millisecond); err == nil { // weaker when slow, never failing
		t.Fatalf("delivered after UNSUBSCRIBE: %s %q", f.Command, f.Body)
	}
}

// TestMessageHeaderEscapingPerVersion: headers from other protocols reach
// each subscriber escaped for its version (1.0 cannot escape: EOLs become
// spaces, keys with ':' are left out).
func TestMessageHeaderEscapingPerVersion(t *testing.T) {
	s, addr := startServer(t, testOptions{})
	m := localMsg("esc", "x")
	m.Headers = []message.Header{{Key: "multi", Value: "a\nb:c\\d"}, {Key: "k:colon", Value: "v"}}
	for _, tc := range []struct {
		v              Version
		multi, colonOK string
	}{
		{V10, "a b:c\\d", ""},
		{V11, "a\nb:c\\d", "v"},
		{V12, "a\nb:c\\d", "v"},
	} {
		c := connectRaw(t, addr, tc.v)
		c.subscribe("/topic/esc", "s", "auto")
		s.PublishLocal(m)
		f := c.expectMessage("/topic/esc", "x")
		if got := f.Header.Get("multi"); got != tc.multi {
			t.Errorf("%s: multi = %q, want %q", tc.v, got, tc.multi)
		}
		if got := f.Header.Get("k:colon"); got != tc.colonOK {
			t.Errorf("%s: k:colon = %q, want %q", tc.v, got, tc.colonOK)
		}
	}
}

// TestStuckSubscriberDisconnected: a subscriber that stops reading fills
// its socket and then its subscription queue; it is disconnected and
// counted (a SEND is QoS 1: silently dropping it for the subscriber is not
// an answer), while the publisher's receipts keep coming and another
// subscriber gets every message.
func TestStuckSubscriberDisconnected(t *testing.T) {
	const n = 30000 // 30 MB: more than the socket buffers and the queue hold
	// A queue that a reading subscriber does not fill on a loaded machine;
	// the stuck one fills its socket first, then the queue.
	s, addr := startServer(t, testOptions{Options: Options{SubscriptionQueue: 5000, MaxPipelined: 64}})
	stuck := connectRaw(t, addr, V12)
	stuck.send(fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/hot.#", frame.Id, "s", frame.Receipt, "sub"))
	if f := stuck.next(); f.Command != frame.RECEIPT {
		t.Fatalf("got %s", f.Command)
	}
	// stuck never reads again.
	healthy := connectRaw(t, addr, V12)
	healthy.send(fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/hot.#", frame.Id, "h", frame.Receipt, "sub"))
	if f := healthy.next(); f.Command != frame.RECEIPT {
		t.Fatalf("got %s", f.Command)
	}
	var mu sync.Mutex
	got := 0
	go func() {
		for {
			f, err := healthy.nextErr(guard())
			if err != nil {
				return
			}
			if f.Command == frame.MESSAGE {
				mu.Lock()
				got++
				mu.Unlock()
			}
		}
	}()
	pub := connectRaw(t, addr, V12)
	body := strings.Repeat("x", 1024)
	go func() {
		for i := range n {
			pub.send(fr(frame.SEND, body, frame.Destination, "/topic/hot.x", frame.Receipt, strconv.Itoa(i)))
		}
	}()
	for i := range n {
		f := pub.next()
		if f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != strconv.Itoa(i) {
			t.Fatalf("receipt %d: got %s %v", i, f.Command, headerList(f))
		}
	}
	waitFor(t, "the stuck subscriber disconnected and counted", func() bool { return s.Stats().SlowConsumers == 1 })
	waitFor(t, "the healthy subscriber to get every message", func() bool { mu.Lock(); defer mu.Unlock(); return got == n })
}

// TestSubscriptionQueueBytes: a subscription that holds large messages
// (unacked in ack:client mode) is bounded in bytes, not only in count: the
// message that would pass SubscriptionQueueBytes is dropped for QoS 0 and
// counted; after the ACK there is room again.
func TestSubscriptionQueueBytes(t *testing.T) {
	s, addr := startServer(t, testOptions{Options: Options{SubscriptionQueue: 1000, SubscriptionQueueBytes: 3 * 10_000}})
	c := connectRaw(t, addr, V12)
	c.subscribe("/topic/big", "s", "client")
	body := strings.Repeat("x", 10_000)
	drops := s.Stats().LocalDrops
	for i := range 10 {
		s.PublishLocal(localMsg("big", fmt.Sprintf("%d%s", i, body)))
	}
	// Topic and body: a bit over 10,000 bytes each, so two fit in 30,000
	// (the first always does), the third would pass it.
	if got := s.Stats().LocalDrops - drops; got != 8 {
		t.Fatalf("LocalDrops grew by %d for 10 messages of 10 kB under a 30 kB bound, want 8", got)
	}
	c.expectMessage("/topic/big", "0"+body)
	m1 := c.expectMessage("/topic/big", "1"+body)
	c.ackOK(frame.ACK, m1, "a")
	s.PublishLocal(localMsg("big", "after"))
	c.expectMessage("/topic/big", "after")
}
