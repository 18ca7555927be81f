package bridge

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
)

// TestRetainPerRoute: a retained device message reaches mosquitto retained
// when its route says upstream_retain (Options.Retain), and not retained
// otherwise; for MQTT 3.1.1 and 5.
func TestRetainPerRoute(t *testing.T) {
	for _, proto := range []int{4, 5} {
		t.Run(fmt.Sprintf("protocol=%d", proto), func(t *testing.T) {
			mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
			q := newTestQueue(t, "spool")
			now := time.Now()
			q.putAll(t, []*message.Message{
				{ID: message.NewID(now), Topic: "keep/a", UpstreamTopic: "rt/keep/a", UpstreamQoS: 1, Retain: true, Payload: []byte("k")},
				{ID: message.NewID(now), Topic: "drop/a", UpstreamTopic: "rt/drop/a", UpstreamQoS: 1, Retain: true, Payload: []byte("d")},
			})
			startBridge(t, q, Options{Brokers: []string{mq.URL()}, Protocol: proto,
				Retain: func(m *message.Message) bool { return strings.HasPrefix(m.Topic, "keep/") }})
			testkit.Wait(t, "queue empty", func() bool { return q.left(t) == 0 })
			// A subscriber that comes later gets what mosquitto retained.
			sub := bridgetest.NewSubscriber5(t, bridgetest.Subscriber5Options{URL: mq.URL(), Filter: "rt/#"})
			if !sub.WaitFor(30*time.Second, func(rs []bridgetest.Record) bool { return len(rs) > 0 }) {
				t.Fatal("the upstream did not retain the message of the retaining route")
			}
			time.Sleep(200 * time.Millisecond) // room for a wrongly retained second one
			rs := sub.Records()
			if len(rs) != 1 || rs[0].Topic != "rt/keep/a" || !rs[0].Retain {
				t.Fatalf("retained upstream: %+v, want only rt/keep/a", rs)
			}
		})
	}
}

// TestUpstreamQoS0: with Options.QoS0 a message of an upstream_qos 0
// route leaves the spool once sent, without the broker's PUBACK (here: a
// blackholed link answers nothing), while a QoS 1 one waits for it.
func TestUpstreamQoS0(t *testing.T) {
	for _, proto := range []int{4, 5} {
		t.Run(fmt.Sprintf("protocol=%d", proto), func(t *testing.T) {
			mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
			sub := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: mq.URL(), Filter: "q0/#"})
			px := bridgetest.NewProxy(t, mq.Addr())
			q := newTestQueue(t, "spool")
			b, _ := startBridge(t, q, Options{Brokers: []string{px.URL()}, Protocol: proto, QoS0: true, StallTimeout: 20 * time.Second})
			testkit.Wait(t, "bridge up", func() bool { return b.State() == StateUp })
			msgs, want := seqMessages("q0", 20, 2)
			for _, m := range msgs {
				m.UpstreamQoS = 0
			}
			q.putAll(t, msgs)
			if !sub.WaitFor(30*time.Second, allUnique(want)) {
				t.Fatalf("QoS 0 messages: %v", bridgetest.Check(sub.Records(), want, seqOf))
			}
			testkit.Wait(t, "queue empty", func() bool { return q.left(t) == 0 })
			px.Blackhole()
			zero, _ := seqMessages("q0b", 10, 1)
			one, _ := seqMessages("q1", 10, 1)
			for _, m := range zero {
				m.UpstreamQoS = 0
			}
			q.putAll(t, zero)
			testkit.Wait(t, "QoS 0 messages gone from the spool without a PUBACK", func() bool { return q.left(t) == 0 })
			q.putAll(t, one)
			testkit.Wait(t, "QoS 1 messages in flight", func() bool { return b.Stats().InFlight == 10 })
			if l := q.left(t); l != 10 {
				t.Fatalf("%d left in the spool, want the 10 QoS 1 messages awaiting their PUBACK", l)
			}
		})
	}
}
