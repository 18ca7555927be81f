package bridge

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
)

// lostAckUpstream is paho whose first downstream PUBACK is lost: Ack does
// nothing for the first command, as when the gateway dies (or the link
// drops) between the commit and the PUBACK.
type lostAckUpstream struct {
	Paho
	mu    sync.Mutex
	lost  bool
	conns chan Conn
	seen  chan Incoming
}

func (u *lostAckUpstream) Connect(ctx context.Context, cfg ConnConfig) (Conn, error) {
	on := cfg.OnMessage
	cfg.OnMessage = func(in Incoming) {
		u.mu.Lock()
		if !u.lost {
			u.lost = true
			in.Ack = func() {}
		}
		u.mu.Unlock()
		u.seen <- in
		on(in)
	}
	c, err := u.Paho.Connect(ctx, cfg)
	if err == nil {
		u.conns <- c
	}
	return c, err
}

// TestDownstreamRedeliveryStoredOnce: with a real mosquitto and a real
// spool as the sink, a command whose PUBACK was lost is sent again by the
// broker on the next connection (persistent session: DUP, same packet id)
// and recognised by the spool's dedupe index: stored once, and acknowledged
// this time, so the broker does not send it a third time.
func TestDownstreamRedeliveryStoredOnce(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	sp, err := spool.Open(filepath.Join(t.TempDir(), "down.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	u := &lostAckUpstream{Paho: Paho{Brokers: []string{mq.URL()}, KeepAlive: defaultKeepAlive, ConnectTimeout: defaultConnTimeout},
		conns: make(chan Conn, 8), seen: make(chan Incoming, 8)}
	b, _ := startBridge(t, newFakeQueue(), Options{Upstream: u, Downstream: []DownstreamRoute{{Remote: "cmd/{gateway_id}/#", Local: "cmd/#"}},
		DownstreamSink: spoolsink.New(sp, spoolsink.Options{})})
	first := <-u.conns
	pub := paho.NewClient(paho.NewClientOptions().AddBroker(mq.URL()).SetClientID("cmd-pub"))
	if tok := pub.Connect(); !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	if tok := pub.Publish("cmd/gw1/pump1/valve", 1, false, "open"); !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	in := <-u.seen
	testkit.Wait(t, "the command stored", func() bool { return sp.Stats().Messages == 1 })
	first.Close() // the bridge reconnects; the broker still waits for the PUBACK
	again := <-u.seen
	if !again.Dup || again.PacketID != in.PacketID || in.Dup {
		t.Fatalf("first send dup %v pid %d; redelivery dup %v pid %d", in.Dup, in.PacketID, again.Dup, again.PacketID)
	}
	testkit.Wait(t, "the redelivery recognised", func() bool { return sp.Stats().Duplicates == 1 && b.Stats().DownstreamAccepted == 2 })
	// Acknowledged now: a new command is the next thing to arrive, not a
	// third copy.
	if tok := pub.Publish("cmd/gw1/pump1/valve", 1, false, "close"); !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if next := <-u.seen; next.Dup || string(next.Payload) != "close" {
		t.Fatalf("after the redelivery: dup %v payload %q", next.Dup, next.Payload)
	}
	testkit.Wait(t, "two commands stored", func() bool { return sp.Stats().Messages == 2 })
	items, err := sp.TryLease(10)
	if err != nil || len(items) != 2 {
		t.Fatalf("lease: %v %v", items, err)
	}
	for i, want := range []string{"cmd/pump1/valve=open", "cmd/pump1/valve=close"} {
		m, err := message.Decode(items[i].Data)
		if err != nil || m.Topic+"="+string(m.Payload) != want {
			t.Fatalf("stored %d: %v %v, want %s", i, m, err, want)
		}
	}
}
