package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ferrymq/ferry/spool"
)

type fakeSpool struct {
	mu sync.Mutex
	s  spool.Stats
}

func (f *fakeSpool) Stats() spool.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.s
}

func (f *fakeSpool) set(fn func(*spool.Stats)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.s)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testSources() (*fakeSpool, *clock, MetricsOptions) {
	clk := &clock{t: t0}
	sp := &fakeSpool{}
	sp.set(func(s *spool.Stats) {
		s.Lanes[0] = spool.LaneStats{Messages: 2, Bytes: 200, Oldest: t0.Add(-30 * time.Second)}
		s.Lanes[5] = spool.LaneStats{Messages: 8, Bytes: 800, Oldest: t0.Add(-90 * time.Second)}
		s.Messages, s.Bytes, s.Leased = 10, 1000, 3
		s.DLQMessages, s.DLQBytes = 1, 77
		s.Retained, s.RetainedBytes = 4, 400
		s.DedupeEntries, s.Full, s.FileSize = 12, true, 1<<20
		s.Accepted, s.Duplicates, s.Acked, s.Nacked, s.DeadLettered, s.Rejected = 100, 5, 90, 7, 1, 2
		s.Dropped = [3]uint64{3, 0, 4}
		s.Commits, s.CommitOps, s.CommitTime, s.Syncs = 20, 100, 1500*time.Millisecond, 40
		s.CommitDurations[3], s.CommitDurations[7], s.CommitDurations[len(spool.CommitBuckets)] = 15, 4, 1
		s.DiskFull = true
		s.Salvage = &spool.SalvageReport{Kept: 990, Lost: 10, LostUnknown: true, Completed: t0.Add(-time.Hour), Damaged: "x.damaged", Cause: "c",
			StateKept: 40, StateLost: 2, StateDamaged: []string{"retained"}}
	})
	ingress := func() []IngressStats {
		return []IngressStats{
			{Protocol: "mqtt", Connected: 4, Rejected: map[string]uint64{"not_authorized": 2, "full": 1}},
			{Protocol: "stomp", Connected: 1},
		}
	}
	bridge := func() BridgeStats {
		return BridgeStats{
			Links: []LinkStats{
				{Partition: 0, State: LinkUp, Since: t0.Add(-time.Minute), InFlight: 3, Upstream: "tls://b:8883"},
				{Partition: 1, State: LinkBackoff, Since: t0.Add(-5 * time.Second)},
			},
			Reconnects: 6, Published: 95, Acked: 90, Resent: 4, Stalls: 1, DeadLettered: 1, Downstream: 2,
			Errors: map[string]uint64{"timeout": 3, "connect_refused": 2},
		}
	}
	routes := func() []RouteInfo {
		return []RouteInfo{{Name: "alarms", Match: "alarms/#", Priority: 0}, {Name: "local", Match: "local/#", LocalOnly: true},
			{Name: "sensors", Match: "sensors/#", Priority: 5}, {Name: "default", Priority: 5}}
	}
	return sp, clk, MetricsOptions{GatewayID: "gw1", Version: "v1.2.3", Spool: sp, Ingress: ingress, Bridge: bridge, Routes: routes,
		SpoolMaxBytes: 10000, SpoolMaxMessages: 1000, MaxRate: 500, Now: clk.Now,
		Logins: func() LoginStats {
			return LoginStats{Failures: map[string]uint64{"bad_credentials": 27, "throttled": 3}}
		}}
}

// gather returns every sample as "name{l1=v1,l2=v2}" → value.
func gather(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var ls []string
			for _, l := range mt.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			out[key] = value(mf.GetType(), mt)
		}
	}
	return out
}

