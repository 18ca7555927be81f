package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

func TestPayloadRoundTrip(t *testing.T) {
	s := stamp{run: 7, pub: 63, seq: 1<<40 + 5, sent: 1234567 * time.Microsecond}
	b := encodePayload(s)
	if len(b) != payloadSize {
		t.Fatalf("payload is %d bytes, want %d", len(b), payloadSize)
	}
	if got, ok := decodePayload(b); !ok || got != s {
		t.Fatalf("decode(encode(%+v)) = %+v, %v", s, got, ok)
	}
	// A Ferry envelope (bridge.format: envelope) carries the binary payload
	// base64 encoded.
	env, err := json.Marshal(map[string]any{
		"id": "01H", "type": "mqtt", "payload": base64.StdEncoding.EncodeToString(b), "encoding": "base64",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := decodePayload(env); !ok || got != s {
		t.Fatalf("decode(envelope) = %+v, %v", got, ok)
	}
	for name, bad := range map[string][]byte{
		"empty": nil, "probe": []byte("probe"), "short": b[:100], "wrong magic": append([]byte("xxxx"), b[4:]...),
		"envelope without base64": []byte(`{"id":"1","payload":{"a":1}}`), "broken json": []byte(`{"payload":`),
	} {
		if _, ok := decodePayload(bad); ok {
			t.Errorf("%s: decoded as a benchmark payload", name)
		}
	}
}

func TestTrackerCountsLossDuplicatesAndOrder(t *testing.T) {
	clk := newClock()
	tr := newTracker(clk, 1, 2, 4)
	msg := func(run, pub uint32, seq uint64) []byte {
		return encodePayload(stamp{run: run, pub: pub, seq: seq, sent: time.Duration(seq) * time.Millisecond})
	}
	at := func(ms int) time.Duration { return time.Duration(ms) * time.Millisecond }
	tr.arrive("sites/edge/bench/p0", msg(1, 0, 0), at(10))
	tr.arrive("sites/edge/bench/p0", msg(1, 0, 2), at(12))
	tr.arrive("sites/edge/bench/p0", msg(1, 0, 1), at(13)) // behind #2 of its topic: an order violation
	tr.arrive("sites/edge/bench/p0", msg(1, 0, 1), at(14)) // again: a duplicate
	tr.arrive("sites/edge/bench/p1", msg(1, 1, 0), at(15))
	tr.arrive("sites/edge/bench/p1", msg(2, 1, 1), at(16))  // another run
	tr.arrive("sites/edge/bench/p1", msg(1, 5, 0), at(16))  // no such publisher
	tr.arrive("sites/edge/bench/p1", msg(1, 1, 99), at(16)) // beyond the count
	tr.arrive("sites/edge/bench/probe", []byte("probe"), at(17))
	if tr.complete() {
		t.Fatal("complete before the acknowledged set is known")
	}
	// Acknowledged: p0 #0–#3 and p1 #0–#1; of those, p0 #3 and p1 #1 are
	// still missing.
	tr.setAcked([][]bool{{true, true, true, true}, {true, true, false, false}})
	if tr.complete() {
		t.Fatal("complete with two acknowledged messages missing")
	}
	tr.arrive("sites/edge/bench/p1", msg(1, 1, 1), at(20))
	tr.arrive("sites/edge/bench/p0", msg(1, 0, 3), at(25)) // completes the set
	if !tr.complete() {
		t.Fatal("not complete after every acknowledged message arrived")
	}
	tr.arrive("sites/edge/bench/p1", msg(1, 1, 3), at(30)) // not acknowledged: counted as arrived, not as completing
	a := tr.snapshot()
	want := arrivals{Unique: 7, Duplicates: 1, OrderViolations: 1, Foreign: 3, Acked: 6, ArrivedAcked: 6, First: at(10), Last: at(25)}
	a.Latencies = nil
	if a.Unique != want.Unique || a.Duplicates != want.Duplicates || a.OrderViolations != want.OrderViolations ||
		a.Foreign != want.Foreign || a.Acked != want.Acked || a.ArrivedAcked != want.ArrivedAcked ||
		a.First != want.First || a.Last != want.Last || a.Lost() != 0 {
		t.Fatalf("snapshot = %+v, want %+v", a, want)
	}
	if tr.probeCount() != 1 {
		t.Errorf("probes = %d, want 1", tr.probeCount())
	}

	// Lost: acknowledged and never arrived.
	tr2 := newTracker(clk, 1, 1, 3)
	tr2.arrive("t", msg(1, 0, 0), at(1))
	tr2.setAcked([][]bool{{true, true, true}})
	if got := tr2.snapshot().Lost(); got != 2 {
		t.Errorf("lost = %d, want 2", got)
	}

	// The last publisher may have a smaller share than the others: a
	// number beyond what it sent is counted, not a crash.
	tr3 := newTracker(clk, 1, 1, 4)
	tr3.setAcked([][]bool{{true, true}})
	tr3.arrive("t", msg(1, 0, 3), at(1))
	if a := tr3.snapshot(); a.Unique != 1 || a.ArrivedAcked != 0 || a.Lost() != 2 {
		t.Errorf("short share: %+v", a)
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i))
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0.1, 1}} {
		if got := percentile(s, tc.p); got != tc.want {
			t.Errorf("p%g = %d, want %d", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %d", got)
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("p99 of one = %d", got)
	}
}

func TestParseStatCPU(t *testing.T) {
	// utime 250 and stime 50 ticks; the command name has spaces and a ')'.
	line := "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 123 0 0"
	got, err := parseStatCPU(line)
	if err != nil || got != 3*time.Second {
		t.Fatalf("parseStatCPU = %v, %v; want 3s", got, err)
	}
	for _, bad := range []string{"", "4242 (x) S 1 2", "4242 (x) S 1 2 3 4 5 6 7 8 9 x y 0"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q): no error", bad)
		}
	}
	self, err := procCPU(syscall.Getpid())
	if err != nil || self < 0 {
		t.Errorf("own CPU time: %v, %v", self, err)
	}
}

func TestSettingsFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	s, err := settingsFromEnv(env())
	if err != nil || s.Quick || s.Full || s.Runs != 3 || s.Window != 64 || len(s.BacklogCounts) != 1 {
		t.Fatalf("defaults: %+v, %v", s, err)
	}
	s, _ = settingsFromEnv(env("BENCH_QUICK", "1", "BENCH_FULL", "1"))
	if !s.Quick || s.Full || s.Runs != 1 || s.BacklogCounts[0] >= 100_000 {
		t.Errorf("quick wins over full: %+v", s)
	}
	s, _ = settingsFromEnv(env("BENCH_FULL", "1", "BENCH_RUNS", "2", "BENCH_WINDOW", "256", "BENCH_FERRY_FORMAT", "envelope"))
	if !s.Full || s.Runs != 2 || s.Window != 256 || s.FerryFormat != "envelope" || s.BacklogCounts[len(s.BacklogCounts)-1] != 1_000_000 {
		t.Errorf("full: %+v", s)
	}
	for _, kv := range [][]string{
		{"BENCH_RUNS", "0"}, {"BENCH_RUNS", "three"}, {"BENCH_WINDOW", "70000"}, {"BENCH_PARTITIONS", "-1"},
		{"BENCH_FERRY_FORMAT", "json"},
	} {
		if _, err := settingsFromEnv(env(kv...)); err == nil || !strings.Contains(err.Error(), kv[0]) {
			t.Errorf("%s=%s: error %v, want one naming the variable", kv[0], kv[1], err)
		}
	}
}

