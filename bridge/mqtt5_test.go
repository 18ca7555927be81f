package bridge

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
)

// rawSeqOf reads {"seq":N} from a raw-format record (the id came as the
// user property).
var rawSeqOf = seqOf

// TestMQTT5BacklogCutsNoLoss: a backlog spooled while the link is down, then
// drained to mosquitto over MQTT 5 in raw format with proxy cuts during the
// drain: nothing lost, order per topic, every duplicate with the id of its
// first copy (the user property), the window bounded by mosquitto's Receive
// Maximum.
func TestMQTT5BacklogCutsNoLoss(t *testing.T) {
	const n, recvMax = 20_000, 40
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{Extra: []string{fmt.Sprintf("max_inflight_messages %d", recvMax)}})
	q := newTestQueue(t, "spool")
	sub := bridgetest.NewSubscriber5(t, bridgetest.Subscriber5Options{URL: mq.URL(), Filter: "v5/#", IDProperty: IDProperty})
	px := bridgetest.NewProxy(t, mq.Addr())
	px.Refuse()
	b, stop := startBridge(t, q, Options{Brokers: []string{px.URL()}, Protocol: 5, Window: 256, ConnectTimeout: 2 * time.Second})
	testkit.Wait(t, "backoff while the link is down", func() bool { return b.State() == StateBackoff })
	msgs, want := seqMessages("v5", n, 8)
	q.putAll(t, msgs)
	px.Heal()
	cuts := 0
	ok := sub.WaitFor(2*time.Minute, func(rs []bridgetest.Record) bool {
		if len(rs) > (cuts+1)*n/6 && cuts < 5 {
			px.Cut()
			cuts++
		}
		return allUnique(want)(rs)
	})
	if !ok {
		t.Fatalf("not all arrived: %v; stats %+v", bridgetest.Check(sub.Records(), want, rawSeqOf), b.Stats())
	}
	testkit.Wait(t, "queue empty", func() bool { return q.left(t) == 0 })
	s := b.Stats()
	stop()
	rep := bridgetest.Check(sub.Records(), want, rawSeqOf)
	t.Logf("cuts=%d; %v; published=%d reconnects=%d window=%d", cuts, rep, s.Published, s.Reconnects, s.Partitions[0].Window)
	if !rep.OK() {
		t.Fatalf("%v", rep)
	}
	for _, r := range sub.Records() {
		if r.ID == "" {
			t.Fatalf("a message without the %s user property: %+v", IDProperty, r)
		}
	}
	if cuts < 5 || s.Reconnects < 5 {
		t.Fatalf("cuts %d, reconnects %d: the drain was not cut", cuts, s.Reconnects)
	}
	if w := s.Partitions[0].Window; w != recvMax {
		t.Fatalf("window %d, want mosquitto's Receive Maximum %d", w, recvMax)
	}
	if d := q.dead(t); len(d) != 0 {
		t.Fatalf("dead letters: %v", d)
	}
}

// TestMQTT5RefusedMessageDeadLettered: mosquitto (MQTT 5) answers a publish
// its ACL forbids with PUBACK 0x87; that message goes to the DLQ with the
// code, the connection stays up, and everything else arrives in order.
func TestMQTT5RefusedMessageDeadLettered(t *testing.T) {
	dir := t.TempDir()
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("topic readwrite v5/ok/#\ntopic read v5/deny/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// max_queued_messages 0 (bridgetest's default: unlimited) makes
	// mosquitto 2.0.11 drop the connection right after it sent the 0x87
	// PUBACK ("Bad socket read/write … Unknown error"); a finite limit does
	// not.
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{Extra: []string{"acl_file " + acl, "max_queued_messages 1000000"}})
	q := newTestQueue(t, "spool")
	sub := bridgetest.NewSubscriber5(t, bridgetest.Subscriber5Options{URL: mq.URL(), Filter: "v5/#", IDProperty: IDProperty})
	msgs, want := seqMessages("v5/ok", 600, 3)
	var all []*message.Message
	for i, m := range msgs {
		all = append(all, m)
		if i%200 == 100 {
			all = append(all, &message.Message{ID: fmt.Sprintf("denied-%d", i), Topic: "x", UpstreamTopic: "v5/deny/x", Payload: []byte("no")})
		}
	}
	q.putAll(t, all)
	b, _ := startBridge(t, q, Options{Brokers: []string{mq.URL()}, Protocol: 5, Window: 32})
	if !sub.WaitFor(time.Minute, allUnique(want)) {
		t.Fatalf("%v; stats %+v; dead %v", bridgetest.Check(sub.Records(), want, rawSeqOf), b.Stats(), q.dead(t))
	}
	testkit.Wait(t, "queue empty", func() bool { return q.left(t) == 0 })
	dead := q.dead(t)
	if len(dead) != 3 {
		t.Fatalf("dead letters %v, want the 3 denied messages", dead)
	}
	for id, reason := range dead {
		if !strings.Contains(reason, "0x87") {
			t.Fatalf("id %d: reason %q, want the PUBACK code 0x87; mosquitto log:\n%s", id, reason, mq.Log())
		}
	}
	if rep := bridgetest.Check(sub.Records(), want, rawSeqOf); !rep.OK() {
		t.Fatalf("%v", rep)
	}
	s := b.Stats()
	if s.Reconnects != 0 || s.Rejected != 3 || s.DeadLettered != 3 {
		t.Fatalf("reconnects %d rejected %d dead-lettered %d: a refused message must not cost the link", s.Reconnects, s.Rejected, s.DeadLettered)
	}
}