func value(t dto.MetricType, m *dto.Metric) float64 {
	switch t {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return m.GetUntyped().GetValue()
}

func TestMetricsValues(t *testing.T) {
	_, clk, opts := testSources()
	m := NewMetrics(opts)
	clk.Add(10 * time.Second)
	m.ObserveMessageAge(250 * time.Millisecond)
	m.ObserveMessageAge(2 * time.Hour)
	for range 10 {
		m.ObserveAccepted("mqtt", 0)
	}
	for range 60 {
		m.ObserveAccepted("mqtt", 5)
	}
	for range 30 {
		m.ObserveAccepted("stomp", 5)
	}
	m.ObserveAccepted("stomp", 200)
	m.ObserveDuplicate("sensors", "json")
	m.ObserveDuplicate("sensors", "json")
	m.ObserveDuplicate("default", "retransmit")
	got := gather(t, m)
	want := map[string]float64{
		"ferry_build_info{gateway_id=gw1,version=v1.2.3}":                   1,
		"ferry_uptime_seconds":                                              10,
		"ferry_spool_depth_messages{lane=0}":                                2,
		"ferry_spool_depth_messages{lane=5}":                                8,
		"ferry_spool_depth_messages{lane=9}":                                0,
		"ferry_spool_depth_bytes{lane=5}":                                   800,
		"ferry_spool_lane_oldest_age_seconds{lane=0}":                       40,
		"ferry_spool_lane_oldest_age_seconds{lane=5}":                       100,
		"ferry_spool_lane_oldest_age_seconds{lane=1}":                       0,
		"ferry_spool_oldest_age_seconds":                                    100,
		"ferry_spool_leased_messages":                                       3,
		"ferry_spool_dlq_messages":                                          1,
		"ferry_spool_dlq_bytes":                                             77,
		"ferry_spool_retained_messages":                                     4,
		"ferry_spool_retained_bytes":                                        400,
		"ferry_spool_dedupe_entries":                                        12,
		"ferry_spool_full":                                                  1,
		"ferry_spool_file_size_bytes":                                       1 << 20,
		"ferry_spool_stored_bytes":                                          1000 + 77 + 400,
		"ferry_spool_max_bytes":                                             10000,
		"ferry_spool_max_messages":                                          1000,
		"ferry_ingress_duplicates_total{reason=json,route=sensors}":         2,
		"ferry_ingress_duplicates_total{reason=retransmit,route=default}":   1,
		"ferry_spool_accepted_total":                                        100,
		"ferry_spool_duplicates_total":                                      5,
		"ferry_spool_acked_total":                                           90,
		"ferry_spool_nacked_total":                                          7,
		"ferry_spool_dead_lettered_total":                                   1,
		"ferry_spool_rejected_total":                                        2,
		"ferry_spool_dropped_total{reason=expired}":                         3,
		"ferry_spool_dropped_total{reason=drop_oldest}":                     0,
		"ferry_spool_dropped_total{reason=drop_lowest_priority}":            4,
		"ferry_spool_commits_total":                                         20,
		"ferry_spool_commit_ops_total":                                      100,
		"ferry_spool_commit_seconds_total":                                  1.5,
		"ferry_spool_syncs_total":                                           40,
		"ferry_spool_commit_duration_seconds":                               20,
		"ferry_spool_disk_full":                                             1,
		"ferry_spool_failed":                                                0,
		"ferry_spool_salvage_timestamp_seconds":                             float64(t0.Add(-time.Hour).Unix()),
		"ferry_spool_salvage_kept_messages":                                 990,
		"ferry_spool_salvage_lost_messages":                                 10,
		"ferry_spool_salvage_lost_unknown":                                  1,
		"ferry_spool_salvage_kept_state_records":                            40,
		"ferry_spool_salvage_lost_state_records":                            2,
		"ferry_spool_salvage_state_damaged{kind=retained}":                  1,
		"ferry_spool_salvage_state_damaged{kind=clients}":                   0,
		"ferry_spool_salvage_state_damaged{kind=subscriptions}":             0,
		"ferry_spool_salvage_state_damaged{kind=inflight}":                  0,
		"ferry_ingress_connected_clients{protocol=mqtt}":                    4,
		"ferry_ingress_connected_clients{protocol=stomp}":                   1,
		"ferry_ingress_accepted_total{lane=5,protocol=mqtt}":                60,
		"ferry_ingress_accepted_total{lane=0,protocol=mqtt}":                10,
		"ferry_ingress_accepted_total{lane=5,protocol=stomp}":               30,
		"ferry_ingress_rejected_total{protocol=mqtt,reason=not_authorized}": 2,
		"ferry_ingress_accepted_total{lane=invalid,protocol=stomp}":         1,
		"ferry_ingress_rejected_total{protocol=mqtt,reason=full}":           1,
		"ferry_bridge_link_state{partition=0,state=up}":                     1,
		"ferry_bridge_link_state{partition=0,state=down}":                   0,
		"ferry_bridge_link_state{partition=1,state=backoff}":                1,
		"ferry_bridge_link_state{partition=1,state=up}":                     0,
		"ferry_bridge_link_state_since_seconds{partition=0}":                70,
		"ferry_bridge_in_flight_messages{partition=0}":                      3,
		"ferry_bridge_reconnects_total":                                     6,
		"ferry_bridge_published_total":                                      95,
		"ferry_bridge_acked_total":                                          90,
		"ferry_bridge_resent_total":                                         4,
		"ferry_bridge_stalls_total":                                         1,
		"ferry_bridge_dead_lettered_total":                                  1,
		"ferry_bridge_downstream_received_total":                            2,
		"ferry_bridge_upstream_errors_total{reason=timeout}":                3,
		"ferry_bridge_upstream_errors_total{reason=connect_refused}":        2,
		"ferry_bridge_drain_eta_seconds":                                    -1, // first sample: no rate yet
		"ferry_message_age_seconds":                                         2,
	}
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("missing %s", k)
			continue
		}
		if g != v {
			t.Errorf("%s = %g, want %g", k, g, v)
		}
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("Go runtime metrics missing")
	}
}