func TestScenariosAreBoundedAndCoverBothSystems(t *testing.T) {
	full, _ := settingsFromEnv(func(k string) string { return map[string]string{"BENCH_FULL": "1"}[k] })
	for _, s := range []settings{quickSettings(), defaultSettings(), full} {
		ids := map[string]bool{}
		for _, sc := range scenarios(s) {
			if ids[sc.ID] {
				t.Errorf("duplicate scenario id %s", sc.ID)
			}
			ids[sc.ID] = true
			if sc.Count <= 0 || sc.SendFor <= 0 || sc.Runs <= 0 || sc.Publishers <= 0 {
				t.Errorf("%s: unbounded or empty: %+v", sc.ID, sc)
			}
			if (sc.Kind == kindBacklog || sc.Kind == kindDrain) && sc.DrainFor <= 0 {
				t.Errorf("%s: drain not bounded", sc.ID)
			}
			if sc.perPublisher()*sc.Publishers < sc.Count {
				t.Errorf("%s: %d publishers × %d < %d", sc.ID, sc.Publishers, sc.perPublisher(), sc.Count)
			}
			var ferry, mosq bool
			for _, sys := range sc.Systems {
				ferry = ferry || sys.Kind == kindFerry
				mosq = mosq || sys.Key == sysMosquitto.Key
			}
			if !ferry || !mosq {
				t.Errorf("%s: systems %v", sc.ID, sc.Systems)
			}
		}
		for _, id := range []string{"linkup-1", "linkup-8", "linkup-64", "fixed-2000", "offline-8"} {
			if !ids[id] {
				t.Errorf("quick=%v full=%v: no scenario %s", s.Quick, s.Full, id)
			}
		}
		if want := "drain-kinds-" + countLabel(s.BacklogCounts[0]); !ids[want] {
			t.Errorf("quick=%v full=%v: no scenario %s", s.Quick, s.Full, want)
		}
		if got := ids["backlog-1M"]; got != s.Full {
			t.Errorf("quick=%v full=%v: backlog-1M present = %v", s.Quick, s.Full, got)
		}
	}
	for _, sc := range scenarios(defaultSettings()) {
		if sc.Kind == kindBacklog && len(sc.Systems) != 3 {
			t.Errorf("%s: want Ferry with partitions as a third system, got %v", sc.ID, sc.Systems)
		}
	}
}

// TestDrainKindsCoverEveryUpstream: the drain per upstream kind runs Ferry
// against each kind once and Mosquitto's 3.1.1 bridge as the reference,
// on the same backlog as the first store-and-forward scenario.
func TestDrainKindsCoverEveryUpstream(t *testing.T) {
	for _, s := range []settings{quickSettings(), defaultSettings()} {
		var drain []scenario
		for _, sc := range scenarios(s) {
			if sc.Kind == kindDrain {
				drain = append(drain, sc)
			}
		}
		if len(drain) != 1 {
			t.Fatalf("quick=%v: %d drain per upstream kind scenarios, want 1", s.Quick, len(drain))
		}
		sc := drain[0]
		if sc.Count != s.BacklogCounts[0] {
			t.Errorf("quick=%v: backlog %d, want the store-and-forward one, %d", s.Quick, sc.Count, s.BacklogCounts[0])
		}
		kinds := map[string]bool{}
		var mosq bool
		for _, sys := range sc.Systems {
			switch sys.Kind {
			case kindFerry:
				kinds[sys.Upstream] = true
			case kindMosquitto:
				mosq = sys.Upstream == "" || sys.Upstream == upstreamMQTT311
			}
		}
		for _, k := range []string{upstreamMQTT311, upstreamMQTT5, upstreamJetStream} {
			if !kinds[k] {
				t.Errorf("quick=%v: no Ferry run against %s: %v", s.Quick, k, sc.Systems)
			}
		}
		if !mosq || len(sc.Systems) != 4 {
			t.Errorf("quick=%v: want the three Ferry kinds and Mosquitto 3.1.1: %v", s.Quick, sc.Systems)
		}
		if !needsNATS([]scenario{sc}) {
			t.Errorf("quick=%v: JetStream run without nats-server", s.Quick)
		}
	}
	for _, sc := range scenarios(defaultSettings()) {
		if sc.Kind != kindDrain && needsNATS([]scenario{sc}) {
			t.Errorf("%s needs nats-server", sc.ID)
		}
	}
}

