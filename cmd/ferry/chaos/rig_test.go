package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	firmwaresim "github.com/ferrymq/ferry/firmware-sim"
	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
)

// gatewayID is the campaign gateway's id: upstream topics are
// sites/chaos/<topic>.
const gatewayID = "chaos"

// rigOptions shape one phase's rig.
type rigOptions struct {
	spoolDir string // where the spool file lives; "": the rig's directory
	maxBytes string // spool.max_bytes; "": 256MiB
	linkDown bool   // start with the proxy refusing the bridge
	// fanOut: a second upstream b (its own mosquitto, proxy and
	// verifier) that the telemetry route also sends to.
	fanOut bool
}

// rig is everything one phase runs: mosquitto (persistent, so that an
// upstream SIGTERM loses nothing the recorder had not received), the
// proxy between the gateway's bridge and mosquitto, the recorder
// subscribed to mosquitto directly, and the gateway child process.
type rig struct {
	p         *phase
	dir       string
	mosq      *bridgetest.Mosquitto
	proxy     *firmwaresim.Proxy
	v         *firmwaresim.Verifier
	rec       *bridgetest.Subscriber // every delivery with its envelope id: the evidence behind a failed invariant
	gw        *gatewayProc
	runID     string
	spoolPath string
	mqtt      string
	stomp     string
	barriers  int

	// The second upstream, with rigOptions.fanOut (else nil).
	proxyB *firmwaresim.Proxy
	vB     *firmwaresim.Verifier
}

func newRig(p *phase, o rigOptions) *rig {
	t := p.t
	t.Helper()
	r := &rig{p: p, dir: t.TempDir(), runID: fmt.Sprintf("c%06x", p.rng.Uint32()&0xffffff)}
	r.mosq = bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{Persistence: true})
	var err error
	if r.proxy, err = firmwaresim.NewProxy("127.0.0.1:0", r.mosq.Addr()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.proxy.Close() })
	if o.linkDown {
		r.proxy.Refuse()
	}
	spoolDir := o.spoolDir
	if spoolDir == "" {
		spoolDir = filepath.Join(r.dir, "spool")
	}
	if o.maxBytes == "" {
		o.maxBytes = "256MiB"
	}
	r.spoolPath = filepath.Join(spoolDir, "spool.db")
	r.mqtt = loopback(t)
	r.stomp = loopback(t)
	httpAddr := loopback(t)
	fanAddr := ""
	if o.fanOut {
		mosqB := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{Persistence: true})
		if r.proxyB, err = firmwaresim.NewProxy("127.0.0.1:0", mosqB.Addr()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.proxyB.Close() })
		fanAddr = r.proxyB.Addr()
		r.vB = firmwaresim.NewVerifier(firmwaresim.VerifierOptions{
			Broker: mosqB.Addr(), Filter: "sites/" + gatewayID + "/#", RunID: r.runID, Persistent: true,
		})
		ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait)) // a hang guard
		err := r.vB.Start(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.vB.Close)
	}
	cfg := filepath.Join(r.dir, "ferry.yaml")
	if err := os.WriteFile(cfg, []byte(gatewayConfig(r.mqtt, r.stomp, httpAddr, r.spoolPath, o.maxBytes, r.proxy.Addr(), fanAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(cfg); err != nil {
		t.Fatalf("generated configuration: %v", err)
	}

	r.v = firmwaresim.NewVerifier(firmwaresim.VerifierOptions{
		Broker: r.mosq.Addr(), Filter: "sites/" + gatewayID + "/#", RunID: r.runID, Persistent: true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait)) // a hang guard
	defer cancel()
	if err := r.v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.v.Close)
	r.rec = bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: r.mosq.URL(), Filter: "sites/" + gatewayID + "/sensors/#", Envelope: true})

	r.gw = &gatewayProc{bin: p.c.bin, cfg: cfg, logPath: filepath.Join(r.dir, "ferry.log"), httpAddr: httpAddr}
	r.gw.client.Timeout = testkit.Timeout(5 * time.Second)
	t.Cleanup(func() {
		r.gw.kill()
		if t.Failed() {
			t.Logf("gateway log: %s (kept: the test's temporary directory is removed, so the tail follows)\n%s", r.gw.logPath, r.gw.tail(20))
		}
	})
	if err := r.gw.start(true); err != nil {
		p.fatal("first start: %v", err)
	}
	return r
}

