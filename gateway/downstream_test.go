package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	gostomp "github.com/go-stomp/stomp/v3"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
)

// cmdInbox records what a device receives, in order.
type cmdInbox struct {
	mu   sync.Mutex
	msgs []string // topic=payload
	dups int
}

func (b *cmdInbox) handler(_ paho.Client, m paho.Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m.Topic()+"="+string(m.Payload()))
	if m.Duplicate() {
		b.dups++
	}
	b.mu.Unlock()
}

func (b *cmdInbox) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.msgs...)
}

// waitCommands waits (a hang guard) until the inbox holds want, exactly
// and in order; anything else that arrives first (a duplicate, a
// reordering, a wrong topic) fails at once.
func (b *cmdInbox) waitCommands(t *testing.T, want []string) {
	t.Helper()
	testkit.Wait(t, fmt.Sprintf("%d commands at the device", len(want)), func() bool {
		got := b.got()
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Fatalf("device got %q, want %q", got, want)
			}
		}
		if len(got) > len(want) {
			t.Fatalf("device got %q, want %q", got, want)
		}
		return len(got) == len(want)
	})
}

// device connects a paho MQTT 3.1.1 client to the gateway and subscribes
// filter at QoS 1; clean false keeps its session, and what the session had
// queued arrives at in before Subscribe returns too.
func device(t *testing.T, addr, id, user, password string, clean bool, filter string, in *cmdInbox) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(user).SetPassword(password).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).
		SetConnectTimeout(testkit.Timeout(testkit.DefaultWait)).SetDefaultPublishHandler(in.handler).SetOrderMatters(true)
	c := paho.NewClient(o)
	if err := waitToken(t, c.Connect()); err != nil {
		t.Fatalf("device %s: connect: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if filter != "" {
		tok := c.Subscribe(filter, 1, nil)
		if err := waitToken(t, tok); err != nil {
			t.Fatalf("device %s: subscribe %s: %v", id, filter, err)
		}
		if q := tok.(*paho.SubscribeToken).Result()[filter]; q != 1 {
			t.Fatalf("device %s: subscribe %s: granted %#x", id, filter, q)
		}
	}
	return c
}

