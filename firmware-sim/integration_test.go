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
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/protocols/stomp"
)

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return nil
}

// fleetDuration bounds production in the tests' fleets: a hang guard only,
// since every test fleet ends when each device produced its Count and got
// its acks (Duration plus Drain bounds that).
var fleetDuration = testkit.Timeout(testkit.DefaultWait)

// runFleet runs f while during (if set) disturbs it, waits for the
// acknowledged readings to arrive at v and returns the report. Every wait
// is a hang guard: the run ends when the devices are done, the wait for
// arrivals when everything acknowledged arrived.
func runFleet(t *testing.T, f *Fleet, v *Verifier, during func(ctx context.Context)) Report {
	t.Helper()
	settle := testkit.Timeout(testkit.DefaultWait)
	guard := f.opts.Duration + f.opts.Drain + settle + testkit.Timeout(testkit.DefaultWait)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
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
		if ctx.Err() != nil {
			t.Fatalf("hang guard: fleet still running after %v (%s=%g): %v", guard, testkit.ScaleEnv, testkit.Scale(), err)
		}
		t.Fatalf("fleet: %v", err)
	}
	acked := f.Acked()
	wctx, wcancel := context.WithTimeout(ctx, settle)
	defer wcancel()
	v.WaitFor(wctx, acked) // what is still missing after the guard is reported as lost
	r := v.Report(acked)
	t.Logf("fleet: %v\n%s", f.Stats(), r)
	return r
}

func startVerifier(t *testing.T, broker, runID string) *Verifier {
	t.Helper()
	v := NewVerifier(VerifierOptions{Broker: broker, Filter: "sensors/#", RunID: runID, Logger: testLogger(t)})
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait)) // a hang guard
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
		Devices: devices, Mix: []Protocol{MQTT311, MQTT5}, MQTTAddr: m.Addr(), Duration: fleetDuration, Drain: 5 * time.Second,
		Logger: testLogger(t),
		// No retransmit is expected: the ack timeout is a hang guard, lest a
		// slow ack on a loaded machine count as a stall.
		Template: DeviceConfig{Topic: "sensors/{device}/temp", QoS: 1, Rate: 500, Burst: 10, Count: count, Window: 8, PayloadSize: 200,
			AckTimeout: testkit.Timeout(testkit.DefaultWait)},
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
		Devices: 1, MQTTAddr: m.Addr(), Duration: fleetDuration, Drain: time.Second,
		Template: DeviceConfig{QoS: 0, Rate: 200, Count: 20},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	runFleet(t, f, v, nil)
	testkit.Wait(t, "the 20 QoS 0 readings to arrive", func() bool { return v.Arrived() >= 20 })
	r := v.Report(f.Acked())
	if r.Acked != 0 || r.Unacked != 20 || !r.OK() {
		t.Errorf("report:\n%s", r)
	}
}

// cutWhileSending is a disturbance for runFleet: it cuts the proxy's
// connections n times, each after another 1/(n+1) of the fleet's readings
// was acknowledged, so that every cut falls into traffic however fast or
// slow the machine is. It counts its cuts in *cuts (read it after
// runFleet returned).
func cutWhileSending(p *bridgetest.Proxy, f *Fleet, n int, cuts *int) func(ctx context.Context) {
	total := 0
	for _, d := range f.Devices() {
		total += d.cfg.Count
	}
	return func(ctx context.Context) {
		tick := time.NewTicker(5 * time.Millisecond) // polling pace, not a bound
		defer tick.Stop()
		for *cuts < n {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if int(f.Stats().Acked) >= total*(*cuts+1)/(n+1) {
				p.Cut()
				*cuts++
			}
		}
	}
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
		Devices: devices, Mix: []Protocol{MQTT311, MQTT5}, MQTTAddr: p.Addr(), Duration: fleetDuration, Drain: 10 * time.Second,
		Logger: testLogger(t),
		Template: DeviceConfig{QoS: qos, Rate: 300, Burst: 5, Count: count, Window: 16,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, AckTimeout: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	cuts := 0
	r := runFleet(t, f, v, cutWhileSending(p, f, 8, &cuts))
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
		Devices: 2, MQTTAddr: m.Addr(), Duration: fleetDuration, Drain: 5 * time.Second,
		// Production takes at least 750ms (the rate): a slower machine only
		// makes more spells. No duplicate is expected, so the ack timeout is
		// a hang guard, lest a slow ack count as a stall and be re-sent.
		Template: DeviceConfig{QoS: 2, Rate: 200, Count: 150, Window: 4, OfflineEvery: 200 * time.Millisecond, OfflineFor: 100 * time.Millisecond,
			AckTimeout: testkit.Timeout(testkit.DefaultWait)},
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
	core, err := ingest.New(ingest.Options{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(core.Close)
	srv, err := stomp.NewServer(stomp.Options{Ingest: core, Auth: message.AllowAll{}})
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
		guard := testkit.Timeout(testkit.DefaultWait) // hang guards
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("stomp close: %v", err)
		}
		select {
		case err := <-served:
			if !errors.Is(err, stomp.ErrServerClosed) {
				t.Errorf("stomp serve: %v", err)
			}
		case <-time.After(guard):
			t.Errorf("hang guard: stomp Serve did not return %v after Close", guard)
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
		Devices: devices, Mix: []Protocol{STOMP}, STOMPAddr: p.Addr(), RunID: run, Duration: fleetDuration, Drain: 10 * time.Second,
		Logger: testLogger(t),
		Template: DeviceConfig{QoS: 1, Rate: 400, Burst: 5, Count: count, Window: 8, PayloadSize: 300,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, AckTimeout: 2 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	cuts := 0
	r := runFleet(t, f, v, cutWhileSending(p, f, 4, &cuts))
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
// no bytes flow); devices notice the missing acks after AckTimeout,
// reconnect once the link heals, and lose nothing. The blackhole starts
// once every device has traffic acknowledged and lasts until the stalls
// were detected and a reconnect into it failed: the outcome, not a time,
// ends it.
func TestStallDetected(t *testing.T) {
	m := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	p := bridgetest.NewProxy(t, m.Addr())
	const devices, count = 2, 200
	f, err := NewFleet(FleetOptions{
		Devices: devices, MQTTAddr: p.Addr(), Duration: fleetDuration, Drain: 10 * time.Second, Logger: testLogger(t),
		Template: DeviceConfig{QoS: 1, Rate: 200, Burst: 5, Count: count, Window: 8, ConnectTimeout: 300 * time.Millisecond,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, AckTimeout: 300 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := startVerifier(t, m.Addr(), f.RunID())
	r := runFleet(t, f, v, func(ctx context.Context) {
		// Polled at a pace that bounds nothing; the fleet's run is the
		// hang guard (ctx ends with it).
		until := func(cond func() bool) bool {
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for !cond() {
				select {
				case <-ctx.Done():
					return false
				case <-tick.C:
				}
			}
			return true
		}
		if !until(func() bool {
			for _, d := range f.Devices() {
				if d.Stats().Acked < count/10 {
					return false
				}
			}
			return true
		}) {
			return
		}
		p.Blackhole()
		defer p.Heal()
		guard := time.Now().Add(testkit.Timeout(testkit.DefaultWait))
		if !until(func() bool {
			st := f.Stats()
			return (st.Cuts >= devices && st.ConnectErrors > 0) || time.Now().After(guard)
		}) {
			return
		}
		if st := f.Stats(); st.Cuts < devices || st.ConnectErrors == 0 {
			t.Errorf("hang guard: blackholed for %v, stalls still not detected: %v", testkit.Timeout(testkit.DefaultWait), st)
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
