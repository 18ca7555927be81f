package gateway

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	firmwaresim "github.com/ferrymq/ferry/firmware-sim"
	"github.com/ferrymq/ferry/internal/testkit"
)

// TestStuckLocalSubscribersHoldNoOne: pipelining devices (MQTT 3.1.1, MQTT
// 5, STOMP; 32 readings in flight each) publish through the gateway to a
// real mosquitto while one local MQTT subscriber (QoS 1, keepalive 0) and
// one local STOMP subscriber of their topics stop reading. Every
// acknowledged reading reaches upstream, once in order per device; both
// stuck subscribers are disconnected and counted. (Local delivery used to
// run in the publisher's path, and mochi writes to a subscriber holding
// its lock with no deadline: one stuck subscriber froze every publisher of
// its topics, MQTT and STOMP alike.)
func TestStuckLocalSubscribersHoldNoOne(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	r := startGateway(t, e2eConfig(t, mq.URL(), ""))
	g := r.g

	// Stuck MQTT 3.1.1 subscriber: CONNECT (keepalive 0), SUBSCRIBE QoS 1,
	// read the two answers, then never read again.
	mc, err := net.Dial("tcp", g.MQTTAddr("mqtt"))
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	connect := []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0, 0, 5, 's', 't', 'u', 'c', 'k'}
	subscribe := []byte{0x82, 14, 0, 1, 0, 9, 's', 'e', 'n', 's', 'o', 'r', 's', '/', '#', 1}
	if _, err := mc.Write(append(connect, subscribe...)); err != nil {
		t.Fatal(err)
	}
	ans := make([]byte, 4+5)
	_ = mc.SetReadDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
	if _, err := readFull(mc, ans); err != nil || ans[0] != 0x20 || ans[4] != 0x90 || ans[8] != 1 {
		t.Fatalf("CONNACK+SUBACK %x: %v", ans, err)
	}
	// Stuck STOMP subscriber.
	sc, err := net.Dial("tcp", g.STOMPAddr(0))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if _, err := sc.Write([]byte("CONNECT\naccept-version:1.2\nhost:x\n\n\x00SUBSCRIBE\nid:0\ndestination:/topic/sensors.#\n\n\x00")); err != nil {
		t.Fatal(err)
	}

	const devices, count = 6, 500
	f, err := firmwaresim.NewFleet(firmwaresim.FleetOptions{
		Devices: devices, Mix: []firmwaresim.Protocol{firmwaresim.MQTT311, firmwaresim.MQTT5, firmwaresim.STOMP},
		MQTTAddr: g.MQTTAddr("mqtt"), STOMPAddr: g.STOMPAddr(0), Duration: 5 * time.Minute, Drain: 30 * time.Second,
		Template: firmwaresim.DeviceConfig{Topic: "sensors/{device}/temp", QoS: 1, Count: count, Window: 32,
			// Larger than the socket buffers of the stuck subscribers can
			// hold, so that they overflow.
			PayloadSize: 16 << 10, AckTimeout: testkit.Timeout(testkit.DefaultWait)},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := firmwaresim.NewVerifier(firmwaresim.VerifierOptions{Broker: mq.Addr(), Filter: "sites/gw1/sensors/#", RunID: f.RunID()})
	vctx, vcancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait))
	defer vcancel()
	if err := v.Start(vctx); err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(10*time.Minute)) // a hang guard
	defer cancel()
	if err := f.Run(ctx); err != nil {
		t.Fatalf("fleet: %v", err)
	}
	acked := f.Acked()
	wctx, wcancel := context.WithTimeout(ctx, testkit.Timeout(testkit.DefaultWait))
	defer wcancel()
	v.WaitFor(wctx, acked)
	rep := v.Report(acked)
	t.Logf("fleet: %v\n%s", f.Stats(), rep)
	if rep.Acked != devices*count || !rep.OK() || rep.Lost != 0 || rep.OrderViolations != 0 {
		t.Fatalf("report:\n%s", rep)
	}
	testkit.Wait(t, "both stuck subscribers disconnected and counted", func() bool {
		return g.mq.Stats().SlowConsumers >= 1 && g.st.Stats().SlowConsumers >= 1
	})
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