// TestCheckDrain: a drain passes only with the whole backlog acknowledged,
// every acknowledged message arrived, no order violation, nothing foreign,
// and for JetStream a stream that holds what the consumer read.
func TestCheckDrain(t *testing.T) {
	sc := scenario{ID: "drain-kinds-5k", Kind: kindDrain, Count: 100}
	good := arrivals{Unique: 100, Acked: 100, ArrivedAcked: 100, Duplicates: 2}
	stored := func(n uint64, err error) *farEnd {
		return &farEnd{stored: func(context.Context) (uint64, error) { return n, err }}
	}
	for name, tc := range map[string]struct {
		acked float64
		a     arrivals
		far   *farEnd
		want  string // "" passes
	}{
		"mqtt, all there, duplicates allowed": {100, good, &farEnd{}, ""},
		"jetstream, stream matches":           {100, good, stored(102, nil), ""},
		"backlog incomplete":                  {90, arrivals{Unique: 90, Acked: 90, ArrivedAcked: 90}, &farEnd{}, "backlog incomplete: 90 of 100"},
		"lost":                                {100, arrivals{Unique: 97, Acked: 100, ArrivedAcked: 97}, &farEnd{}, "3 acknowledged messages never arrived"},
		"reordered":                           {100, arrivals{Unique: 100, Acked: 100, ArrivedAcked: 100, OrderViolations: 1}, &farEnd{}, "1 order violations"},
		"foreign":                             {100, arrivals{Unique: 100, Acked: 100, ArrivedAcked: 100, Foreign: 4}, &farEnd{}, "4 messages of no publisher"},
		"stream holds more than read":         {100, good, stored(150, nil), "the stream holds 150 messages, the consumer read 102"},
		"stream info fails":                   {100, good, stored(0, errors.New("timeout")), "stream info: timeout"},
	} {
		t.Run(name, func(t *testing.T) {
			f := map[string]float64{"acked": tc.acked}
			err := checkDrain(context.Background(), sc, f, tc.a, tc.far)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

func TestFerryConfigPerUpstreamKind(t *testing.T) {
	e := edgeEnv{dir: "/run", port: 18830, uplink: "127.0.0.1:18831", window: 64}
	for kind, want := range map[string][]string{
		"":                {"upstream: tcp://127.0.0.1:18831\n", "protocol: 4\n"},
		upstreamMQTT311:   {"upstream: tcp://127.0.0.1:18831\n", "protocol: 4\n"},
		upstreamMQTT5:     {"upstream: tcp://127.0.0.1:18831\n", "protocol: 5\n"},
		upstreamJetStream: {"upstream: nats://127.0.0.1:18831\n", "jetstream:\n    stream: " + jetStreamName + "\n"},
	} {
		e.upstream = kind
		conf := ferryConfig(e, 1, "raw")
		for _, w := range want {
			if !strings.Contains(conf, w) {
				t.Errorf("upstream %q: config lacks %q:\n%s", kind, w, conf)
			}
		}
	}
}

func TestRotateAlternatesTheSystems(t *testing.T) {
	sys := []system{sysFerry, sysMosquitto, sysFerryPartitions(4)}
	first := map[string]int{}
	for rep := range 3 {
		o := rotate(sys, rep)
		if len(o) != 3 {
			t.Fatalf("rotate dropped systems: %v", o)
		}
		first[o[0].Key]++
	}
	if len(first) != 3 {
		t.Errorf("each system should go first once in three repetitions: %v", first)
	}
	if got := rotate(sys[:2], 1); got[0].Key != sysMosquitto.Key || got[1].Key != sysFerry.Key {
		t.Errorf("rotate(ferry, mosquitto; 1) = %v", got)
	}
}

func TestSummaryTableAndRatios(t *testing.T) {
	sc := scenario{ID: "linkup-1", Title: "link up, max rate, 1 publisher", Kind: kindLinkUp, Runs: 3,
		Systems: []system{sysFerry, sysMosquitto}}
	res := []runResult{
		{System: "ferry", Figures: map[string]float64{"e2e_msgs_per_s": 900, "p50_ms": 60, "lost": 0}},
		{System: "mosquitto", Figures: map[string]float64{"e2e_msgs_per_s": 12000, "p50_ms": 3, "lost": 1}},
		{System: "mosquitto", Figures: map[string]float64{"e2e_msgs_per_s": 10000, "p50_ms": 4, "lost": 2}},
		{System: "ferry", Figures: map[string]float64{"e2e_msgs_per_s": 1100, "p50_ms": 50, "lost": 0}},
		{System: "ferry", Figures: map[string]float64{"e2e_msgs_per_s": 1}, Error: "edge exited"},
		{System: "mosquitto", Figures: map[string]float64{"e2e_msgs_per_s": 11000, "p50_ms": 5, "lost": 0}},
	}
	r := summariseScenario(sc, res)
	if st := r.Summary["ferry"]["e2e_msgs_per_s"]; st.N != 2 || st.Median != 1000 || st.Min != 900 || st.Max != 1100 {
		t.Errorf("ferry summary (the failed run left out) = %+v", st)
	}
	if got := r.Ratios["ferry"]["e2e_msgs_per_s"]; got < 0.0909 || got > 0.0910 {
		t.Errorf("ratio = %v, want 1000/11000", got)
	}
	md := report{Scenarios: []scenarioResult{r}, Settings: defaultSettings(), Errors: 1}.markdown()
	for _, want := range []string{
		"| scenario | figure | Ferry | Mosquitto | Ferry/Mosquitto |",
		"| link up, max rate, 1 publisher | end-to-end msg/s | 1,000 (900–1,100) | 11,000 (10,000–12,000) | 0.09× |",
		"| link up, max rate, 1 publisher | lost / duplicates / order violations | 0 / 0 / 0 | 3 / 0 / 0 | — |",
		"1 run(s) failed",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
	// A scenario with fewer runs than the others (the 1M backlog) says so.
	few := sc
	few.Runs = 1
	if md := (report{Scenarios: []scenarioResult{summariseScenario(few, res[:2])}, Settings: defaultSettings()}).markdown(); !strings.Contains(md, "| link up, max rate, 1 publisher (1 run) |") {
		t.Errorf("run count of a shorter scenario not shown:\n%s", md)
	}
	// A system without a single good run shows as an error, not as zero.
	r = summariseScenario(sc, res[1:3])
	if md := (report{Scenarios: []scenarioResult{r}}).markdown(); !strings.Contains(md, "| end-to-end msg/s | error |") {
		t.Errorf("missing Ferry results not shown as error:\n%s", md)
	}
}

func TestNum(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		dec  int
		want string
	}{{0, 0, "0"}, {999, 0, "999"}, {1000, 0, "1,000"}, {1234567.891, 2, "1,234,567.89"}, {-12345, 0, "-12,345"}, {0.05, 2, "0.05"}} {
		if got := num(tc.v, tc.dec); got != tc.want {
			t.Errorf("num(%v, %d) = %q, want %q", tc.v, tc.dec, got, tc.want)
		}
	}
}

// TestUplinkSwitch: down, a connection is reset and counted; up, bytes go
// through to the target; down again, the forwarded connection is reset.
func TestUplinkSwitch(t *testing.T) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = target.Close() }()
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	u, err := newUplink(target.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = u.close() }()

	readErr := func(c net.Conn) error {
		_ = c.SetReadDeadline(time.Now().Add(testkit.Timeout(10 * time.Second)))
		_, err := c.Read(make([]byte, 1))
		return err
	}
	// The reset may come before the dial completes, or at the first read.
	if c, err := net.Dial("tcp", u.addr()); err == nil {
		if err := readErr(c); err == nil || isTimeout(err) {
			t.Fatalf("down: read = %v, want the connection reset", err)
		}
		_ = c.Close()
	}
	testkit.WaitUntil(t, 10*time.Second, "the attempt to be counted", func() bool { return u.connectAttempts() == 1 })

	u.setUp(true)
	c, err := net.Dial("tcp", u.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(testkit.Timeout(10 * time.Second)))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("up: echo = %q, %v", got, err)
	}
	u.setUp(false)
	if err := readErr(c); err == nil || isTimeout(err) {
		t.Fatalf("down again: read = %v, want the forwarded connection closed", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestParseFerryVersion(t *testing.T) {
	for in, want := range map[string]string{
		"ferry 29f8c3b\n  commit        29f8c3bd301b\n  built         2026-12-03T11:27:01Z\n": "29f8c3b",
		"ferry v1.2.0\n": "v1.2.0",
		"":               "unknown",
		"ferry \n":       "unknown",
	} {
		if got := parseFerryVersion(in); got != want {
			t.Errorf("parseFerryVersion(%q) = %q, want %q", in, got, want)
		}
	}
}
