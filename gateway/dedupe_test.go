package gateway

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
)

// dedupeGateway is a gateway with dev.yaml's kind of routes (the default
// dedupe) and an opt-in json:id route, bridging raw to a real mosquitto,
// with a subscriber there.
func dedupeGateway(t *testing.T) (*running, *bridgetest.Subscriber) {
	t.Helper()
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	sub := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: mq.URL(), Filter: "sites/#"})
	y := `
gateway_id: gw1
listeners:
  mqtt: {address: "127.0.0.1:0"}
  stomp: {address: ""}
  http: {address: ""}
allow_anonymous: true
spool: {path: ` + t.TempDir() + `/spool.db}
routes:
  - {name: telemetry, match: "sensors/#", priority: 5, ttl: 24h}
  - {name: open, match: "open/#", dedupe: "json:id"}
bridge:
  upstream: [` + mq.URL() + `]
  format: raw
`
	cfg, err := config.Parse("dedupe.yaml", []byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return startGateway(t, cfg), sub
}

func payloads(rs []bridgetest.Record, topic string) []string {
	var out []string
	for _, r := range rs {
		if r.Topic == topic {
			out = append(out, string(r.Payload))
		}
	}
	return out
}

// TestRepeatedReadingsAllDelivered: the README's Quick start publish,
// repeated — a steady temperature — reaches upstream every time (dev.yaml
// used to hash topic and payload for 10 minutes: 21.5 sent four times and
// 21.6 once gave only 21.6 upstream, with a normal PUBACK each time).
func TestRepeatedReadingsAllDelivered(t *testing.T) {
	r, sub := dedupeGateway(t)
	host, port, _ := net.SplitHostPort(r.g.MQTTAddr("mqtt"))
	for _, v := range []string{"21.5", "21.5", "21.5", "21.5", "21.6"} {
		if out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-t", "sensors/room1/temp", "-m", v).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
	}
	const topic = "sites/gw1/sensors/room1/temp"
	if !sub.WaitFor(testkit.DefaultWait, func(rs []bridgetest.Record) bool { return len(payloads(rs, topic)) >= 5 }) {
		t.Fatalf("upstream got %v, want 21.5 four times and 21.6", payloads(sub.Records(), topic))
	}
	if got := strings.Join(payloads(sub.Records(), topic), ","); got != "21.5,21.5,21.5,21.5,21.6" {
		t.Fatalf("upstream got %s", got)
	}
	if d := r.g.Spool().Stats().Duplicates; d != 0 {
		t.Fatalf("%d readings taken for duplicates", d)
	}
}

// TestEqualIDsOfTwoDevicesBothDelivered: with dedupe json:id, two devices
// whose counters collide both get their message upstream (the key used to
// be global: user-b got PUBACK 0 and its message was dropped); the same
// device sending its id again is the duplicate.
func TestEqualIDsOfTwoDevicesBothDelivered(t *testing.T) {
	r, sub := dedupeGateway(t)
	addr := "tcp://" + r.g.MQTTAddr("mqtt")
	publish := func(client, topic, payload string) {
		t.Helper()
		c := paho.NewClient(paho.NewClientOptions().AddBroker(addr).SetClientID(client).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		defer c.Disconnect(50)
		if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	publish("user-a", "open/dd/user-a", `{"id":"T-7"}`)
	publish("user-b", "open/dd/user-b", `{"id":"T-7"}`)
	publish("user-a", "open/dd/user-a", `{"id":"T-7"}`) // user-a's own resend: dropped
	if !sub.WaitFor(testkit.DefaultWait, func(rs []bridgetest.Record) bool {
		return len(payloads(rs, "sites/gw1/open/dd/user-a")) >= 1 && len(payloads(rs, "sites/gw1/open/dd/user-b")) >= 1
	}) {
		t.Fatalf("upstream got %v", sub.Records())
	}
	testkit.Wait(t, "the resend counted as a duplicate", func() bool { return r.g.Spool().Stats().Duplicates == 1 })
	if st := r.g.Spool().Stats(); st.Accepted != 2 {
		t.Fatalf("accepted %d, want 2", st.Accepted)
	}
}

// TestMQTTRetransmitDropped: the default drops what firmware retransmits
// are: a DUP publish of the same client and packet id whose first send was
// stored. A new publish that reuses the packet id (after its PUBACK) is a
// new message and is stored.
func TestMQTTRetransmitDropped(t *testing.T) {
	r, sub := dedupeGateway(t)
	c, err := net.DialTimeout("tcp", r.g.MQTTAddr("mqtt"), testkit.Timeout(testkit.DefaultWait))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
	connect := []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 5, 'd', 'e', 'v', '-', '1'}
	pub := func(flags byte, payload string) []byte {
		topic := "sensors/dev-1/t"
		body := append([]byte{0, byte(len(topic))}, topic...)
		body = append(body, 0, 5) // packet id 5
		body = append(body, payload...)
		return append([]byte{0x30 | flags, byte(len(body))}, body...)
	}
	ack := make([]byte, 4)
	send := func(b []byte) {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := readFull(c, ack); err != nil || ack[0]&0xf0 != 0x20 && ack[0] != 0x40 {
			t.Fatalf("answer %x: %v", ack, err)
		}
	}
	send(connect)             // CONNACK
	send(pub(0x02, "x"))      // QoS 1, packet id 5: stored
	send(pub(0x02|0x08, "x")) // DUP of it (the PUBACK was lost, as the device sees it): acknowledged, not stored
	send(pub(0x02, "y"))      // packet id 5 again, not DUP: a new message
	const topic = "sites/gw1/sensors/dev-1/t"
	if !sub.WaitFor(testkit.DefaultWait, func(rs []bridgetest.Record) bool { return len(payloads(rs, topic)) >= 2 }) {
		t.Fatalf("upstream got %v", payloads(sub.Records(), topic))
	}
	testkit.Wait(t, "the queue drained", func() bool { return r.g.Spool().Stats().Messages == 0 })
	if got := strings.Join(payloads(sub.Records(), topic), ","); got != "x,y" {
		t.Fatalf("upstream got %s, want x,y", got)
	}
	if d := r.g.Spool().Stats().Duplicates; d != 1 {
		t.Fatalf("duplicates %d, want 1", d)
	}
}
