package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	gostomp "github.com/go-stomp/stomp/v3"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// e2eConfig is a gateway on free loopback ports bridging to upstream.
func e2eConfig(t *testing.T, upstream, extra string) *config.Config {
	t.Helper()
	y := fmt.Sprintf(`
gateway_id: gw1
log: {level: debug}
listeners:
  mqtt: {address: "127.0.0.1:0"}
  stomp: {address: "127.0.0.1:0"}
  http: {address: "127.0.0.1:0"}
allow_anonymous: true
spool:
  path: %s
  lower_lane_share: 0
routes:
  - {name: alarms, match: "alarms/#", priority: 0}
  - {name: sensors, match: "sensors/#", priority: 5, dedupe: "json:id"}
  - {name: local, match: "local/#", local_only: true}
bridge:
  upstream: [%s]
  format: envelope
  backoff: {base: 100ms, max: 500ms}
%s`, filepath.Join(t.TempDir(), "spool.db"), upstream, extra)
	cfg, err := config.Parse("e2e.yaml", []byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type running struct {
	g    *Gateway
	stop func() error
}

func startGateway(t *testing.T, cfg *config.Config) *running {
	t.Helper()
	g, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if g.Ready() {
		t.Fatal("ready before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	testkit.Wait(t, "the gateway to be ready", func() bool {
		select {
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		return g.Ready()
	})
	var stopped bool
	r := &running{g: g, stop: func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-testkit.After(testkit.DefaultWait):
			t.Fatalf("hang guard: gateway did not stop within %v", testkit.Timeout(testkit.DefaultWait))
			return nil
		}
	}}
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// testLogger logs into the test's output until the test ends (a late log
// line from a stopping goroutine must not panic the test binary).
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func pahoClient(t *testing.T, addr, id string) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetAutoReconnect(false)
	c := paho.NewClient(o)
	if err := waitToken(t, c.Connect()); err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// waitToken waits for a paho token and returns its error; the wait is a
// hang guard only.
func waitToken(t *testing.T, tok paho.Token) error {
	t.Helper()
	if !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) {
		t.Fatalf("hang guard: paho token not done after %v (%s=%g)", testkit.Timeout(testkit.DefaultWait), testkit.ScaleEnv, testkit.Scale())
	}
	return tok.Error()
}

func publish(t *testing.T, c paho.Client, topic string, payload string) {
	t.Helper()
	if err := waitToken(t, c.Publish(topic, 1, false, payload)); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// stompDial connects a go-stomp client whose own send and receipt waits
// are hang guards (its defaults are 10s and 30s, not scaled).
func stompDial(t *testing.T, addr string) *gostomp.Conn {
	t.Helper()
	d := testkit.Timeout(testkit.DefaultWait)
	c, err := gostomp.Dial("tcp", addr, gostomp.ConnOpt.MsgSendTimeout(d), gostomp.ConnOpt.RcvReceiptTimeout(d),
		gostomp.ConnOpt.DisconnectReceiptTimeout(d), gostomp.ConnOpt.UnsubscribeReceiptTimeout(d))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitUpstream waits (a hang guard only) until cond holds for what the
// upstream subscriber received.
func waitUpstream(t *testing.T, sub *bridgetest.Subscriber, what string, cond func([]bridgetest.Record) bool) {
	t.Helper()
	if d := testkit.Timeout(testkit.DefaultWait); !sub.WaitFor(d, cond) {
		t.Fatalf("hang guard: upstream got %d messages, still waiting for %s after %v (%s=%g): %v",
			sub.Len(), what, d, testkit.ScaleEnv, testkit.Scale(), topics(sub.Records()))
	}
}

func reading(dev string, seq int) string {
	return fmt.Sprintf(`{"id":"%s-%d","seq":%d}`, dev, seq, seq)
}

func seqOf(t *testing.T, payload []byte) int {
	t.Helper()
	var v struct{ Seq int }
	if err := json.Unmarshal(payload, &v); err != nil {
		t.Fatalf("payload %q: %v", payload, err)
	}
	return v.Seq
}

// TestEndToEnd runs the whole gateway against a real mosquitto: MQTT 3.1.1,
// MQTT 5 and STOMP publishers in; everything acknowledged arrives upstream
// once, with the routed topic, in order per topic, in the envelope format.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	up := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	sub := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: up.URL(), Filter: "sites/#", Envelope: true})
	r := startGateway(t, e2eConfig(t, up.URL(), ""))
	g := r.g

	// MQTT 3.1.1 (paho): 20 readings, one duplicate re-send.
	c := pahoClient(t, g.MQTTAddr("mqtt"), "dev-a")
	for i := range 20 {
		publish(t, c, "sensors/a/temp", reading("a", i))
	}
	publish(t, c, "sensors/a/temp", reading("a", 7)) // same json id: dropped as a duplicate
	publish(t, c, "local/x", "never upstream")

	// MQTT 5 (mosquitto_pub -V 5), with a user property.
	host, port, _ := strings.Cut(g.MQTTAddr("mqtt"), ":")
	out, err := exec.Command("mosquitto_pub", "-V", "5", "-h", host, "-p", port, "-q", "1", "-t", "alarms/fire",
		"-m", `{"id":"f1","seq":0}`, "-D", "publish", "user-property", "site", "hall-2").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub -V 5: %v\n%s", err, out)
	}

	// STOMP (go-stomp client), SEND with receipts.
	sc := stompDial(t, g.STOMPAddr(0))
	for i := range 10 {
		if err := sc.Send("/topic/sensors.b.hum", "application/json", []byte(reading("b", i)), gostomp.SendOpt.Receipt); err != nil {
			t.Fatalf("stomp send %d: %v", i, err)
		}
	}
	_ = sc.Disconnect()

	want := 20 + 1 + 10
	waitUpstream(t, sub, fmt.Sprintf("%d messages", want), func(rs []bridgetest.Record) bool { return len(rs) >= want })
	// Anything extra (a duplicate, local/x) would most likely show up now.
	// A slower machine can only let it arrive later, and the test pass
	// without seeing it: never fail a correct gateway.
	time.Sleep(300 * time.Millisecond)
	recs := sub.Records()
	if len(recs) != want {
		t.Fatalf("upstream got %d messages, want %d: %v", len(recs), want, topics(recs))
	}
	last := map[string]int{}
	ids := map[string]bool{}
	for _, rec := range recs {
		switch rec.Topic {
		case "sites/gw1/sensors/a/temp", "sites/gw1/sensors/b/hum", "sites/gw1/alarms/fire":
		default:
			t.Fatalf("unexpected upstream topic %q", rec.Topic)
		}
		if rec.ID == "" || ids[rec.ID] {
			t.Fatalf("envelope id %q missing or repeated", rec.ID)
		}
		ids[rec.ID] = true
		seq := seqOf(t, rec.Payload)
		if prev, ok := last[rec.Topic]; ok && seq != prev+1 {
			t.Fatalf("%s: seq %d after %d", rec.Topic, seq, prev)
		}
		last[rec.Topic] = seq
	}

	// Metrics carry the queue vitals with plausible values.
	body := httpGet(t, "http://"+g.HTTPAddr()+"/metrics")
	for _, name := range []string{
		"ferry_spool_depth_messages", "ferry_spool_depth_bytes", "ferry_spool_oldest_age_seconds",
		"ferry_spool_dlq_messages", "ferry_spool_duplicates_total 1", "ferry_bridge_link_state",
		`ferry_ingress_accepted_total{lane="5",protocol="mqtt"} 21` /* duplicates included */, `ferry_ingress_accepted_total{lane="5",protocol="stomp"} 10`,
		`ferry_ingress_accepted_total{lane="0",protocol="mqtt"} 1`, "ferry_message_age_seconds_count 31",
		"ferry_spool_syncs_total", "ferry_bridge_in_flight_messages",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	if got := httpGet(t, "http://"+g.HTTPAddr()+"/readyz"); !strings.HasPrefix(got, "ready") {
		t.Errorf("/readyz = %q", got)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if g.Ready() {
		t.Error("still ready after stop")
	}
}

func topics(rs []bridgetest.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Topic)
	}
	return out
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestShutdownLosesNothingAndLanesDrainFirst: with the upstream down, what
// devices had acknowledged survives a graceful stop; after a restart with
// the upstream back, the alarm lane drains before the telemetry backlog.
func TestShutdownLosesNothingAndLanesDrainFirst(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	up := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	up.Stop()
	cfg := e2eConfig(t, up.URL(), "")
	r := startGateway(t, cfg)
	c := pahoClient(t, r.g.MQTTAddr("mqtt"), "dev-c")
	for i := range 40 {
		publish(t, c, "sensors/c/temp", reading("c", i))
	}
	for i := range 5 {
		publish(t, c, "alarms/door", fmt.Sprintf(`{"id":"d%d","seq":%d}`, i, i))
	}
	c.Disconnect(100)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	s, err := spool.Open(cfg.Spool.Path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Messages != 45 || st.Lanes[0].Messages != 5 || st.Lanes[5].Messages != 40 {
		t.Fatalf("after graceful stop: %d messages (lane0 %d, lane5 %d), want 45 (5, 40)", st.Messages, st.Lanes[0].Messages, st.Lanes[5].Messages)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	up.Start()
	sub := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: up.URL(), Filter: "sites/#", Envelope: true})
	startGateway(t, cfg)
	waitUpstream(t, sub, "the 45 messages spooled before the restart", func(rs []bridgetest.Record) bool { return len(rs) >= 45 })
	recs := sub.Records()
	for i := range 5 {
		if recs[i].Topic != "sites/gw1/alarms/door" {
			t.Fatalf("arrival %d is %s: the alarm lane did not drain first", i, recs[i].Topic)
		}
	}
}

// TestSpoolAdminThroughRunningGateway: `ferry spool` reaches a spool held by
// a running gateway through its HTTP API, and refuses clearly without it.
func TestSpoolAdminThroughRunningGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	up := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	up.Stop()
	cfg := e2eConfig(t, up.URL(), "")
	r := startGateway(t, cfg)
	for i := range 3 {
		_, err := r.g.Spool().Put(context.Background(), spool.Entry{Data: message.Encode(nil, &message.Message{Topic: "t", Payload: []byte{byte(i)}})})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The file is locked; OpenSpoolAdmin must find the HTTP API (the config
	// names port 0, so point it at the bound address).
	cfg2 := *cfg
	cfg2.Listeners.HTTP.Address = r.g.HTTPAddr()
	adm, err := OpenSpoolAdmin(&cfg2, AdminOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(adm.Where(), "running gateway") {
		t.Fatalf("admin works on %s, want the running gateway", adm.Where())
	}
	st, err := adm.Stats(context.Background())
	if err != nil || st.Messages != 3 {
		t.Fatalf("stats through HTTP: %d messages, %v", st.Messages, err)
	}
	if _, _, err := adm.Compact(context.Background()); err != nil {
		t.Fatalf("compact through HTTP: %v", err)
	}
	cfg3 := *cfg
	cfg3.Listeners.HTTP.Address = ""
	if _, err := OpenSpoolAdmin(&cfg3, AdminOptions{}); err == nil || !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), cfg.Spool.Path) {
		t.Fatalf("without HTTP: %v, want a locked error naming %s", err, cfg.Spool.Path)
	}
}

// TestCrossProtocol: an MQTT 5 publish reaches a STOMP /topic subscriber
// and a STOMP SEND reaches an MQTT 5 subscriber, user properties and
// headers carried over, through the gateway's wiring.
func TestCrossProtocol(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	up := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	r := startGateway(t, e2eConfig(t, up.URL(), ""))
	host, port, _ := strings.Cut(r.g.MQTTAddr("mqtt"), ":")
	guard := testkit.Timeout(testkit.DefaultWait)

	sc := stompDial(t, r.g.STOMPAddr(0))
	defer func() { _ = sc.Disconnect() }()
	ssub, err := sc.Subscribe("/topic/sensors.#", gostomp.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	// The subscription is in place once it gets a message: SEND probes on
	// the same connection (local subscribers of either protocol get a
	// SEND) until one comes back. The pace only sets how many probes a
	// slow machine needs.
	const probe = "/topic/sensors.probe"
	next := func() *gostomp.Message { // the next message that is not a probe
		t.Helper()
		for {
			select {
			case m := <-ssub.C:
				if m.Err != nil {
					t.Fatal(m.Err)
				}
				if m.Destination != probe {
					return m
				}
			case <-time.After(guard):
				t.Fatalf("hang guard: nothing reached the STOMP subscriber after %v (%s=%g)", guard, testkit.ScaleEnv, testkit.Scale())
			}
		}
	}
	end := time.Now().Add(guard)
	for subscribed := false; !subscribed; {
		if time.Now().After(end) {
			t.Fatalf("hang guard: STOMP subscription not in place after %v (%s=%g)", guard, testkit.ScaleEnv, testkit.Scale())
		}
		if err := sc.Send(probe, "text/plain", []byte("probe"), gostomp.SendOpt.Receipt); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-ssub.C:
			if m.Err != nil {
				t.Fatal(m.Err)
			}
			subscribed = true
		case <-time.After(100 * time.Millisecond):
		}
	}

	// An MQTT 5 publish, with a user property, reaches the STOMP subscriber.
	if out, err := exec.Command("mosquitto_pub", "-V", "5", "-h", host, "-p", port, "-q", "1", "-t", "sensors/x/t",
		"-m", "from-mqtt", "-D", "publish", "user-property", "unit", "celsius").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	if m := next(); string(m.Body) != "from-mqtt" || m.Destination != "/topic/sensors.x.t" || m.Header.Get("unit") != "celsius" {
		t.Fatalf("STOMP subscriber got %q on %s, unit=%q", m.Body, m.Destination, m.Header.Get("unit"))
	}
	// Nobody reads it from now on: leave no full subscription queue behind
	// the repeated SENDs below.
	if err := ssub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}

	// A STOMP SEND, with a header, reaches an MQTT 5 subscriber
	// (mosquitto_sub: it prints topic, user properties and payload of the
	// one message it waits for, -C 1).
	msub := exec.Command("mosquitto_sub", "-V", "5", "-h", host, "-p", port, "-t", "sensors/y/#", "-C", "1",
		"-W", strconv.Itoa(int(guard.Seconds())+1), "-F", "%t|%P|%p")
	mout := &syncBuf{}
	msub.Stdout, msub.Stderr = mout, mout
	if err := msub.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- msub.Wait() }()
	// When its SUBACK came cannot be seen (mosquitto_sub buffers its output
	// until it exits), so the SEND is repeated until mosquitto_sub got one
	// and exited; every copy is the same message.
	end = time.Now().Add(guard)
	for done := false; !done; {
		if time.Now().After(end) {
			_ = msub.Process.Kill()
			t.Fatalf("hang guard: the STOMP SEND did not reach the MQTT subscriber after %v (%s=%g)", guard, testkit.ScaleEnv, testkit.Scale())
		}
		if err := sc.Send("/topic/sensors.y.t", "text/plain", []byte("from-stomp"), gostomp.SendOpt.Receipt, gostomp.SendOpt.Header("unit", "kelvin")); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", err, mout.String())
			}
			done = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	got := strings.TrimSpace(mout.String())
	if !strings.HasPrefix(got, "sensors/y/t|") || !strings.Contains(got, "unit:kelvin") || !strings.HasSuffix(got, "|from-stomp") {
		t.Fatalf("MQTT subscriber got %q", got)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestReloadRoutesAndUsers: Reload (SIGHUP) swaps routes and users without
// dropping a connected client.
func TestReloadRoutesAndUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	up := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	up.Stop() // keep messages in the spool, where their lane can be seen
	dir := t.TempDir()
	hash, err := HashPassword("pw", 4)
	if err != nil {
		t.Fatal(err)
	}
	write := func(prio int, acl string) string {
		p := filepath.Join(dir, "ferry.yaml")
		y := fmt.Sprintf(`
gateway_id: gw1
listeners:
  mqtt: {address: "127.0.0.1:0"}
  stomp: {address: ""}
  http: {address: ""}
users:
  - {name: dev, password_hash: %q, publish: [%q], subscribe: ["#"]}
spool: {path: %s}
routes:
  - {match: "m/#", priority: %d}
bridge: {upstream: [%s]}
`, hash, acl, filepath.Join(dir, "spool.db"), prio, up.URL())
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	path := write(7, "m/#")
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r := startGateway(t, cfg)
	o := paho.NewClientOptions().AddBroker("tcp://" + r.g.MQTTAddr("mqtt")).SetClientID("dev-1").SetUsername("dev").SetPassword("pw").SetAutoReconnect(false)
	c := paho.NewClient(o)
	if err := waitToken(t, c.Connect()); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	publish(t, c, "m/1", "a")
	if st := r.g.Spool().Stats(); st.Lanes[7].Messages != 1 {
		t.Fatalf("before reload: lane 7 has %d", st.Lanes[7].Messages)
	}
	if err := r.g.Reload(write(2, "m/#")); err != nil {
		t.Fatal(err)
	}
	publish(t, c, "m/2", "b") // same connection, new route
	if st := r.g.Spool().Stats(); st.Lanes[2].Messages != 1 {
		t.Fatalf("after reload: lane 2 has %d, want 1", st.Lanes[2].Messages)
	}
	if !c.IsConnected() {
		t.Fatal("reload dropped the client")
	}
	// Narrower ACL: m/# no longer allowed for publish.
	if err := r.g.Reload(write(2, "other/#")); err != nil {
		t.Fatal(err)
	}
	// The gateway refuses it (3.1.1: by disconnecting, so the token ends
	// with an error); once the token is done the refusal was decided.
	err = waitToken(t, c.Publish("m/3", 1, false, "c"))
	t.Logf("denied publish: %v", err)
	if st := r.g.Spool().Stats(); st.Messages != 2 {
		t.Fatalf("denied publish was stored: %d messages", st.Messages)
	}
	// A broken file keeps the running configuration.
	if err := os.WriteFile(path, []byte("gateway_id: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.g.Reload(path); err == nil {
		t.Fatal("reload of a broken file succeeded")
	}
}

// TestBusyPortSaysWhy: a listener address already in use fails Run with an
// error that names the listener and the usual culprit.
func TestBusyPortSaysWhy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := e2eConfig(t, "tcp://127.0.0.1:1", "")
	cfg.Listeners.MQTT.Address = ln.Addr().String()
	g, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A hang guard: Run must fail at once, not when this ends.
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait))
	defer cancel()
	err = g.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) || !strings.Contains(err.Error(), "mosquitto service") {
		t.Fatalf("Run on a busy port: %v", err)
	}
}