func TestMetricsWithoutSources(t *testing.T) {
	m := NewMetrics(MetricsOptions{})
	got := gather(t, m)
	for k := range got {
		if strings.HasPrefix(k, "ferry_spool") || strings.HasPrefix(k, "ferry_bridge") || strings.HasPrefix(k, "ferry_ingress") {
			t.Errorf("%s exported without a source", k)
		}
	}
	st := m.Status()
	if st.Spool != nil || st.Link.State != "none" {
		t.Errorf("status without sources: %+v", st)
	}
}

func TestSummarizeLinks(t *testing.T) {
	l := func(states ...string) []LinkStats {
		var out []LinkStats
		for i, s := range states {
			out = append(out, LinkStats{Partition: i, State: s})
		}
		return out
	}
	tests := []struct {
		links []LinkStats
		want  string
	}{
		{nil, LinkDown},
		{l(LinkUp), LinkUp},
		{l(LinkUp, LinkUp), LinkUp},
		{l(LinkUp, LinkBackoff), "partial"},
		{l(LinkConnecting, LinkStalled, LinkBackoff), LinkStalled},
		{l(LinkConnecting), LinkConnecting},
	}
	for _, tt := range tests {
		if got := summarizeLinks(tt.links); got != tt.want {
			t.Errorf("summarizeLinks(%v) = %q, want %q", tt.links, got, tt.want)
		}
	}
}

