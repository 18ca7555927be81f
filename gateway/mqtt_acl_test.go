package gateway

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
)

// aclGateway is a gateway with the default anonymous rights ('#' both
// ways, as configs/dev.yaml has them) and a user whose subscribe rights
// are limited, bridging raw to a real mosquitto.
func aclGateway(t *testing.T) (*running, *bridgetest.Subscriber) {
	t.Helper()
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		t.Skip("mosquitto_pub missing: apt-get install mosquitto-clients")
	}
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	sub := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: mq.URL(), Filter: "sites/#"})
	y := `
gateway_id: gw1
listeners:
  mqtt: {address: "127.0.0.1:0"}
  stomp: {address: ""}
  http: {address: ""}
allow_anonymous: true
users:
  - name: limited
    password_hash: '` + hashSecret + `'
    publish: ['#']
    subscribe: ['public/#']
spool: {path: ` + t.TempDir() + `/spool.db}
bridge:
  upstream: [` + mq.URL() + `]
  format: raw
`
	cfg, err := config.Parse("acl.yaml", []byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return startGateway(t, cfg), sub
}

func gwPaho(t *testing.T, addr, id, user string) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetAutoReconnect(false).
		SetConnectTimeout(testkit.Timeout(testkit.DefaultWait))
	if user != "" {
		o.SetUsername(user).SetPassword("secret")
	}
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func gwSubscribe(t *testing.T, c paho.Client, filter string) (chan paho.Message, byte) {
	t.Helper()
	return gwSubscribeTo(t, c, filter, make(chan paho.Message, 100))
}

func gwSubscribeTo(t *testing.T, c paho.Client, filter string, ch chan paho.Message) (chan paho.Message, byte) {
	t.Helper()
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { ch <- m })
	if !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return ch, tok.(*paho.SubscribeToken).Result()[filter]
}

func nextMessage(t *testing.T, ch chan paho.Message, what string) paho.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-testkit.After(testkit.DefaultWait):
		t.Fatalf("hang guard: no message %s", what)
		return nil
	}
}

// TestDollarTopicsUnderDefaultACL: with the default anonymous rights ('#')
// mosquitto_pub may publish to a $ topic that is not $SYS, in MQTT 3.1.1
// and 5 (it was refused: 3.1.1 disconnect, 5 PUBACK 0x87); the message is
// spooled and bridged, delivered to a subscriber of that $ topic, and not
// to a '#' subscriber (MQTT-4.7.2-1). $SYS stays refused.
func TestDollarTopicsUnderDefaultACL(t *testing.T) {
	r, up := aclGateway(t)
	addr := r.g.MQTTAddr("mqtt")
	host, port, _ := net.SplitHostPort(addr)
	all, _ := gwSubscribe(t, gwPaho(t, addr, "all", ""), "#")
	dollar, _ := gwSubscribe(t, gwPaho(t, addr, "dollar", ""), "$TopicA/#")
	for _, v := range []string{"mqttv311", "mqttv5"} {
		out, err := exec.Command("mosquitto_pub", "-V", v, "-h", host, "-p", port, "-q", "1", "-t", "$TopicA/B", "-m", v).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub -V %s -t '$TopicA/B': %v\n%s", v, err, out)
		}
		if m := nextMessage(t, dollar, "on $TopicA/#"); m.Topic() != "$TopicA/B" || string(m.Payload()) != v {
			t.Fatalf("$TopicA/# got %s %q", m.Topic(), m.Payload())
		}
	}
	// Fanned out to every local subscriber already: the '#' subscriber's
	// next message is the marker, not a $ topic.
	if out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-t", "marker", "-m", "m").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub marker: %v\n%s", err, out)
	}
	if m := nextMessage(t, all, "on #"); m.Topic() != "marker" {
		t.Fatalf("the '#' subscriber got %s %q: $ topics must not match '#' (MQTT-4.7.2-1)", m.Topic(), m.Payload())
	}
	const upTopic = "sites/gw1/$TopicA/B"
	if !up.WaitFor(testkit.DefaultWait, func(rs []bridgetest.Record) bool { return len(payloads(rs, upTopic)) >= 2 }) {
		t.Fatalf("upstream got %v", up.Records())
	}
	out, err := exec.Command("mosquitto_pub", "-V", "mqttv5", "-h", host, "-p", port, "-q", "1", "-t", "$SYS/x", "-m", "no").CombinedOutput()
	if err == nil {
		t.Fatalf("publish to $SYS accepted:\n%s", out)
	}
}

// TestDeniedSubscriptionGetsNothing: a SUBSCRIBE the ACL denies gets 0x80
// (3.1.1; paho) and 0x87 (5; mosquitto_sub reports it), and nothing
// published to its filter reaches the client.
func TestDeniedSubscriptionGetsNothing(t *testing.T) {
	r, _ := aclGateway(t)
	addr := r.g.MQTTAddr("mqtt")
	host, port, _ := net.SplitHostPort(addr)
	c := gwPaho(t, addr, "lim", "limited")
	ch, code := gwSubscribe(t, c, "private/#")
	if code != 0x80 {
		t.Fatalf("3.1.1 SUBACK %#x for a denied filter, want 0x80", code)
	}
	if _, code := gwSubscribeTo(t, c, "public/#", ch); code != 1 {
		t.Fatalf("SUBACK %#x for an allowed filter, want 1", code)
	}
	pub := gwPaho(t, addr, "pub", "")
	for _, topic := range []string{"private/x", "public/y"} {
		if tok := pub.Publish(topic, 1, false, topic); !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
	// Both subscriptions feed ch: the client's first message must be
	// public/y, published after private/x.
	if m := nextMessage(t, ch, "for lim"); m.Topic() != "public/y" {
		t.Fatalf("a denied subscription delivered %s %q", m.Topic(), m.Payload())
	}

	out, _ := exec.Command("mosquitto_sub", "-V", "mqttv5", "-h", host, "-p", port, "-u", "limited", "-P", "secret",
		"-t", "private/#", "-C", "1", "-W", "5", "-d").CombinedOutput()
	if !strings.Contains(string(out), "All subscription requests were denied") && !strings.Contains(string(out), "(135)") {
		t.Fatalf("mosquitto_sub -V 5 on a denied filter:\n%s", out)
	}
}
