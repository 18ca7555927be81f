package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/hooks/storage"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
)

// spoolState is the gateway's adapter (gateway/state.go), for the tests.
type spoolState struct{ sp *spool.Spool }

func (s spoolState) Write(ctx context.Context, ws ...StateWrite) func() error {
	ops := make([]spool.StateOp, len(ws))
	for i, w := range ws {
		ops[i] = spool.StateOp{Kind: spool.StateKind(w.Kind), Key: w.Key, Value: w.Value, Prefix: w.Prefix, Stamp: w.Stamp, BestEffort: w.BestEffort}
	}
	return s.sp.ApplyStateAsync(ctx, ops...)
}

func (s spoolState) Iterate(kind StateKind, prefix []byte, fn func(key, value []byte) error) error {
	return s.sp.IterateState(spool.StateKind(kind), prefix, fn)
}

// stateGateway is a server over a real spool with its local state in it,
// wired as the gateway wires them.
type stateGateway struct {
	s    *Server
	sp   *spool.Spool
	core *ingest.Core
	once sync.Once
}

func openStateGateway(t testing.TB, path string, o StoreOptions, now func() time.Time) *stateGateway {
	t.Helper()
	var caps [spool.StateKinds]int64
	if o.MaxRetainedBytes > 0 {
		caps[spool.StateRetained] = o.MaxRetainedBytes
	}
	sp, err := spool.Open(path, spool.Options{StateMaxBytes: caps, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	core, err := ingest.New(ingest.Options{Sink: spoolsink.New(sp, spoolsink.Options{Retained: true}), Timeout: guard(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	o.State = spoolState{sp}
	s, err := New(Options{Ingest: core, Auth: message.AllowAll{}, AcceptTimeout: guard(), ConnectTimeout: guard(), Store: o, Now: now,
		Listeners: []Listener{{Name: "tcp", Kind: KindTCP, Address: "127.0.0.1:0"}}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	g := &stateGateway{s: s, sp: sp, core: core}
	t.Cleanup(func() { g.close(t) })
	return g
}

// close shuts down as the gateway does: ingest, the server, the spool.
func (g *stateGateway) close(t testing.TB) {
	g.once.Do(func() {
		g.core.Close()
		ctx, cancel := context.WithTimeout(context.Background(), guard())
		defer cancel()
		if err := g.s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := g.sp.Close(); err != nil {
			t.Errorf("spool Close: %v", err)
		}
	})
}

// sessionClient connects a persistent (clean session false) paho 3.1.1
// subscriber whose messages, from any subscription of its session, arrive
// on the returned channel; present is the CONNACK's session present flag.
func sessionClient(t *testing.T, addr, id string) (c paho.Client, msgs chan paho.Message, present bool) {
	t.Helper()
	msgs = make(chan paho.Message, 1000)
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(false).SetOrderMatters(true).
		SetConnectTimeout(guard()).SetKeepAlive(time.Duration(testKeepalive()) * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { msgs <- m })
	c = paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, msgs, tok.(*paho.ConnectToken).SessionPresent()
}

func pub(t *testing.T, s *Server, args ...string) {
	t.Helper()
	host, port := hostPort(t, s.Addr("tcp"))
	r := runTool(t, guard(), "mosquitto_pub", append([]string{"-h", host, "-p", port}, args...)...)
	if r.code != 0 {
		t.Fatalf("mosquitto_pub %v: exit %d\n%s", args, r.code, r.out)
	}
}

// retainedNow reads the retained messages of filter with mosquitto_sub
// (-C n stops after n; --retained-only ends at the first live message).
func retainedNow(t *testing.T, s *Server, filter string, n int) map[string]string {
	t.Helper()
	host, port := hostPort(t, s.Addr("tcp"))
	got := map[string]string{}
	if n == 0 {
		// Nothing expected: -W ends it; a retained message would print.
		r := runTool(t, guard(), "mosquitto_sub", "-h", host, "-p", port, "-t", filter, "-v", "--retained-only", "-W", "1")
		for _, l := range strings.Split(strings.TrimSpace(r.out), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				got[k] = v
			}
		}
		return got
	}
	r := runTool(t, guard(), "mosquitto_sub", "-h", host, "-p", port, "-t", filter, "-v", "--retained-only", "-C", strconv.Itoa(n))
	if r.code != 0 {
		t.Fatalf("mosquitto_sub: exit %d\n%s", r.code, r.out)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.out), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok {
			got[k] = v
		}
	}
	return got
}

func expectPayloads(t *testing.T, ch chan paho.Message, want ...string) {
	t.Helper()
	for i, w := range want {
		m := expectMessage(t, ch)
		if string(m.Payload()) != w {
			t.Fatalf("message %d: %q on %s, want %q", i, m.Payload(), m.Topic(), w)
		}
	}
}

// Retained messages (set, replace, clear, MQTT 5 expiry) and a persistent
// session (its subscription with options and id, its queued QoS 1
// messages, in order) survive a graceful restart; mosquitto_pub and
// mosquitto_sub are the devices, paho the dashboard.
func TestStoreGracefulRestart(t *testing.T) {
	requireTool(t, "mosquitto_pub", "mosquitto-clients")
	path := filepath.Join(t.TempDir(), "spool.db")
	g := openStateGateway(t, path, StoreOptions{}, nil)
	addr := g.s.Addr("tcp")

	pub(t, g.s, "-r", "-q", "1", "-t", "devices/pump1/state", "-m", "off")
	pub(t, g.s, "-r", "-q", "1", "-t", "devices/pump1/state", "-m", "on") // replace
	pub(t, g.s, "-r", "-q", "0", "-t", "devices/pump2/state", "-m", "idle")
	pub(t, g.s, "-r", "-q", "1", "-t", "devices/pump3/state", "-m", "gone")
	pub(t, g.s, "-r", "-q", "1", "-t", "devices/pump3/state", "-n") // clear
	pub(t, g.s, "-V", "mqttv5", "-r", "-q", "1", "-t", "devices/pump4/state", "-m", "short", "-D", "publish", "message-expiry-interval", "3600")

	dash, _, _ := sessionClient(t, addr, "dashboard")
	if tok := dash.Subscribe("alerts/#", 1, nil); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dash.Disconnect(50)
	for i := range 5 {
		pub(t, g.s, "-q", "1", "-t", "alerts/pump1", "-m", fmt.Sprintf("alert-%d", i))
	}
	testkit.WaitUntil(t, testkit.DefaultWait, "5 messages queued for the dashboard", func() bool { return g.s.StoreStats().Queued == 5 })
	g.close(t)

	g = openStateGateway(t, path, StoreOptions{}, nil)
	st := g.s.StoreStats()
	if st.Restored != [4]int64{3, 1, 1, 5} {
		t.Fatalf("restored %v, want 3 retained, 1 session, 1 subscription, 5 queued", st.Restored)
	}
	got := retainedNow(t, g.s, "devices/#", 3)
	want := map[string]string{"devices/pump1/state": "on", "devices/pump2/state": "idle", "devices/pump4/state": "short"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("retained after the restart: %v, want %v", got, want)
	}
	_, msgs, present := sessionClient(t, g.s.Addr("tcp"), "dashboard")
	if !present {
		t.Fatal("session present = false after the restart")
	}
	expectPayloads(t, msgs, "alert-0", "alert-1", "alert-2", "alert-3", "alert-4")
	// The subscription is back too: a new message arrives.
	pub(t, g.s, "-q", "1", "-t", "alerts/pump2", "-m", "alert-5")
	expectPayloads(t, msgs, "alert-5")
	testkit.WaitUntil(t, testkit.DefaultWait, "the delivered messages leave the store", func() bool { return g.s.StoreStats().Queued == 0 })
	_ = msgs
}

// MQTT 5 message expiry and session expiry are deadlines, not timers that
// a restart starts again: a retained message and a session whose time ran
// out while the gateway was down are not restored.
func TestStoreExpiryAcrossRestart(t *testing.T) {
	requireTool(t, "mosquitto_pub", "mosquitto-clients")
	path := filepath.Join(t.TempDir(), "spool.db")
	g := openStateGateway(t, path, StoreOptions{}, nil)
	pub(t, g.s, "-V", "mqttv5", "-r", "-q", "1", "-t", "x/short", "-m", "s", "-D", "publish", "message-expiry-interval", "60")
	pub(t, g.s, "-V", "mqttv5", "-r", "-q", "1", "-t", "x/long", "-m", "l", "-D", "publish", "message-expiry-interval", "7200")
	host, port := hostPort(t, g.s.Addr("tcp"))
	// An MQTT 5 persistent session of 10 minutes, and a 3.1.1 one (the
	// server's maximum, a day).
	r := runTool(t, guard(), "mosquitto_sub", "-V", "mqttv5", "-h", host, "-p", port, "-i", "short-session", "-c", "-q", "1",
		"-x", "600", "-t", "y/#", "-W", "1")
	_ = r
	dash, _, _ := sessionClient(t, g.s.Addr("tcp"), "day-session")
	if tok := dash.Subscribe("y/#", 1, nil); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dash.Disconnect(50)
	testkit.WaitUntil(t, testkit.DefaultWait, "two sessions", func() bool { return g.s.StoreStats().Sessions == 2 })
	g.close(t)

	later := func() time.Time { return time.Now().Add(time.Hour) }
	g = openStateGateway(t, path, StoreOptions{}, later)
	st := g.s.StoreStats()
	if st.Restored[0] != 1 || st.Restored[1] != 1 || st.ExpiredSessions != 1 {
		t.Fatalf("an hour later: restored %v, %d sessions expired; want 1 retained (x/long), 1 session (day-session), 1 expired", st.Restored, st.ExpiredSessions)
	}
	g.close(t)
	g = openStateGateway(t, path, StoreOptions{}, nil) // the expired ones were deleted, not only skipped
	if st := g.s.StoreStats(); st.Restored[0] != 1 || st.Restored[1] != 1 {
		t.Fatalf("restored %v", st.Restored)
	}
}

// The bounds, each with its answer: max_sessions refuses the CONNECT,
// max_session_messages drops the oldest queued, max_retained_bytes
// refuses a QoS 1 retained publish (MQTT 5: PUBACK 0x97) and delivers a
// QoS 0 one without retaining it.
func TestStoreBounds(t *testing.T) {
	requireTool(t, "mosquitto_pub", "mosquitto-clients")
	path := filepath.Join(t.TempDir(), "spool.db")
	g := openStateGateway(t, path, StoreOptions{MaxSessions: 1, MaxSessionMessages: 3, MaxRetainedBytes: 1500}, nil)
	addr := g.s.Addr("tcp")

	dash, _, _ := sessionClient(t, addr, "dash")
	if tok := dash.Subscribe("q/#", 1, nil); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("second").SetCleanSession(false).SetProtocolVersion(4).SetConnectTimeout(guard())
	tok := paho.NewClient(o).Connect()
	if !tok.WaitTimeout(guard()) || tok.Error() == nil {
		t.Fatal("a second persistent session was accepted with max_sessions 1")
	}
	if rc := tok.(*paho.ConnectToken).ReturnCode(); rc != 3 {
		t.Fatalf("CONNACK %d, want 3 (server unavailable)", rc)
	}
	host, port := hostPort(t, addr)
	if r := runTool(t, guard(), "mosquitto_sub", "-V", "mqttv5", "-h", host, "-p", port, "-i", "third", "-c", "-x", "60", "-t", "q/#", "-W", "1"); !strings.Contains(r.out+fmt.Sprint(r.code), "uota") {
		t.Fatalf("MQTT 5 second session: %d %s, want quota exceeded", r.code, r.out)
	}
	// A clean session is not counted.
	c, _ := pahoClient(t, addr, "clean", nil)
	c.Disconnect(50)

	dash.Disconnect(50)
	for i := range 5 {
		pub(t, g.s, "-q", "1", "-t", "q/a", "-m", fmt.Sprintf("m%d", i))
	}
	testkit.WaitUntil(t, testkit.DefaultWait, "2 dropped", func() bool { return g.s.StoreStats().LimitHits[LimitSessionQueue] == 2 })

	big := strings.Repeat("b", 1000)
	pub(t, g.s, "-r", "-q", "1", "-t", "r/one", "-m", big)
	r := runTool(t, guard(), "mosquitto_pub", "-V", "mqttv5", "-h", host, "-p", port, "-r", "-q", "1", "-t", "r/two", "-m", big)
	if !strings.Contains(r.out, "Quota exceeded") { // PUBACK 0x97 (mosquitto_pub exits 0 anyway)
		t.Fatalf("a QoS 1 retained publish over max_retained_bytes was not refused: %s", r.out)
	}
	pub(t, g.s, "-r", "-q", "0", "-t", "r/three", "-m", big)
	testkit.WaitUntil(t, testkit.DefaultWait, "the QoS 0 one not retained", func() bool { return g.s.StoreStats().LimitHits[LimitRetainedBytes] == 1 })
	if st := g.sp.StateStats()[spool.StateRetained]; st.Records != 1 || st.Refused != 1 || st.Skipped != 1 {
		t.Fatalf("spool retained state %+v, want 1 record, 1 refused, 1 skipped", st)
	}
	g.close(t)

	g = openStateGateway(t, path, StoreOptions{MaxSessions: 1, MaxSessionMessages: 3, MaxRetainedBytes: 1500}, nil)
	if got := retainedNow(t, g.s, "r/#", 1); len(got) != 1 || got["r/one"] != big {
		t.Fatalf("retained after the restart: %d topics", len(got))
	}
	_, msgs, _ := sessionClient(t, g.s.Addr("tcp"), "dash")
	expectPayloads(t, msgs, "m2", "m3", "m4") // the oldest two were dropped
	expectNone(t, msgs, 200*time.Millisecond)
}

// stateChildEnv switches the test binary into the state child: the value
// is the spool path (see TestMain).
const stateChildEnv = "FERRY_MQTT_STATE_CHILD"

// runStateChild runs a server with its local state over a real spool until
// it is killed, printing the queued count whenever it changes.
func runStateChild() {
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "child: %s: %v\n", what, err)
		os.Exit(2)
	}
	sp, err := spool.Open(os.Getenv(stateChildEnv), spool.Options{})
	if err != nil {
		fail("spool open", err)
	}
	core, err := ingest.New(ingest.Options{Sink: spoolsink.New(sp, spoolsink.Options{Retained: true}), Timeout: guard()})
	if err != nil {
		fail("ingest", err)
	}
	s, err := New(Options{Ingest: core, Auth: message.AllowAll{}, AcceptTimeout: guard(), ConnectTimeout: guard(),
		Store: StoreOptions{State: spoolState{sp}}, Listeners: []Listener{{Name: "tcp", Kind: KindTCP, Address: "127.0.0.1:0"}}})
	if err != nil {
		fail("new", err)
	}
	if err := s.Start(); err != nil {
		fail("start", err)
	}
	fmt.Printf("ADDR %s\n", s.Addr("tcp"))
	last := int64(-1)
	for range time.Tick(5 * time.Millisecond) { // until SIGKILL
		if q := s.StoreStats().Queued; q != last {
			fmt.Printf("QUEUED %d\n", q)
			last = q
		}
	}
}

// Retained messages and persistent sessions (one offline with queued
// messages, one connected at the kill) survive a SIGKILL of the process.
func TestStoreSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test")
	}
	requireTool(t, "mosquitto_pub", "mosquitto-clients")
	path := filepath.Join(t.TempDir(), "spool.db")
	child := testkit.StartChild(t, stateChildEnv+"="+path)
	addr := child.WaitLine("ADDR ")
	host, port := hostPort(t, addr)
	mpub := func(args ...string) {
		t.Helper()
		if r := runTool(t, guard(), "mosquitto_pub", append([]string{"-h", host, "-p", port}, args...)...); r.code != 0 {
			t.Fatalf("mosquitto_pub %v: exit %d\n%s", args, r.code, r.out)
		}
	}
	mpub("-r", "-q", "1", "-t", "devices/pump1/state", "-m", "off")
	mpub("-r", "-q", "1", "-t", "devices/pump1/state", "-m", "on")
	mpub("-r", "-q", "1", "-t", "devices/pump2/state", "-m", "x")
	mpub("-r", "-q", "1", "-t", "devices/pump2/state", "-n")
	mpub("-V", "mqttv5", "-r", "-q", "2", "-t", "devices/pump3/state", "-m", "v5", "-D", "publish", "message-expiry-interval", "3600")

	dash, _, _ := sessionClient(t, addr, "dashboard")
	if tok := dash.Subscribe("alerts/#", 1, nil); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dash.Disconnect(50)
	live, liveMsgs, _ := sessionClient(t, addr, "live")
	if tok := live.Subscribe("alerts/#", 1, nil); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for i := range 5 {
		mpub("-q", "1", "-t", "alerts/pump1", "-m", fmt.Sprintf("alert-%d", i))
	}
	expectPayloads(t, liveMsgs, "alert-0", "alert-1", "alert-2", "alert-3", "alert-4")
	child.WaitLine("QUEUED 5") // the dashboard's, in memory; the live one acked its own
	// The session writes ride the next commit: a last acknowledged
	// publish is that commit or a later one.
	mpub("-q", "1", "-t", "sentinel", "-m", "x")
	child.Kill()

	g := openStateGateway(t, path, StoreOptions{}, nil)
	st := g.s.StoreStats()
	if st.Restored != [4]int64{2, 2, 2, 5} {
		t.Fatalf("restored %v, want 2 retained, 2 sessions, 2 subscriptions, 5 queued", st.Restored)
	}
	got := retainedNow(t, g.s, "devices/#", 2)
	if want := map[string]string{"devices/pump1/state": "on", "devices/pump3/state": "v5"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("retained after kill -9: %v, want %v", got, want)
	}
	_, msgs, present := sessionClient(t, g.s.Addr("tcp"), "dashboard")
	if !present {
		t.Fatal("dashboard: no session after kill -9")
	}
	expectPayloads(t, msgs, "alert-0", "alert-1", "alert-2", "alert-3", "alert-4")
	_, liveMsgs, present = sessionClient(t, g.s.Addr("tcp"), "live")
	if !present {
		t.Fatal("live: no session after kill -9")
	}
	pub(t, g.s, "-q", "1", "-t", "alerts/pump2", "-m", "after")
	expectPayloads(t, liveMsgs, "after")
}

// memState is an in-memory State (unit tests only).
type memState struct {
	mu   sync.Mutex
	recs [4]map[string][]byte
}

func newMemState() *memState {
	m := &memState{}
	for i := range m.recs {
		m.recs[i] = map[string][]byte{}
	}
	return m
}

func (m *memState) Write(_ context.Context, ws ...StateWrite) func() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range ws {
		switch {
		case w.Prefix:
			for k := range m.recs[w.Kind] {
				if strings.HasPrefix(k, string(w.Key)) {
					delete(m.recs[w.Kind], k)
				}
			}
		case len(w.Value) == 0:
			delete(m.recs[w.Kind], string(w.Key))
		default:
			m.recs[w.Kind][string(w.Key)] = clone(w.Value)
		}
	}
	return func() error { return nil }
}