// TestMQTT5Properties: what the spool keeps of a message reaches an MQTT 5
// subscriber through mosquitto: the id property first, the device's user
// properties, content type, and the expiry as the remaining time.
func TestMQTT5Properties(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	q := newTestQueue(t, "spool")
	sub := bridgetest.NewSubscriber5(t, bridgetest.Subscriber5Options{URL: mq.URL(), Filter: "p5/#", IDProperty: IDProperty})
	now := time.Now()
	m := &message.Message{ID: message.NewID(now), Topic: "dev/a", UpstreamTopic: "p5/dev/a", Payload: []byte("21.5"),
		AcceptedAt: now.Add(-time.Hour), ExpiresAt: now.Add(90 * time.Minute), ContentType: "text/plain",
		Headers: []message.Header{{Key: "unit", Value: "C"}, {Key: "unit", Value: "K"}}}
	q.putAll(t, []*message.Message{m})
	startBridge(t, q, Options{Brokers: []string{mq.URL()}, Protocol: 5})
	if !sub.WaitFor(30*time.Second, func(rs []bridgetest.Record) bool { return len(rs) > 0 }) {
		t.Fatal("nothing arrived")
	}
	r := sub.Records()[0]
	if r.ID != m.ID || len(r.User) != 3 || r.User[0] != [2]string{IDProperty, m.ID} || r.User[1] != [2]string{"unit", "C"} || r.User[2] != [2]string{"unit", "K"} {
		t.Fatalf("user properties %v, want the id then unit=C, unit=K", r.User)
	}
	if r.ContentType != "text/plain" || string(r.Payload) != "21.5" {
		t.Fatalf("content type %q payload %q", r.ContentType, r.Payload)
	}
	// 90 minutes left when published (not 150, the original lifetime);
	// mosquitto may take off a second.
	if r.Expiry == nil || *r.Expiry > 90*60 || *r.Expiry < 90*60-60 {
		t.Fatalf("message expiry %v, want the remaining ~5400 s", r.Expiry)
	}
}

// TestMQTT5TopicAliases: with a Topic Alias Maximum of 2 the first two
// topics of a connection get aliases and are sent as alias only after their
// first publish; the third topic goes in full every time.
func TestMQTT5TopicAliases(t *testing.T) {
	a, bconn := net.Pipe()
	defer a.Close()
	nc := newBufConn(bconn, connHooks{})
	defer nc.Close()
	c := &mqtt5Conn{u: &MQTT5{}, nc: nc, aliasMax: 2, aliases: map[string]uint16{}}
	topics := []string{"t/a", "t/b", "t/c", "t/a", "t/b", "t/c"}
	for i, tp := range topics {
		if err := c.PublishMessage(uint16(i+1), tp, []byte("x"), &message.Message{ID: "id"}); err != nil {
			t.Fatal(err)
		}
	}
	c.Flush()
	type got struct {
		topic string
		alias uint16
	}
	want := []got{{"t/a", 1}, {"t/b", 2}, {"t/c", 0}, {"", 1}, {"", 2}, {"t/c", 0}}
	_ = a.SetReadDeadline(time.Now().Add(testkit.Timeout(10 * time.Second)))
	for i, w := range want {
		cp, err := packets.ReadPacket(a)
		if err != nil {
			t.Fatal(err)
		}
		p := cp.Content.(*packets.Publish)
		var alias uint16
		if p.Properties.TopicAlias != nil {
			alias = *p.Properties.TopicAlias
		}
		if p.Topic != w.topic || alias != w.alias || p.PacketID != uint16(i+1) || p.QoS != 1 {
			t.Fatalf("publish %d: topic %q alias %d pid %d qos %d, want %+v", i, p.Topic, alias, p.PacketID, p.QoS, w)
		}
	}
}
