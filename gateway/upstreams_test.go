package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gostomp "github.com/go-stomp/stomp/v3"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
)

// fanRoutes: fan/# goes to both upstreams, onlyb/# to b only, the rest to
// main.
const fanRoutes = `
  - {name: fan, match: "fan/#", upstreams: [main, b]}
  - {name: onlyb, match: "onlyb/#", upstreams: [b]}`

// fanConfig is a gateway with two upstreams: main (mosquitto A) and b
// (mosquitto B behind bURL, a fault proxy), routed by fanRoutes.
func fanConfig(t *testing.T, dir, aURL, bURL, bSpool string) *config.Config {
	t.Helper()
	return fanConfigRoutes(t, dir, fanRoutes, aURL, bURL, bSpool)
}

// fanConfigRoutes is fanConfig with other routes (YAML list items).
func fanConfigRoutes(t *testing.T, dir, routes, aURL, bURL, bSpool string) *config.Config {
	t.Helper()
	y := fmt.Sprintf(`
gateway_id: gw1
listeners:
  mqtt: {address: "127.0.0.1:0"}
  stomp: {address: "127.0.0.1:0"}
  http: {address: "127.0.0.1:0"}
allow_anonymous: true
spool: {path: %s}
routes:%s
bridge:
  upstream: [%s]
  format: envelope
  backoff: {base: 100ms, max: 500ms}
upstreams:
  - name: b
    bridge:
      upstream: [%s]
      format: envelope
      backoff: {base: 100ms, max: 500ms}
      connect_timeout: 2s
    spool: {%s}
`, filepath.Join(dir, "spool.db"), routes, aURL, bURL, bSpool)
	cfg, err := config.Parse("fan.yaml", []byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// twoUpstreams starts mosquitto A and B with a subscriber on each, and a
// fault proxy in front of B.
func twoUpstreams(t *testing.T) (aURL string, subA, subB *bridgetest.Subscriber, px *bridgetest.Proxy) {
	t.Helper()
	a := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	b := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	subA = bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: a.URL(), Filter: "sites/#", Envelope: true})
	subB = bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: b.URL(), Filter: "sites/#", Envelope: true})
	return a.URL(), subA, subB, bridgetest.NewProxy(t, b.Addr())
}

func checkUpstream(t *testing.T, what string, recs []bridgetest.Record, want map[string]int) {
	t.Helper()
	rep := bridgetest.Check(recs, want, func(r bridgetest.Record) (string, int, bool) {
		return r.Topic, seqOf(t, r.Payload), true
	})
	if !rep.OK() {
		t.Fatalf("%s: %v", what, rep)
	}
	for _, r := range recs {
		if _, ok := want[r.Topic]; !ok {
			t.Fatalf("%s got %s, which its routes do not send it", what, r.Topic)
		}
	}
}

