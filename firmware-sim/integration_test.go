package firmwaresim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/protocols/stomp"
)

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return nil
}

// runFleet runs f while during (if set) disturbs it, waits for the
// acknowledged readings to arrive at v and returns the report.
func runFleet(t *testing.T, f *Fleet, v *Verifier, during func(ctx context.Context)) Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	fctx, stopDisturbing := context.WithCancel(ctx)
	if during != nil {
		wg.Go(func() { during(fctx) })
	}
	err := f.Run(ctx)
	stopDisturbing()
	wg.Wait()
	if err != nil {
		t.Fatalf("fleet: %v", err)
	}
	acked := f.Acked()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	v.WaitFor(wctx, acked)
	r := v.Report(acked)
	t.Logf("fleet: %v\n%s", f.Stats(), r)
	return r
}

func startVerifier(t *testing.T, broker, runID string) *Verifier {
	t.Helper()
	v := NewVerifier(VerifierOptions{Broker: broker, Filter: "sensors/#", RunID: runID, Logger: testLogger(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

// TestFleetIntoMosquitto: MQTT 3.1.1 and 5 devices publish straight into a real
// mosquitto; the verifier, subscribed to the same broker, finds every
// acknowledged reading, in order.
func TestFleetIntoMosquitto(t *testing.T) {
	m := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	const devices, count = 4, 150
	f, err := NewFleet(FleetOptions{
		Devices: devices, Mix: []Protocol{MQTT311, MQTT5}, MQTTAddr: m.Addr(), Duration: 20 * time.Second, Drain: 5 * time.Second,
		Logger:   testLogger(t),
		Template: DeviceConfig{Topic: "sensors/{device}/temp", QoS: 1, Rate: 500, Burst: 10, Count: count, Window: 8, PayloadSize: 200},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	r := runFleet(t, f, v, nil)
	if r.Acked != devices*count {
		t.Errorf("acked %d, want %d", r.Acked, devices*count)
	}
	if !r.OK() || r.Lost != 0 || r.OrderViolations != 0 || r.Arrived != devices*count {
		t.Errorf("report not clean:\n%s", r)
	}
	if r.AckToArrival.N != devices*count || r.Throughput <= 0 {
		t.Errorf("latency/throughput not measured: %+v", r)
	}
	st := f.Stats()
	if st.Sent != devices*count || st.Unacked != 0 || st.Retransmits != 0 {
		t.Errorf("stats %v", st)
	}
}

// TestQoS0IsNotAcked: QoS 0 readings arrive but are never acknowledged, so
// none of them can count as lost.
func TestQoS0IsNotAcked(t *testing.T) {
	m := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	f, err := NewFleet(FleetOptions{
		Devices: 1, MQTTAddr: m.Addr(), Duration: 10 * time.Second, Drain: time.Second,
		Template: DeviceConfig{QoS: 0, Rate: 200, Count: 20},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	runFleet(t, f, v, nil)
	if !v.waitArrived(t, 20) {
		t.Errorf("QoS 0 readings did not arrive: %d", v.Arrived())
	}
	r := v.Report(f.Acked())
	if r.Acked != 0 || r.Unacked != 20 || !r.OK() {
		t.Errorf("report:\n%s", r)
	}
}

func (v *Verifier) waitArrived(t *testing.T, n int) bool {
	t.Helper()
	end := time.Now().Add(5 * time.Second)
	for time.Now().Before(end) {
		if v.Arrived() >= n {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// TestRetransmitAfterCut: MQTT 3.1.1 and 5 devices publish through a proxy
// that cuts every connection again and again; the devices reconnect,
// re-send what was not acknowledged, and the verifier still finds every
// acknowledged reading in order (duplicates allowed).
func TestRetransmitAfterCut(t *testing.T) {
	for _, qos := range []byte{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) { testRetransmitAfterCut(t, qos) })
	}
}

func testRetransmitAfterCut(t *testing.T, qos byte) {
	m := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	p := bridgetest.NewProxy(t, m.Addr())
	// Latency keeps acks in flight, so cuts catch unacknowledged messages.
	p.SetLatency(2 * time.Millisecond)
	const devices, count = 3, 300
	f, err := NewFleet(FleetOptions{
		Devices: devices, Mix: []Protocol{MQTT311, MQTT5}, MQTTAddr: p.Addr(), Duration: 30 * time.Second, Drain: 10 * time.Second,
		Logger: testLogger(t),
		Template: DeviceConfig{QoS: qos, Rate: 300, Burst: 5, Count: count, Window: 16,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, AckTimeout: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	cuts := 0
	r := runFleet(t, f, v, func(ctx context.Context) {
		tick := time.NewTicker(150 * time.Millisecond)
		defer tick.Stop()
		for cuts < 8 {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				p.Cut()
				cuts++
			}
		}
	})
	st := f.Stats()
	if st.Cuts == 0 || st.Connects <= devices {
		t.Errorf("devices did not notice the %d cuts: %v", cuts, st)
	}
	if st.Retransmits == 0 {
		t.Errorf("no retransmits after %d cuts: %v", cuts, st)
	}
	if r.Acked != devices*count || st.Unacked != 0 {
		t.Errorf("acked %d of %d: %v", r.Acked, devices*count, st)
	}
	if !r.OK() || r.Lost != 0 || r.OrderViolations != 0 {
		t.Errorf("report not clean:\n%s", r)
	}
}

// TestOfflineSpells: a device that goes offline on purpose comes back and
// loses nothing.
func TestOfflineSpells(t *testing.T) {
	m := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	f, err := NewFleet(FleetOptions{
		Devices: 2, MQTTAddr: m.Addr(), Duration: 20 * time.Second, Drain: 5 * time.Second,
		Template: DeviceConfig{QoS: 2, Rate: 200, Count: 150, Window: 4, OfflineEvery: 200 * time.Millisecond, OfflineFor: 100 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	r := runFleet(t, f, v, nil)
	st := f.Stats()
	if st.OfflineSpells < 2 || st.Connects < 4 {
		t.Errorf("no offline spells: %v", st)
	}
	if r.Acked != 300 || !r.OK() || r.Duplicates != 0 {
		t.Errorf("report:\n%s", r)
	}
}

// recordingSink hands every accepted STOMP SEND to the verifier, as if it
// had arrived upstream. It is a message.OrderedSink, like the spool
// adapter: the STOMP server then submits one connection's pipelined SENDs
// in frame order (concurrent Accept calls would race each other).
type recordingSink struct {
	v *Verifier
}

func (s *recordingSink) Accept(ctx context.Context, m *message.Message) error {
	return s.Submit(ctx, m)()
}

func (s *recordingSink) Submit(_ context.Context, m *message.Message) func() error {
	s.v.Observe(m.Topic, m.Payload)
	return func() error { return nil }
}

func startSTOMP(t *testing.T, sink message.Sink) string {
	t.Helper()
	srv, err := stomp.NewServer(stomp.Options{Sink: sink, Auth: message.AllowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("stomp close: %v", err)
		}
		if err := <-served; !errors.Is(err, stomp.ErrServerClosed) {
			t.Errorf("stomp serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// TestSTOMPDevices: STOMP devices SEND with receipts (pipelined) into
// Ferry's STOMP server, through a proxy that cuts them; every reading that
// got a RECEIPT reached the sink, in order.
func TestSTOMPDevices(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a STOMP server and a proxy: skipped with -short")
	}
	const run = "stomptest"
	v := NewVerifier(VerifierOptions{RunID: run})
	sink := &recordingSink{v: v}
	addr := startSTOMP(t, sink)
	p := bridgetest.NewProxy(t, addr)
	p.SetLatency(time.Millisecond)
	const devices, count = 3, 200
	f, err := NewFleet(FleetOptions{
		Devices: devices, Mix: []Protocol{STOMP}, STOMPAddr: p.Addr(), RunID: run, Duration: 30 * time.Second, Drain: 10 * time.Second,
		Logger: testLogger(t),
		Template: DeviceConfig{QoS: 1, Rate: 400, Burst: 5, Count: count, Window: 8, PayloadSize: 300,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, AckTimeout: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	cuts := 0
	r := runFleet(t, f, v, func(ctx context.Context) {
		tick := time.NewTicker(150 * time.Millisecond)
		defer tick.Stop()
		for cuts < 4 {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				p.Cut()
				cuts++
			}
		}
	})
	st := f.Stats()
	if r.Acked != devices*count || !r.OK() || r.Lost != 0 || r.OrderViolations != 0 {
		t.Errorf("report:\n%s", r)
	}
	if st.Cuts == 0 || st.Retransmits == 0 {
		t.Errorf("cuts did not cause retransmits: %v", st)
	}
	for _, d := range f.Devices() {
		if want := "sensors/" + d.Name() + "/temp"; d.Topic() != want {
			t.Errorf("topic %q, want %q", d.Topic(), want)
		}
	}
}

// TestStallDetected: the proxy blackholes the link (connections stay open,
// no bytes flow); devices notice the missing acks within AckTimeout,
// reconnect once the link heals, and lose nothing.
func TestStallDetected(t *testing.T) {
	m := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	p := bridgetest.NewProxy(t, m.Addr())
	const devices, count = 2, 200
	f, err := NewFleet(FleetOptions{
		Devices: devices, MQTTAddr: p.Addr(), Duration: 30 * time.Second, Drain: 10 * time.Second, Logger: testLogger(t),
		Template: DeviceConfig{QoS: 1, Rate: 200, Burst: 5, Count: count, Window: 8, ConnectTimeout: 300 * time.Millisecond,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, AckTimeout: 300 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	r := runFleet(t, f, v, func(ctx context.Context) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
		p.Blackhole()
		defer p.Heal()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	})
	st := f.Stats()
	if st.Cuts < devices || st.ConnectErrors == 0 {
		t.Errorf("stall not detected (or reconnects into the blackhole did not fail): %v", st)
	}
	if r.Acked != devices*count || !r.OK() || r.Lost != 0 || r.OrderViolations != 0 {
		t.Errorf("report:\n%s", r)
	}
}