func loopback(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", bridgetest.FreePort(t))
}

// gatewayConfig is the configuration of the gateway under test: loopback
// listeners, the spool with block-then-reject at the cap, a route that
// de-duplicates on the readings' id (so a device's retransmit after a
// crash or a refusal is acknowledged but not stored again, and only
// bridge resends, which carry the original envelope id, can reach
// upstream twice), and a bridge through the proxy that reconnects and
// notices a blackhole quickly. With fanUpstream, the route also goes to
// a second upstream b there, with a bridge alike.
func gatewayConfig(mqtt, stomp, httpAddr, spoolPath, maxBytes, upstream, fanUpstream string) string {
	// bridge is a bridge block whose keys are indented by ind.
	bridge := func(ind, upstream string) string {
		b := fmt.Sprintf("upstream: tcp://%s\nformat: envelope\nkeepalive: 2s\nconnect_timeout: 2s\nbackoff:\n  base: 100ms\n  max: 1s\nstall_timeout: 2s\n", upstream)
		return ind + strings.ReplaceAll(strings.TrimSuffix(b, "\n"), "\n", "\n"+ind) + "\n"
	}
	fan, fanRoute := "", ""
	if fanUpstream != "" {
		fanRoute = "    upstreams: [main, b]\n"
		fan = "upstreams:\n  - name: b\n    bridge:\n" + bridge("      ", fanUpstream) + "    spool:\n      max_bytes: " + maxBytes + "\n"
	}
	return fmt.Sprintf(`# Generated by the chaos campaign (cmd/ferry/chaos).
gateway_id: %s
log:
  level: info
  format: json
listeners:
  mqtt:
    address: %s
  stomp:
    address: %s
  http:
    address: %s
allow_anonymous: true
spool:
  path: %s
  max_bytes: %s
  overflow: block
  block_timeout: 1s
  dedupe_window: 1h
routes:
  - name: telemetry
    match: sensors/#
    priority: 5
    dedupe: json:id
%sbridge:
%s%s`, gatewayID, mqtt, stomp, httpAddr, spoolPath, maxBytes, fanRoute, bridge("  ", upstream), fan)
}

// status reads the gateway's status; the phase fails when it cannot.
func (r *rig) status() *gateway.Status {
	r.p.t.Helper()
	st, err := r.gw.status()
	if err != nil {
		r.aliveOrFatal("read the status")
		r.p.fatal("status: %v", err)
	}
	return st
}

func (r *rig) metrics() metricSet {
	r.p.t.Helper()
	m, err := r.gw.metrics()
	if err != nil {
		r.aliveOrFatal("scrape the metrics")
		r.p.fatal("metrics: %v", err)
	}
	return m
}

// aliveOrFatal stops the phase when the gateway exited by itself: a crash
// is a defect, and nothing after it would mean anything.
func (r *rig) aliveOrFatal(doing string) {
	r.p.t.Helper()
	if err := r.gw.unexpectedExit(); err != nil {
		r.p.fatal("the gateway exited by itself (%v) while the campaign wanted to %s; log tail:\n%s", err, doing, r.gw.tail(30))
	}
}

// waitStatus polls the status until cond holds and returns it; the phase
// fails at the hang guard or when the gateway exits.
func (r *rig) waitStatus(guard time.Duration, what string, cond func(*gateway.Status) bool) *gateway.Status {
	r.p.t.Helper()
	st, ok := r.pollStatus(guard, cond)
	if !ok {
		r.p.fatal("hang guard: still waiting for %s after %v (%s=%g); last status: %s", what, testkit.Timeout(guard),
			testkit.ScaleEnv, testkit.Scale(), brief(st))
	}
	return st
}