// TestFanOutDeadUpstreamKeepsItsShare: a route to two upstreams while one
// of them is unreachable (its proxy refuses and cuts): the other gets
// everything at once; the dead one's copies wait in its own spool file,
// across a gateway restart, and arrive in order, none lost, when it is
// reachable again. Real mosquittos on both sides, MQTT and STOMP in.
func TestFanOutDeadUpstreamKeepsItsShare(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	aURL, subA, subB, px := twoUpstreams(t)
	dir := t.TempDir()
	cfg := fanConfig(t, dir, aURL, px.URL(), "max_bytes: 64MiB")
	r := startGateway(t, cfg)

	// Both up: fan/ reaches both, main/ only A, onlyb/ only B.
	c := pahoClient(t, r.g.MQTTAddr("mqtt"), "dev1")
	for i := range 10 {
		publish(t, c, "fan/dev1", reading("f", i))
		publish(t, c, "main/dev1", reading("m", i))
		publish(t, c, "onlyb/dev1", reading("o", i))
	}
	waitUpstream(t, subA, "20 on A", func(rs []bridgetest.Record) bool { return len(rs) >= 20 })
	waitUpstream(t, subB, "20 on B", func(rs []bridgetest.Record) bool { return len(rs) >= 20 })

	// Every ack of those committed, so that what B's spool holds from
	// now on is exactly what is published while B is away.
	testkit.Wait(t, "both spools empty", func() bool {
		return r.g.ups[0].sp.Stats().Messages == 0 && r.g.ups[1].sp.Stats().Messages == 0
	})

	// B unreachable: A keeps getting everything; B's share waits.
	px.Refuse()
	px.Cut()
	const n = 300
	for i := 10; i < n; i++ {
		publish(t, c, "fan/dev1", reading("f", i))
		if i < 100 {
			publish(t, c, "main/dev1", reading("m", i))
			publish(t, c, "onlyb/dev1", reading("o", i))
		}
	}
	sc := stompDial(t, r.g.STOMPAddr(0))
	for i := range 20 {
		if err := sc.Send("/topic/fan.stomp", "application/json", []byte(reading("s", i)), gostomp.SendOpt.Receipt); err != nil {
			t.Fatalf("stomp send %d: %v", i, err)
		}
	}
	_ = sc.Disconnect()
	wantA := map[string]int{"sites/gw1/fan/dev1": n, "sites/gw1/main/dev1": 100, "sites/gw1/fan/stomp": 20}
	waitUpstream(t, subA, "everything on A while B is away", func(rs []bridgetest.Record) bool { return len(rs) >= n+100+20 })
	checkUpstream(t, "A", subA.Records(), wantA)
	queuedB := (n - 10) + 90 + 20
	metricsURL := "http://" + r.g.HTTPAddr() + "/metrics"
	body := httpGet(t, metricsURL)
	if got := metricValue(t, metricsURL, `ferry_upstream_queued_messages{upstream="b"}`); got != float64(queuedB) {
		t.Errorf("b queued %v, want %d:\n%s", got, queuedB, grepLines(body, "ferry_upstream_"))
	}
	if got := metricValue(t, metricsURL, `ferry_upstream_link_up{upstream="b"}`); got != 0 {
		t.Errorf("b link_up %v while refused", got)
	}
	// A has everything; main's spool empties once A's last acks committed.
	testkit.Wait(t, "main's spool empty", func() bool {
		return metricValue(t, metricsURL, `ferry_upstream_queued_messages{upstream="main"}`) == 0
	})

	var st Status
	if err := json.Unmarshal([]byte(httpGet(t, "http://"+r.g.HTTPAddr()+"/api/status")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Upstreams) != 2 || st.Upstreams[0].Name != "main" || st.Upstreams[1].Name != "b" ||
		st.Upstreams[1].Queued != int64(queuedB) || st.Upstreams[1].Link == "up" || st.Upstreams[1].OldestAgeSeconds <= 0 {
		t.Errorf("/api/status upstreams: %+v", st.Upstreams)
	}

	// The status page shows each upstream's share.
	v := startChrome(t, requireChromium(t)).view(t, "http://"+r.g.HTTPAddr()+"/")
	if ups := v.tables["ups"]; len(ups) != 2 || !hasRow(ups, "main", "up", "0") || ups[1][0] != "b" || ups[1][1] == "up" || ups[1][2] != strconv.Itoa(queuedB) {
		t.Errorf("status page upstreams table: %v", ups)
	}

	// ferry spool -upstream b, through the running gateway and on the file.
	adminStats := func(where string) {
		t.Helper()
		cfg2 := *cfg
		cfg2.Listeners.HTTP.Address = r.g.HTTPAddr() // the config names port 0
		adm, err := OpenSpoolAdmin(&cfg2, AdminOptions{Upstream: "b"})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = adm.Close() }()
		st, err := adm.Stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if st.Messages != int64(queuedB) || !strings.Contains(adm.Where(), where) {
			t.Errorf("admin of b at %s: %d messages, want %d at %s", adm.Where(), st.Messages, queuedB, where)
		}
	}
	adminStats("(upstreams/b)")
	if _, err := OpenSpoolAdmin(cfg, AdminOptions{Upstream: "c"}); err == nil || !strings.Contains(err.Error(), `no upstream named "c" (have main, b)`) {
		t.Errorf("admin of an unknown upstream: %v", err)
	}

	// A restart while B is still away: its share is in its own file.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	adminStats("spool.upstream-b.db")
	r = startGateway(t, cfg)
	if got := r.g.ups[1].sp.Stats().Messages; got != int64(queuedB) {
		t.Fatalf("after the restart b's spool holds %d, want %d", got, queuedB)
	}

	px.Heal()
	wantB := map[string]int{"sites/gw1/fan/dev1": n, "sites/gw1/onlyb/dev1": 100, "sites/gw1/fan/stomp": 20}
	waitUpstream(t, subB, "B's share after it came back", func(rs []bridgetest.Record) bool {
		return bridgetest.Check(rs, wantB, func(r bridgetest.Record) (string, int, bool) { return r.Topic, seqOf(t, r.Payload), true }).Unique >= n+100+20
	})
	checkUpstream(t, "B", subB.Records(), wantB)
	testkit.Wait(t, "b's spool empty", func() bool { return r.g.ups[1].sp.Stats().Messages == 0 })
	// A got nothing twice from the restart or from B's drain.
	checkUpstream(t, "A after", subA.Records(), wantA)
	if len(subA.Records()) != n+100+20 {
		t.Errorf("A got %d records, want %d", len(subA.Records()), n+100+20)
	}
}