// cloud is a client of the upstream broker that sends commands.
func cloud(t *testing.T, url string, tc *tls.Config) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID("cloud-" + strconv.Itoa(bridgetest.FreePort(t))).SetAutoReconnect(false).
		SetConnectTimeout(testkit.Timeout(testkit.DefaultWait))
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	c := paho.NewClient(o)
	if err := waitToken(t, c.Connect()); err != nil {
		t.Fatalf("cloud: connect %s: %v", url, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func waitBridgeUp(t *testing.T, g *Gateway) {
	t.Helper()
	testkit.Wait(t, "the bridge to be up (downstream subscribed)", func() bool { return g.br.State() == bridge.StateUp })
}

// TestPiConfigDeliversCommands (issue 12 §1): configs/pi.yaml as shipped,
// only its addresses, files and spool moved into the test: TLS with a
// client certificate to a real mosquitto, device users and ACLs. A command
// the cloud sends on cmd/pi-lab/pump1/valve reaches device pump1 (user
// sensors, which may subscribe only to cmd/%c/#) as cmd/pump1/valve: one
// sent before the device subscribed waits in the downstream lane, one sent
// after arrives at once. The upstream name is not even subscribable.
func TestPiConfigDeliversCommands(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{RequireCertificate: true})
	src, err := os.ReadFile("../configs/pi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	y := string(src)
	for _, r := range [][2]string{
		{"0.0.0.0:1883", "127.0.0.1:0"}, {"0.0.0.0:8883", "127.0.0.1:0"}, {"0.0.0.0:61613", "127.0.0.1:0"}, {"0.0.0.0:8080", "127.0.0.1:0"},
		{"/etc/ferry/tls/server.crt", mq.Certs.ServerCert}, {"/etc/ferry/tls/server.key", mq.Certs.ServerKey},
		{"/etc/ferry/tls/upstream-ca.pem", mq.Certs.CAFile}, {"/etc/ferry/tls/device.crt", mq.Certs.ClientCert},
		{"/etc/ferry/tls/device.key", mq.Certs.ClientKey},
		{"/var/lib/ferry/spool.db", filepath.Join(dir, "spool.db")},
		{"}:8883", "}:" + strconv.Itoa(mq.Port)},
	} {
		if !strings.Contains(y, r[0]) {
			t.Fatalf("configs/pi.yaml no longer has %q: update this test", r[0])
		}
		y = strings.ReplaceAll(y, r[0], r[1])
	}
	env := map[string]string{"FERRY_GATEWAY_ID": "pi-lab", "FERRY_UPSTREAM_HOST": "localhost"}
	cfg, err := config.Parse("pi.yaml", []byte(y), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckFiles(); err != nil {
		t.Fatal(err)
	}
	r := startGateway(t, cfg)
	waitBridgeUp(t, r.g)

	up := cloud(t, "tls://localhost:"+strconv.Itoa(mq.Port), mq.Certs.ClientTLS())
	publish(t, up, "cmd/pi-lab/pump1/valve", "open")
	testkit.Wait(t, "the first command in the downstream lane, waiting for a subscriber", func() bool {
		return r.g.DownstreamStats().Waiting == 1
	})

	// The upstream name is refused by the pi ACL (cmd/%c/#).
	probe := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + r.g.MQTTAddr("mqtt")).SetClientID("pump1").
		SetUsername("sensors").SetPassword("sensors-secret").SetAutoReconnect(false).SetProtocolVersion(4))
	if err := waitToken(t, probe.Connect()); err != nil {
		t.Fatal(err)
	}
	tok := probe.Subscribe("cmd/pi-lab/#", 1, nil)
	if err := waitToken(t, tok); err == nil {
		if q := tok.(*paho.SubscribeToken).Result()["cmd/pi-lab/#"]; q != 0x80 {
			t.Fatalf("subscribe cmd/pi-lab/# as pump1: granted %#x, want refused", q)
		}
	}
	probe.Disconnect(0)

	var in cmdInbox
	device(t, r.g.MQTTAddr("mqtt"), "pump1", "sensors", "sensors-secret", true, "cmd/pump1/#", &in)
	in.waitCommands(t, []string{"cmd/pump1/valve=open"})
	publish(t, up, "cmd/pi-lab/pump1/valve", "close")
	publish(t, up, "cmd/pi-lab/pump1/speed", "3")
	in.waitCommands(t, []string{"cmd/pump1/valve=open", "cmd/pump1/valve=close", "cmd/pump1/speed=3"})
	testkit.Wait(t, "the lane empty", func() bool {
		s := r.g.DownstreamStats()
		return s.Queued == 0 && s.Delivered == 3
	})
}

// downstreamYAML is a gateway with a downstream route cmd/gw1/# → cmd/#
// and its spool in dir (so that a second gateway can take over the files).
func downstreamYAML(upstream, dir, extra string) string {
	return fmt.Sprintf(`
gateway_id: gw1
listeners:
  mqtt: {address: "127.0.0.1:0"}
  stomp: {address: "127.0.0.1:0"}
allow_anonymous: true
spool: {path: %s}
bridge:
  upstream: [%s]
  backoff: {base: 100ms, max: 500ms}
  downstream:
    - {remote: "cmd/{gateway_id}/#", local: "cmd/#"}
%s`, filepath.Join(dir, "spool.db"), upstream, extra)
}

func downstreamConfig(t *testing.T, upstream, dir, extra string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("ferry.yaml", []byte(downstreamYAML(upstream, dir, extra)), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func commands(topic string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s=c%d", topic, i))
	}
	return out
}

// TestDownstreamWhileGatewayDown: commands the cloud sends while the
// gateway is stopped are kept by the upstream broker (persistent session)
// and arrive, in order, once it is back.
func TestDownstreamWhileGatewayDown(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	dir := t.TempDir()
	r := startGateway(t, downstreamConfig(t, mq.URL(), dir, ""))
	waitBridgeUp(t, r.g)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	up := cloud(t, mq.URL(), nil)
	for i := range 20 {
		publish(t, up, "cmd/gw1/dev1/set", fmt.Sprintf("c%d", i))
	}
	r2 := startGateway(t, downstreamConfig(t, mq.URL(), dir, ""))
	var in cmdInbox
	device(t, r2.g.MQTTAddr("mqtt"), "dev1", "", "", true, "cmd/dev1/#", &in)
	in.waitCommands(t, commands("cmd/dev1/set", 0, 20))
}

// TestDownstreamDeviceAway: commands for a device whose persistent session
// (clean session off, QoS 1) is away wait in the downstream lane and are
// delivered, in order, when it reconnects, with the gateway running
// throughout; a STOMP subscriber of another device's topic gets its
// commands meanwhile, in order.
func TestDownstreamDeviceAway(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	r := startGateway(t, downstreamConfig(t, mq.URL(), t.TempDir(), ""))
	waitBridgeUp(t, r.g)
	var first cmdInbox
	dev := device(t, r.g.MQTTAddr("mqtt"), "dev1", "", "", false, "cmd/dev1/#", &first)
	st := stompDial(t, r.g.STOMPAddr(0))
	defer closeStomp(st, nil)
	sub, err := st.Subscribe("/topic/cmd.dev2.#", gostomp.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	dev.Disconnect(0)
	up := cloud(t, mq.URL(), nil)
	for i := range 10 {
		publish(t, up, "cmd/gw1/dev1/set", fmt.Sprintf("c%d", i))
		publish(t, up, "cmd/gw1/dev2/set", fmt.Sprintf("c%d", i))
	}
	for i := range 10 {
		select {
		case m := <-sub.C:
			if m.Err != nil || m.Destination != "/topic/cmd.dev2.set" || string(m.Body) != fmt.Sprintf("c%d", i) {
				t.Fatalf("stomp message %d: %v %s %q", i, m.Err, m.Destination, m.Body)
			}
		case <-testkit.After(testkit.DefaultWait):
			t.Fatalf("hang guard: stomp subscriber got %d of 10", i)
		}
	}
	testkit.Wait(t, "dev1's 10 commands waiting in the lane", func() bool { return r.g.DownstreamStats().Waiting == 10 })
	if got := first.got(); len(got) != 0 {
		t.Fatalf("disconnected device got %q", got)
	}
	var in cmdInbox
	device(t, r.g.MQTTAddr("mqtt"), "dev1", "", "", false, "", &in)
	in.waitCommands(t, commands("cmd/dev1/set", 0, 10))
	testkit.Wait(t, "the lane empty", func() bool { s := r.g.DownstreamStats(); return s.Queued == 0 && s.Delivered == 20 })
}

// downstreamChildEnv names the config file of a gateway run as a child
// process (see runDownstreamChild).
const downstreamChildEnv = "FERRY_TEST_DOWNSTREAM_CHILD"

// runDownstreamChild runs a gateway on the config file path until it is
// killed, and reports on stdout: "ready", "up" once the bridge is, then
// "queued N" whenever the downstream lane's depth changes.
func runDownstreamChild(path string) int {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	g, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	go func() {
		if err := g.Run(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var ready, up bool
	queued := int64(-1)
	for range t.C {
		if !ready && g.Ready() {
			ready = true
			fmt.Println("ready")
		}
		if !up && g.br.State() == bridge.StateUp {
			up = true
			fmt.Println("up")
		}
		if ready {
			if q := g.DownstreamStats().Queued; q != queued {
				queued = q
				fmt.Println("queued", q)
			}
		}
	}
	return 0
}

// TestDownstreamCommittedSurvivesKill: commands committed to the
// downstream lane (and so acknowledged upstream) while no device is
// subscribed survive a SIGKILL of the gateway and are delivered after the
// restart, in order and once each: a PUBACK the kill kept from the broker
// makes it send the command again (DUP), which the lane recognises.
func TestDownstreamCommittedSurvivesKill(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	dir := t.TempDir()
	path := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(path, []byte(downstreamYAML(mq.URL(), dir, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	child := testkit.StartChild(t, downstreamChildEnv+"="+path)
	child.WaitLine("up")
	up := cloud(t, mq.URL(), nil)
	for i := range 5 {
		publish(t, up, "cmd/gw1/dev1/set", fmt.Sprintf("c%d", i))
	}
	child.WaitLine("queued 5")
	child.Kill()

	r := startGateway(t, downstreamConfig(t, mq.URL(), dir, ""))
	waitBridgeUp(t, r.g)
	var in cmdInbox
	device(t, r.g.MQTTAddr("mqtt"), "dev1", "", "", true, "cmd/dev1/#", &in)
	in.waitCommands(t, commands("cmd/dev1/set", 0, 5))
	// A redelivery would have arrived before this one (one topic, one
	// order); waitCommands fails on anything extra.
	publish(t, up, "cmd/gw1/dev1/set", "c5")
	in.waitCommands(t, commands("cmd/dev1/set", 0, 6))
}

// TestDownstreamNoSubscriberDeadLettered: a command nobody subscribes to
// within its route's TTL goes to the downstream lane's DLQ with reason
// no_subscriber; another device's command is delivered all the same.
func TestDownstreamNoSubscriberDeadLettered(t *testing.T) {
	mq := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	dir := t.TempDir()
	y := strings.Replace(downstreamYAML(mq.URL(), dir, ""), `{remote: "cmd/{gateway_id}/#", local: "cmd/#"}`,
		`{remote: "cmd/{gateway_id}/#", local: "cmd/#", ttl: 300ms}`, 1)
	cfg, err := config.Parse("ferry.yaml", []byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	r := startGateway(t, cfg)
	waitBridgeUp(t, r.g)
	var in cmdInbox
	device(t, r.g.MQTTAddr("mqtt"), "dev2", "", "", true, "cmd/dev2/#", &in)
	up := cloud(t, mq.URL(), nil)
	publish(t, up, "cmd/gw1/nobody/set", "lost")
	publish(t, up, "cmd/gw1/dev2/set", "c0")
	in.waitCommands(t, []string{"cmd/dev2/set=c0"})
	testkit.Wait(t, "the unsubscribed command dead-lettered", func() bool {
		s := r.g.DownstreamStats()
		return s.DLQ == 1 && s.Queued == 0 && s.Waiting == 0
	})
	dl, err := r.g.down.sp.DLQ(0, 10)
	if err != nil || len(dl) != 1 || dl[0].Reason != reasonNoSubscriber {
		t.Fatalf("dlq %+v: %v", dl, err)
	}
	if m, err := message.Decode(dl[0].Data); err != nil || m.Topic != "cmd/nobody/set" || string(m.Payload) != "lost" {
		t.Fatalf("dead letter %v: %v", m, err)
	}
}