// pollStatus is waitStatus that reports instead of failing.
func (r *rig) pollStatus(guard time.Duration, cond func(*gateway.Status) bool) (*gateway.Status, bool) {
	r.p.t.Helper()
	end := time.Now().Add(testkit.Timeout(guard))
	var last *gateway.Status
	for {
		r.aliveOrFatal("wait for its status")
		if st, err := r.gw.status(); err == nil {
			last = st
			if cond(st) {
				return st, true
			}
		}
		if time.Now().After(end) {
			return last, false
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// brief is a status in one line, for failure messages.
func brief(st *gateway.Status) string {
	if st == nil {
		return "(none)"
	}
	s := fmt.Sprintf("ready=%v link=%s in_flight=%d published=%d acked=%d resent=%d stalls=%d dead_lettered=%d",
		st.Ready, st.Link.State, st.Link.InFlight, st.Link.Published, st.Link.Acked, st.Link.Resent, st.Link.Stalls, st.Link.DeadLettered)
	if sp := st.Spool; sp != nil {
		s += fmt.Sprintf(" | spool messages=%d leased=%d dlq=%d full=%v accepted=%d duplicates=%d acked=%d rejected=%d dropped=%v file=%d",
			sp.Messages, sp.Leased, sp.DLQMessages, sp.Full, sp.Accepted, sp.Duplicates, sp.Acked, sp.Rejected, sp.Dropped, sp.FileSize)
	}
	if st.NotReady != "" {
		s += " | not ready: " + st.NotReady
	}
	return s
}

// barrier publishes a marker straight to mosquitto and waits until the
// recorder received it: mosquitto queues a subscriber's messages in the
// order it accepted them, so everything it acknowledged to the bridge
// before has reached the recorder too. The marker is a reading of another
// run, which the recorder counts as foreign and otherwise ignores.
func (r *rig) barrier() {
	t := r.p.t
	t.Helper()
	r.barriers++
	rd := firmwaresim.Reading{ID: fmt.Sprintf("barrier-%d", r.barriers), Run: "barrier", Dev: "barrier", Seq: int64(r.barriers), TS: time.Now().UnixNano()}
	opts := paho.NewClientOptions().AddBroker(r.mosq.URL()).SetClientID(fmt.Sprintf("chaos-barrier-%s-%d", r.runID, r.barriers)).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(testkit.Timeout(10 * time.Second))
	c := paho.NewClient(opts)
	guard := testkit.Timeout(30 * time.Second)
	if tok := c.Connect(); !tok.WaitTimeout(guard) || tok.Error() != nil {
		t.Fatalf("barrier: connect to mosquitto: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish("sites/"+gatewayID+"/barrier", 1, false, rd.Encode(0)); !tok.WaitTimeout(guard) || tok.Error() != nil {
		t.Fatalf("barrier: publish: %v", tok.Error())
	}
	end := time.Now().Add(guard)
	for r.v.Report(nil).Foreign < r.barriers {
		if time.Now().After(end) {
			t.Fatalf("hang guard: the recorder did not receive barrier %d within %v", r.barriers, guard)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// loadOptions shape the devices of a phase.
type loadOptions struct {
	devices int           // per wave, round-robin MQTT 3.1.1, MQTT 5, STOMP
	rate    float64       // readings per second per device
	window  int           // unacknowledged readings per device
	payload int           // bytes per reading
	wave    time.Duration // production time of one wave
}

// load runs waves of devices against the gateway until Stop: each wave a
// firmwaresim.Fleet producing for o.wave and then re-sending what was not
// acknowledged until all of it is. Waves have their own device names
// (w<N>d<i>) under the rig's run id, so their ids never collide and the
// recorder checks them all.
type load struct {
	r    *rig
	o    loadOptions
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	fleets []*firmwaresim.Fleet
	err    error
}

// loadMix is the protocols of a wave's devices, round-robin.
var loadMix = []firmwaresim.Protocol{firmwaresim.MQTT311, firmwaresim.MQTT5, firmwaresim.STOMP}

// waveDrain bounds a wave's re-sending after production (a hang guard: a
// wave ends as soon as everything it sent was acknowledged).
const waveDrain = 60 * time.Second

func (r *rig) startLoad(o loadOptions) *load {
	l := &load{r: r, o: o, stop: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go l.run(ctx)
	r.p.t.Cleanup(func() { cancel(); <-l.done })
	return l
}

func (l *load) run(ctx context.Context) {
	defer close(l.done)
	for n := 1; ; n++ {
		if n > 1 { // the first wave runs even when Stop came first
			select {
			case <-l.stop:
				return
			case <-ctx.Done():
				return
			default:
			}
		}
		f, err := firmwaresim.NewFleet(firmwaresim.FleetOptions{
			Devices: l.o.devices, Mix: loadMix,
			MQTTAddr: l.r.mqtt, STOMPAddr: l.r.stomp, Prefix: fmt.Sprintf("w%dd", n), RunID: l.r.runID,
			Duration: l.o.wave, Drain: testkit.Timeout(waveDrain),
			Template: firmwaresim.DeviceConfig{
				Topic: "sensors/{device}/temp", QoS: 1, Rate: l.o.rate, Burst: 1, Window: l.o.window, PayloadSize: l.o.payload,
				BackoffMin: 20 * time.Millisecond, BackoffMax: 500 * time.Millisecond, ConnectTimeout: 2 * time.Second,
			},
		})
		if err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			return
		}
		l.mu.Lock()
		l.fleets = append(l.fleets, f)
		l.mu.Unlock()
		_ = f.Run(ctx) // a cancelled wave keeps what was acknowledged
	}
}

// Stop lets the current wave finish (production, then re-sending until
// everything is acknowledged) and starts no other.
func (l *load) Stop() {
	t := l.r.p.t
	t.Helper()
	l.once.Do(func() { close(l.stop) })
	guard := l.o.wave + testkit.Timeout(waveDrain) + testkit.Timeout(testkit.DefaultWait)
	select {
	case <-l.done:
	case <-time.After(guard):
		t.Fatalf("hang guard: the devices' last wave did not end within %v", guard)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		t.Fatalf("devices: %v", l.err)
	}
}

// Acked is every acknowledged id of every wave so far, with its ack time.
func (l *load) Acked() map[string]time.Time {
	l.mu.Lock()
	fleets := slices.Clone(l.fleets)
	l.mu.Unlock()
	out := map[string]time.Time{}
	for _, f := range fleets {
		for id, at := range f.Acked() {
			out[id] = at
		}
	}
	return out
}

// Stats sums the devices' counters over the waves.
func (l *load) Stats() firmwaresim.DeviceStats {
	l.mu.Lock()
	fleets := slices.Clone(l.fleets)
	l.mu.Unlock()
	var s firmwaresim.DeviceStats
	for _, f := range fleets {
		st := f.Stats()
		s.Sent += st.Sent
		s.Retransmits += st.Retransmits
		s.Acked += st.Acked
		s.Unacked += st.Unacked
		s.Connects += st.Connects
		s.ConnectErrors += st.ConnectErrors
		s.Cuts += st.Cuts
	}
	return s
}

// settleOptions say which counter checks apply to a phase.
type settleOptions struct {
	singleLifetime bool // one gateway process from the first accept to the end: its counters cover the whole phase
}

// settle ends a phase: the devices finish, the link heals, and every
// invariant is checked (see the package doc).
func (r *rig) settle(l *load, o settleOptions) {
	p, t := r.p, r.p.t
	t.Helper()
	l.Stop()
	r.proxy.Heal()
	r.proxy.SetLatency(0)
	if r.proxyB != nil {
		r.proxyB.Heal()
	}
	acked := l.Acked()

	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(2*time.Minute)) // a hang guard
	missing := r.v.WaitFor(ctx, acked)
	cancel()
	if r.vB != nil {
		ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(2*time.Minute)) // a hang guard
		r.vB.WaitFor(ctx, acked)
		cancel()
	}
	st, drained := r.pollStatus(testkit.DefaultWait, func(st *gateway.Status) bool {
		for _, u := range st.Upstreams {
			if u.Queued != 0 {
				return false
			}
		}
		return st.Spool.Messages == 0 && st.Spool.Leased == 0 && st.Link.InFlight == 0
	})
	r.barrier()
	rep := r.v.Report(acked)
	m := r.metrics()
	if drained {
		st = r.status() // after the barrier: counters final
	}

	p.mu.Lock()
	p.acked += rep.Acked
	p.arrived += rep.Arrived
	p.lost += rep.Lost
	p.dupSame += rep.DupSameEnvelope
	p.dupOther += rep.DupNewEnvelope + rep.DupNoEnvelope
	p.reorders += rep.OrderViolations
	p.mu.Unlock()
	t.Logf("%s: devices %v\n%s\ngateway: %s", p.name, l.Stats(), rep, brief(st))

	if rep.Lost > 0 {
		p.fail("%d of %d acknowledged ids never arrived upstream (%d still missing after the hang guard), e.g. %s; gateway: %s",
			rep.Lost, rep.Acked, missing, sample(rep.LostIDs), brief(st))
	}
	if rep.OrderViolations > 0 {
		p.fail("%d first arrivals out of order per device and topic: %s", rep.OrderViolations, strings.Join(rep.OrderSamples, "; "))
	}
	if n := rep.DupNewEnvelope + rep.DupNoEnvelope; n > 0 {
		p.fail("%d duplicates upstream do not carry their original envelope id (%d with another id, %d without): a retransmit was stored twice: %s",
			n, rep.DupNewEnvelope, rep.DupNoEnvelope, r.storedTwice())
	}
	if rep.Malformed > 0 {
		p.fail("%d upstream payloads were not readings in an envelope", rep.Malformed)
	}
	if r.vB != nil {
		// The second upstream got its own copy of every acknowledged
		// reading, in order, duplicates only with the original id.
		repB := r.vB.Report(acked)
		t.Logf("%s: upstream b\n%s", p.name, repB)
		p.mu.Lock()
		p.lost += repB.Lost
		p.reorders += repB.OrderViolations
		p.mu.Unlock()
		if repB.Lost > 0 {
			p.fail("upstream b: %d of %d acknowledged ids never arrived, e.g. %s; gateway: %s", repB.Lost, repB.Acked, sample(repB.LostIDs), brief(st))
		}
		if repB.OrderViolations > 0 {
			p.fail("upstream b: %d first arrivals out of order: %s", repB.OrderViolations, strings.Join(repB.OrderSamples, "; "))
		}
		if n := repB.DupNewEnvelope + repB.DupNoEnvelope; n > 0 || repB.Malformed > 0 {
			p.fail("upstream b: %d duplicates without their original envelope id, %d malformed", n, repB.Malformed)
		}
		if repB.Arrived != rep.Arrived {
			p.fail("upstream b saw %d distinct readings, main %d: each must get every stored reading", repB.Arrived, rep.Arrived)
		}
	}
	if !drained {
		p.fail("the spool did not drain: %s", brief(st))
		return
	}
	sp := st.Spool
	if sp.DLQMessages != 0 || sumMap(sp.Dropped) != 0 {
		p.fail("messages left the queue without delivery: dlq=%d dropped=%v (the campaign's messages are all deliverable and none expires)", sp.DLQMessages, sp.Dropped)
	}
	// Every accepted reading put one key into the dedupe index, in the
	// transaction that stored it, and that count survives SIGKILLs: it is
	// the number of distinct readings the spool ever accepted, which must
	// be what the recorder saw.
	if keys := int(m.value("ferry_spool_dedupe_entries")); keys != rep.Arrived {
		p.fail("the spool indexed %d distinct readings (ferry_spool_dedupe_entries), the recorder saw %d arrive", keys, rep.Arrived)
	}
	// The last lifetime's counters balance: what was queued at its open
	// plus what it accepted is what it acked (the queue is empty now).
	if first := r.gw.firstStatus(); first != nil && first.Spool != nil {
		f := first.Spool
		backlog := f.Messages - int64(f.Accepted) + int64(f.Acked)
		if got := backlog + int64(sp.Accepted) - int64(sp.Acked); got != sp.Messages {
			p.fail("the last lifetime's counters do not balance: backlog at open %d + accepted %d - acked %d = %d, but %d queued",
				backlog, sp.Accepted, sp.Acked, got, sp.Messages)
		}
		if o.singleLifetime && backlog == 0 && int(sp.Accepted) != rep.Arrived {
			p.fail("the spool accepted %d messages (ferry_spool_accepted_total), the recorder saw %d distinct readings", sp.Accepted, rep.Arrived)
		}
	}
}

// storedTwice lists the readings that reached upstream under more than
// one envelope id (each one stored once per id), with the protocol of
// their device and when each copy was accepted (the envelope id's
// millisecond prefix) relative to the gateway's (re)starts.
func (r *rig) storedTwice() string {
	ids := map[string][]string{}
	var order []string
	for _, rc := range r.rec.Records() {
		rd, _, err := firmwaresim.DecodeArrival(rc.Payload)
		if err != nil || rd.Run != r.runID {
			continue
		}
		if !slices.Contains(ids[rd.ID], rc.ID) {
			if len(ids[rd.ID]) == 1 {
				order = append(order, rd.ID)
			}
			ids[rd.ID] = append(ids[rd.ID], rc.ID)
		}
	}
	starts := r.gw.startTimes()
	var out []string
	for _, id := range order {
		var copies []string
		for _, env := range ids[id] {
			copies = append(copies, fmt.Sprintf("%s accepted %s", env, sinceStart(acceptedAt(env), starts)))
		}
		out = append(out, fmt.Sprintf("%s (%s device) as %s", id, deviceProtocol(id), strings.Join(copies, " and ")))
		if len(out) == 5 {
			break
		}
	}
	if len(out) == 0 {
		return "(the evidence recorder saw none)"
	}
	return strings.Join(out, "; ")
}

// acceptedAt decodes the accept time from a message id (message.NewID:
// 48 bits of Unix milliseconds first).
func acceptedAt(envID string) time.Time {
	var ms int64
	if _, err := fmt.Sscanf(envID[:min(len(envID), 12)], "%x", &ms); err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func sinceStart(at time.Time, starts []time.Time) string {
	for i := len(starts) - 1; i >= 0; i-- {
		if !at.Before(starts[i].Truncate(time.Millisecond)) {
			return fmt.Sprintf("%v after start %d of the gateway", at.Sub(starts[i]).Round(time.Millisecond), i+1)
		}
	}
	return at.Format(time.RFC3339Nano)
}

// deviceProtocol names the protocol of the device in a reading id: device
// i of a wave speaks the load's Mix[i%3].
func deviceProtocol(readingID string) string {
	parts := strings.Split(readingID, "-")
	if len(parts) < 3 {
		return "unknown"
	}
	dev := parts[len(parts)-2]
	var wave, i int
	if _, err := fmt.Sscanf(dev, "w%dd%d", &wave, &i); err != nil {
		return "unknown"
	}
	return loadMix[i%len(loadMix)].String()
}

func sumMap(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

func sample(ids []string) string {
	if len(ids) > 10 {
		return strings.Join(ids[:10], " ") + fmt.Sprintf(" … (%d more)", len(ids)-10)
	}
	return strings.Join(ids, " ")
}