// TestFanOutCappedUpstreamDropsOnlyItsOwn: an upstream whose spool is
// capped with drop_oldest loses its oldest copies (counted, per upstream)
// while it is away; the other upstream gets everything and the publisher
// is never refused.
func TestFanOutCappedUpstreamDropsOnlyItsOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	aURL, subA, subB, px := twoUpstreams(t)
	px.Refuse()
	const capN, n = 50, 200
	r := startGateway(t, fanConfig(t, t.TempDir(), aURL, px.URL(), fmt.Sprintf("max_messages: %d, overflow: drop_oldest", capN)))
	c := pahoClient(t, r.g.MQTTAddr("mqtt"), "dev1")
	for i := range n {
		publish(t, c, "fan/dev1", reading("f", i))
	}
	waitUpstream(t, subA, "everything on A", func(rs []bridgetest.Record) bool { return len(rs) >= n })
	checkUpstream(t, "A", subA.Records(), map[string]int{"sites/gw1/fan/dev1": n})
	metricsURL := "http://" + r.g.HTTPAddr() + "/metrics"
	body := httpGet(t, metricsURL)
	if got := metricValue(t, metricsURL, `ferry_upstream_dropped_total{reason="drop_oldest",upstream="b"}`); got != n-capN {
		t.Errorf("b dropped %v, want %d:\n%s", got, n-capN, grepLines(body, "ferry_upstream_"))
	}
	if got := metricValue(t, metricsURL, `ferry_upstream_dropped_total{reason="drop_oldest",upstream="main"}`); got != 0 {
		t.Errorf("main dropped %v", got)
	}
	px.Heal()
	waitUpstream(t, subB, "b's last copies", func(rs []bridgetest.Record) bool { return len(rs) >= capN })
	testkit.Wait(t, "b's spool empty", func() bool { return r.g.ups[1].sp.Stats().Messages == 0 })
	recs := subB.Records()
	for i, rec := range recs {
		if got, want := seqOf(t, rec.Payload), n-capN+i; got != want {
			t.Fatalf("B record %d: seq %d, want %d (the newest %d, in order)", i, got, want, capN)
		}
	}
}

// TestReloadCannotAddUpstream: a reload whose routes name an upstream that
// is not running is refused, naming the route and the upstream.
func TestReloadCannotAddUpstream(t *testing.T) {
	cfg := mustParse(t, "gateway_id: gw1\nbridge: {upstream: tcp://127.0.0.1:1}\nupstreams:\n  - {name: b, bridge: {upstream: tcp://127.0.0.1:2}}\n  - {name: c, bridge: {upstream: tcp://127.0.0.1:3}}\nroutes:\n  - {match: x/#, upstreams: [main, b, c]}\n")
	err := checkUpstreams(cfg, []string{"main", "b"})
	if err == nil || !strings.Contains(err.Error(), `route routes[0]: upstream "c" is not running (the running ones: main, b): adding an upstream needs a restart`) {
		t.Fatalf("err = %v", err)
	}
	if err := checkUpstreams(cfg, []string{"main", "b", "c"}); err != nil {
		t.Fatal(err)
	}
}

