package firmwaresim

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/protocols/mqtt"
)

// flakySink refuses every n-th message once with message.ErrFull (Ferry's
// MQTT 3.1.1 answer: no PUBACK, disconnect) and hands the accepted ones to
// the verifier as if they had arrived upstream.
type flakySink struct {
	v *Verifier
	n int

	mu        sync.Mutex
	calls     int
	refused   int
	wantMsgID bool // check the msg-id user property / header
	badHeader int
}

func (s *flakySink) Accept(_ context.Context, m *message.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.wantMsgID {
		if r, _, err := DecodeArrival(m.Payload); err != nil {
			s.badHeader++
		} else if h, _ := m.Header("msg-id"); h != r.ID {
			s.badHeader++
		}
	}
	if s.calls%s.n == 0 {
		s.refused++
		return message.ErrFull
	}
	s.v.Observe(m.Topic, m.Payload)
	return nil
}

// TestMQTTDevicesIntoFerryIngress: MQTT 3.1.1 and MQTT 5 devices publish
// into Ferry's own MQTT ingress, whose sink refuses now and then (3.1.1:
// disconnected without a PUBACK; 5: PUBACK 0x97); the device reconnects
// and re-sends, and every acknowledged reading reached the sink, in order.
// MQTT 5 readings carry their id in the msg-id user property.
//
// The MQTT 5 devices use Window 1: the messages in flight behind a refused
// one are refused too (the ingest core withdraws them), but one the device
// sends after the 0x97 left and before it arrived is a new message on a
// connection that stays up: stored, it reaches upstream before the refused
// one is re-sent, which the verifier reports as an order violation. That is
// inherent to negative PUBACKs with pipelining, not a gateway bug (G3 is
// per accepted order).
func TestMQTTDevicesIntoFerryIngress(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Ferry's MQTT listener: skipped with -short")
	}
	for _, proto := range []Protocol{MQTT311, MQTT5} {
		t.Run(proto.String(), func(t *testing.T) { testIngress(t, proto) })
	}
}

func testIngress(t *testing.T, proto Protocol) {
	const run = "ingress"
	v := NewVerifier(VerifierOptions{RunID: run})
	sink := &flakySink{v: v, n: 97, wantMsgID: proto == MQTT5}
	core, err := ingest.New(ingest.Options{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(core.Close)
	srv, err := mqtt.New(mqtt.Options{
		Listeners: []mqtt.Listener{{Name: "tcp", Kind: mqtt.KindTCP, Address: "127.0.0.1:0"}},
		Ingest:    core, Auth: message.AllowAll{},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait)) // a hang guard
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("mqtt close: %v", err)
		}
	})
	const devices, count = 3, 150
	window := 4
	if proto == MQTT5 {
		window = 1
	}
	f, err := NewFleet(FleetOptions{
		Devices: devices, Mix: []Protocol{proto}, MQTTAddr: srv.Addr("tcp"), RunID: run, Duration: fleetDuration, Drain: 10 * time.Second,
		Logger: testLogger(t),
		Template: DeviceConfig{QoS: 1, Rate: 300, Burst: 5, Count: count, Window: window,
			// The ack timeout is a hang guard: this test is about refusals; on
			// a loaded machine a 3s timeout also made devices reconnect while
			// their old connection still had publishes being stored.
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, AckTimeout: testkit.Timeout(30 * time.Second)},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := runFleet(t, f, v, nil)
	st := f.Stats()
	sink.mu.Lock()
	refused, badHeader := sink.refused, sink.badHeader
	sink.mu.Unlock()
	if badHeader > 0 {
		t.Errorf("%d messages without the reading id in msg-id", badHeader)
	}
	if refused == 0 || st.Cuts == 0 || st.Retransmits == 0 {
		t.Errorf("refusals (%d) did not make devices reconnect and re-send: %v", refused, st)
	}
	if r.Acked != devices*count || !r.OK() || r.Lost != 0 || r.OrderViolations != 0 {
		t.Errorf("report:\n%s", r)
	}
}