func (m *memState) Iterate(kind StateKind, prefix []byte, fn func(key, value []byte) error) error {
	m.mu.Lock()
	var keys []string
	for k := range m.recs[kind] {
		if strings.HasPrefix(k, string(prefix)) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	vals := make([][]byte, len(keys))
	for i, k := range keys {
		vals[i] = m.recs[kind][k]
	}
	m.mu.Unlock()
	for i, k := range keys {
		if err := fn([]byte(k), vals[i]); err != nil {
			return err
		}
	}
	return nil
}

func (m *memState) count(kind StateKind) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.recs[kind])
}

// A restored session that does not come back ends at its persisted
// deadline (disconnected 50 s before the restart, expiry 60 s: 10 s
// after it), not a full expiry after the restart; one that reconnects in
// time is kept. Timers: synctest.
func TestStoreSessionDeadlineSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newMemState()
		now := time.Now()
		for _, id := range []string{"gone", "back"} {
			rec, _ := json.Marshal(clientRecord{Client: storage.Client{ID: id, ProtocolVersion: 5,
				Properties: storage.ClientProperties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true}},
				DisconnectedAt: now.Add(-50 * time.Second).Unix(), Expiry: 60})
			sub, _ := json.Marshal(storage.Subscription{Client: id, Filter: "a/#", Qos: 1})
			st.Write(t.Context(), StateWrite{Kind: StateClients, Key: []byte(id), Value: rec},
				StateWrite{Kind: StateSubscriptions, Key: append(clientPrefix(id), "a/#"...), Value: sub})
		}
		core, err := ingest.New(ingest.Options{Sink: message.SinkFunc(func(context.Context, *message.Message) error { return nil })})
		if err != nil {
			t.Fatal(err)
		}
		defer core.Close()
		s, err := New(Options{Ingest: core, Auth: message.AllowAll{}, Store: StoreOptions{State: st}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = s.Close(context.Background()) }()
		if _, ok := s.ms.Clients.Get("gone"); !ok || s.StoreStats().Sessions != 2 {
			t.Fatal("sessions not restored")
		}
		time.Sleep(9 * time.Second)
		synctest.Wait()
		if _, ok := s.ms.Clients.Get("gone"); !ok {
			t.Fatal("expired before its deadline")
		}
		// "back" reconnects before its deadline (as OnSessionEstablished
		// sees it): its deadline no longer applies.
		s.store.mu.Lock()
		delete(s.store.deadlines, "back")
		s.store.mu.Unlock()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if _, ok := s.ms.Clients.Get("gone"); ok {
			t.Fatal("not expired 1 s after its persisted deadline")
		}
		if _, ok := s.ms.Clients.Get("back"); !ok {
			t.Fatal("a session that came back was expired")
		}
		if st.count(StateClients) != 1 || st.count(StateSubscriptions) != 1 || s.StoreStats().ExpiredSessions != 1 {
			t.Fatalf("state after the expiry: %d sessions, %d subscriptions stored", st.count(StateClients), st.count(StateSubscriptions))
		}
	})
}