func grepLines(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// BenchmarkFanSink: messages through the ingest sink into one upstream's
// spool, and fanned out into two upstreams' spools (two files, each commit
// fsync'd), with 256 in flight as a pipelining connection keeps them.
// Reports msg/s and fsyncs per message over all files.
// newFanRig opens main's and b's spools in a temporary directory and
// returns the fan sink of a route t/# to upstreams route, with o.
func newFanRig(tb testing.TB, route string, o spoolsink.Options) (*fanSink, *Gateway) {
	tb.Helper()
	dir := tb.TempDir()
	cfg, err := config.Parse("b.yaml", []byte(fmt.Sprintf(`gateway_id: gw1
spool: {path: %q}
bridge: {upstream: tcp://127.0.0.1:1}
upstreams: [{name: b, bridge: {upstream: tcp://127.0.0.1:2}}]
routes: [{match: "t/#", upstreams: %s}]
`, filepath.Join(dir, "spool.db"), route)), nil)
	if err != nil {
		tb.Fatal(err)
	}
	g := &Gateway{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	if g.sp, err = spool.Open(cfg.Spool.Path, cfg.GatewaySpoolOptions(nil)); err != nil {
		tb.Fatal(err)
	}
	g.ups = []*upstream{{name: config.MainUpstream, sp: g.sp}}
	if err := g.openUpstreams(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = g.closeUpstreams(); _ = g.sp.Close() })
	for _, u := range g.ups {
		u.sink, u.quiet = spoolsink.New(u.sp, o), spoolsink.New(u.sp, spoolsink.Options{Retained: o.Retained && u.sp == g.sp})
	}
	if g.router, err = NewRouter(cfg); err != nil {
		tb.Fatal(err)
	}
	return newFanSink(g.router, g.ups, o), g
}

// TestFanSinkRetainedState: a retained message of a route that does not
// send to main still sets the local retained state, which lives in main's
// spool; a batch goes to every upstream of its messages, and is counted
// once per message.
func TestFanSinkRetainedState(t *testing.T) {
	retained := func(g *Gateway) []string {
		var keys []string
		if err := g.sp.IterateState(spool.StateRetained, nil, func(k, _ []byte) error { keys = append(keys, string(k)); return nil }); err != nil {
			t.Fatal(err)
		}
		return keys
	}
	msg := func(topic string, retain bool) *message.Message {
		return &message.Message{ID: message.NewID(time.Now()), Topic: topic, Payload: []byte("v"), QoS: 1, Retain: retain, AcceptedAt: time.Now()}
	}
	var accepted int
	o := spoolsink.Options{Retained: true, OnAccepted: func(*message.Message) { accepted++ }}

	f, g := newFanRig(t, "[b]", o)
	if err := f.Accept(t.Context(), msg("t/only-b", true)); err != nil {
		t.Fatal(err)
	}
	if got := retained(g); len(got) != 1 || got[0] != "t/only-b" {
		t.Errorf("retained state in main's spool: %v", got)
	}
	if m, b := g.ups[0].sp.Stats().Messages, g.ups[1].sp.Stats().Messages; m != 0 || b != 1 {
		t.Errorf("main holds %d, b %d; want 0 and 1", m, b)
	}

	f, g = newFanRig(t, "[main, b]", o)
	accepted = 0
	if err := f.AcceptBatch(t.Context(), []*message.Message{msg("t/a", true), msg("t/b", false), msg("other", false)}); err != nil {
		t.Fatal(err)
	}
	if m, b := g.ups[0].sp.Stats().Messages, g.ups[1].sp.Stats().Messages; m != 3 || b != 2 {
		t.Errorf("main holds %d, b %d; want 3 (other is main's by the default route) and 2", m, b)
	}
	if got := retained(g); len(got) != 1 || got[0] != "t/a" {
		t.Errorf("retained state: %v", got)
	}
	if accepted != 3 {
		t.Errorf("accepted callbacks: %d, want 3", accepted)
	}
}

func BenchmarkFanSink(b *testing.B) {
	for _, bc := range []struct{ name, route string }{{"one", "[main]"}, {"two", "[main, b]"}} {
		route := bc.route
		b.Run("upstreams="+bc.name, func(b *testing.B) {
			f, g := newFanRig(b, route, spoolsink.Options{})
			payload := make([]byte, 256)
			waits := make(chan func() error, 256)
			errc := make(chan error, 1)
			go func() {
				var first error
				for w := range waits {
					if err := w(); err != nil && first == nil {
						first = err
					}
				}
				errc <- first
			}()
			ctx := context.Background()
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				m := &message.Message{ID: message.NewID(time.Now()), Topic: "t/x", Payload: payload, QoS: 1, AcceptedAt: time.Now(),
					Source: message.Source{ClientID: "c"}, SendID: strconv.Itoa(i)}
				waits <- f.Submit(ctx, m)
			}
			close(waits)
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			el := time.Since(start)
			b.StopTimer()
			var syncs uint64
			for _, u := range g.ups {
				syncs += u.sp.Stats().Syncs
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
			b.ReportMetric(float64(syncs)/float64(b.N), "fsyncs/msg")
		})
	}
}

// TestFanOutQoS0DropFollowsEachUpstream: qos0_when_offline: drop decides by
// the links of the route's own upstreams. With main unreachable and b up,
// QoS 0 messages of a route to b only are spooled and reach b; those of a
// route to both reach b and leave no copy in main's spool; only a route
// whose every upstream is down delivers them locally only.
func TestFanOutQoS0DropFollowsEachUpstream(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes")
	}
	a := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	b := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	subB := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: b.URL(), Filter: "sites/#", Envelope: true})
	pxMain := bridgetest.NewProxy(t, a.Addr())
	cfg := fanConfigRoutes(t, t.TempDir(), `
  - {name: fan, match: "fan/#", upstreams: [main, b], qos0_when_offline: drop}
  - {name: onlyb, match: "onlyb/#", upstreams: [b], qos0_when_offline: drop}
  - {name: onlymain, match: "main/#", qos0_when_offline: drop}`, pxMain.URL(), b.URL(), "")
	r := startGateway(t, cfg)
	main, ub := r.g.ups[0], r.g.ups[1]
	testkit.Wait(t, "both links up", func() bool {
		return main.br.State() == bridge.StateUp && ub.br.State() == bridge.StateUp
	})

	pxMain.Refuse()
	pxMain.Cut()
	testkit.Wait(t, "main's link down, as the gateway sees it", func() bool {
		return main.br.State() != bridge.StateUp && !r.g.routeLinkUp("main/x")
	})
	testkit.Wait(t, "b's link up, as the gateway sees it", func() bool { return r.g.routeLinkUp("onlyb/x") })

	c := pahoClient(t, r.g.MQTTAddr("mqtt"), "dev1")
	const n = 10
	for i := range n {
		for _, topic := range []string{"onlyb/dev1", "fan/dev1", "main/dev1"} {
			if err := waitToken(t, c.Publish(topic, 0, false, reading("q0", i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A QoS 1 message after them: once it is acknowledged, every QoS 0
	// one before it has been routed and, where spooled, committed.
	publish(t, c, "onlyb/marker", reading("m", 0))

	waitUpstream(t, subB, "the QoS 0 messages of onlyb and fan on b", func(rs []bridgetest.Record) bool { return len(rs) >= 2*n+1 })
	checkUpstream(t, "b", subB.Records(), map[string]int{
		"sites/gw1/onlyb/dev1": n, "sites/gw1/fan/dev1": n, "sites/gw1/onlyb/marker": 1})
	if got := main.sp.Stats().Messages; got != 0 {
		t.Fatalf("main's spool holds %d messages: QoS 0 copies for an upstream whose link is down (drop)", got)
	}
	if got := r.g.core.Stats().LocalOnly; got != n {
		t.Fatalf("ingest delivered %d messages locally only, want the %d of main/ (its only upstream is down)", got, n)
	}
}