func get(t *testing.T, h http.Handler, path string) (int, http.Header, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

func TestHTTPEndpoints(t *testing.T) {
	_, _, opts := testSources()
	m := NewMetrics(opts)
	var mu sync.Mutex
	notReady := errors.New("listeners not started")
	h := NewHTTPHandler(HTTPOptions{Metrics: m, Ready: func() error { mu.Lock(); defer mu.Unlock(); return notReady }})

	code, _, body := get(t, h, "/healthz")
	if code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, _, body = get(t, h, "/readyz")
	if code != 503 || !strings.Contains(body, "listeners not started") || !strings.Contains(body, "link: partial") {
		t.Errorf("/readyz before start = %d %q", code, body)
	}
	code, _, body = get(t, h, "/api/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != 200 {
		t.Fatalf("/api/status = %d %v %s", code, err, body)
	}
	if st.Ready || st.NotReady != "listeners not started" {
		t.Errorf("status ready = %v %q", st.Ready, st.NotReady)
	}

	mu.Lock()
	notReady = nil
	mu.Unlock()
	code, _, body = get(t, h, "/readyz")
	if code != 200 || body != "ready\nlink: partial\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}

	code, hdr, body := get(t, h, "/api/status")
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("/api/status = %d %s", code, hdr.Get("Content-Type"))
	}
	if _, _, compact := get(t, h, "/api/status?compact"); strings.Count(compact, "\n") != 1 || !strings.Contains(body, "\n  \"gateway_id\"") {
		t.Errorf("/api/status?compact is not one line, or /api/status not indented: %.200s", compact)
	}
	st = Status{}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.GatewayID != "gw1" || st.Version != "v1.2.3" || st.Link.State != "partial" ||
		len(st.Link.Partitions) != 2 || st.Link.InFlight != 3 || st.Link.Errors["timeout"] != 3 ||
		st.Spool == nil || st.Spool.Messages != 10 || st.Spool.DLQMessages != 1 || st.Spool.OldestAgeSeconds != 90 ||
		len(st.Spool.Lanes) != spool.Lanes || st.Spool.Lanes[5].Messages != 8 || st.Spool.Dropped["expired"] != 3 ||
		st.Clients["mqtt"] != 4 || st.Clients["stomp"] != 1 {
		t.Errorf("status = %s", body)
	}
	for _, key := range []string{`"link"`, `"state"`, `"lanes"`, `"dlq_messages"`, `"oldest_age_seconds"`, `"rates"`, `"drain_eta_seconds"`, `"clients"`} {
		if !strings.Contains(body, key) {
			t.Errorf("status JSON lacks %s", key)
		}
	}

	code, hdr, body = get(t, h, "/")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(body, "api/status") {
		t.Errorf("/ = %d %s", code, hdr.Get("Content-Type"))
	}
	// Self-contained: no external scripts, styles, images or fonts.
	if regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).MatchString(body) || strings.Contains(body, "@import") {
		t.Error("status page references external assets")
	}
	if code, _, _ := get(t, h, "/nope"); code != 404 {
		t.Errorf("/nope = %d", code)
	}

	code, hdr, body = get(t, h, "/metrics")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics = %d %s", code, hdr.Get("Content-Type"))
	}
	for _, name := range []string{"ferry_spool_depth_messages{lane=\"5\"} 8", "ferry_bridge_link_state{partition=\"0\",state=\"up\"} 1", "ferry_message_age_seconds_bucket"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestMetricsDoc checks that docs/metrics.md and the code name the same
// ferry_ metrics.
func TestMetricsDoc(t *testing.T) {
	data, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, n := range regexp.MustCompile("`(ferry_[a-z0-9_]+)`").FindAllStringSubmatch(string(data), -1) {
		documented[n[1]] = true
	}
	_, _, opts := testSources()
	m := NewMetrics(opts)
	m.ObserveAccepted("mqtt", 1)
	m.ObserveDuplicate("default", "retransmit")
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	exported := map[string]bool{}
	for _, mf := range mfs {
		if n := mf.GetName(); strings.HasPrefix(n, "ferry_") {
			exported[n] = true
			if !documented[n] {
				missing = append(missing, n)
			}
		}
	}
	// The local state's collector is registered by the gateway (it needs
	// the MQTT server): its names from its descriptions.
	descs := make(chan *prometheus.Desc, 64)
	stateCollector{}.Describe(descs)
	upstreamCollector{}.Describe(descs) // registered by the gateway too
	close(descs)
	for d := range descs {
		n := regexp.MustCompile(`fqName: "([a-z0-9_]+)"`).FindStringSubmatch(d.String())[1]
		exported[n] = true
		if !documented[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	for _, n := range missing {
		t.Errorf("%s is not in docs/metrics.md", n)
	}
	for n := range documented {
		if !exported[n] {
			t.Errorf("docs/metrics.md names %s, which is not exported", n)
		}
	}
}

func TestNewHTTPServerTimeouts(t *testing.T) {
	s := NewHTTPServer("127.0.0.1:0", http.NotFoundHandler(), nil)
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Fatalf("server without limits: %+v", s)
	}
}

// TestStatusForOperators: the parts of /api/status the page shows beyond
// the counts: spool use against its caps, routes on their lanes,
// duplicates by route and reason, refusals by reason, drain pacing and the
// salvage report (whatever fields the spool's report has).
func TestStatusForOperators(t *testing.T) {
	_, clk, opts := testSources()
	// A real salvage, whatever fields the spool's report has.
	path := filepath.Join(t.TempDir(), "spool.db")
	damagedSpool(t, path, 7)
	damaged, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer damaged.Close()
	if opts.Salvage = damaged.Salvaged(); opts.Salvage == nil {
		t.Fatal("the damaged spool was not salvaged")
	}
	m := NewMetrics(opts)
	clk.Add(time.Second)
	m.ObserveDuplicate("sensors", "json")
	m.ObserveDuplicate("alarms", "retransmit")
	m.ObserveDuplicate("sensors", "json")
	_, _, body := get(t, NewHTTPHandler(HTTPOptions{Metrics: m}), "/api/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	sp := st.Spool
	// 1477 stored bytes of 10000 is nearer its cap than 10 of 1000 messages.
	if sp.StoredBytes != 1477 || sp.MaxBytes != 10000 || sp.MaxMessages != 1000 || sp.UsedPercent != 14.8 || sp.FileSize != 1<<20 {
		t.Errorf("spool use: stored %d of %d, %d max messages, %v%%, file %d", sp.StoredBytes, sp.MaxBytes, sp.MaxMessages, sp.UsedPercent, sp.FileSize)
	}
	if !strings.Contains(body, `"file_size_bytes": 1048576`) {
		t.Error("the file size is not file_size_bytes")
	}
	if got := fmt.Sprint(sp.Lanes[0].Routes, sp.Lanes[5].Routes, sp.Lanes[1].Routes); got != "[alarms] [sensors default] []" {
		t.Errorf("routes on lanes 0, 5, 1: %s", got)
	}
	if got := fmt.Sprint(st.Duplicates); got != "[{alarms retransmit 1} {sensors json 2}]" {
		t.Errorf("duplicates %s", got)
	}
	if len(st.Ingress) != 2 || st.Ingress[0].Protocol != "mqtt" || st.Ingress[0].Refused["not_authorized"] != 2 || st.Ingress[0].Refused["full"] != 1 || st.Ingress[0].Connected != 4 {
		t.Errorf("ingress %+v", st.Ingress)
	}
	if st.Link.MaxRate.MessagesPerSecond != 500 || st.Link.MaxRate.BytesPerSecond != 0 {
		t.Errorf("pacing %+v", st.Link.MaxRate)
	}
	want := map[string]any{"damaged": opts.Salvage.Damaged, "kept": 7.0, "summary": fmt.Sprint(opts.Salvage),
		"completed": opts.Salvage.Completed.Format(time.RFC3339Nano)}
	for k, v := range want {
		if st.Salvage[k] != v {
			t.Errorf("salvage[%s] = %#v, want %#v (all: %v)", k, st.Salvage[k], v, st.Salvage)
		}
	}
	if c, _ := st.Salvage["cause"].(string); !strings.Contains(c, "meta") {
		t.Errorf("salvage cause %#v: want the text of the cause", st.Salvage["cause"])
	}

	opts.Salvage, opts.SpoolMaxBytes, opts.SpoolMaxMessages = nil, 0, 0
	_, _, body = get(t, NewHTTPHandler(HTTPOptions{Metrics: NewMetrics(opts)}), "/api/status")
	st = Status{}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if st.Spool.UsedPercent != -1 || strings.Contains(body, `"salvage"`) || strings.Contains(body, `"max_rate": {}`) {
		t.Errorf("without caps or salvage: %v%%, body %s", st.Spool.UsedPercent, body)
	}
}

func TestSnakeCase(t *testing.T) {
	for in, want := range map[string]string{"Kept": "kept", "RawScan": "raw_scan", "DLQKept": "dlq_kept", "MovedTo": "moved_to", "ID": "id", "LostIDs": "lost_ids"} {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}
