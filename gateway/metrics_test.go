package gateway

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

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
	return sp, clk, MetricsOptions{GatewayID: "gw1", Version: "v1.2.3", Spool: sp, Ingress: ingress, Bridge: bridge, Now: clk.Now}
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

func TestRatesAndDrainETA(t *testing.T) {
	sp, clk, opts := testSources()
	m := NewMetrics(opts)
	if st := m.Status(); st.DrainETA != -1 || st.Rates.AckedPerSecond != 0 {
		t.Fatalf("first sample: %+v %v", st.Rates, st.DrainETA)
	}
	// 10 s later: 50 more accepted, 20 more acked, backlog 100.
	clk.Add(10 * time.Second)
	sp.set(func(s *spool.Stats) { s.Accepted += 50; s.Acked += 20; s.Messages = 100 })
	st := m.Status()
	if st.Rates.AcceptedPerSecond != 5 || st.Rates.AckedPerSecond != 2 || st.DrainETA != 50 {
		t.Fatalf("rates %+v eta %v, want 5/s, 2/s, 50s", st.Rates, st.DrainETA)
	}
	// Samples older than the window stop counting: 2 minutes of nothing.
	for range 12 {
		clk.Add(10 * time.Second)
		_ = m.Status()
	}
	if st := m.Status(); st.Rates.AckedPerSecond != 0 || st.DrainETA != -1 {
		t.Fatalf("idle: rates %+v eta %v", st.Rates, st.DrainETA)
	}
	// Empty backlog: ETA 0.
	sp.set(func(s *spool.Stats) { s.Messages = 0 })
	if st := m.Status(); st.DrainETA != 0 {
		t.Fatalf("empty: eta %v", st.DrainETA)
	}
	// Counters going backwards (spool reopened) restart the measurement.
	clk.Add(10 * time.Second)
	sp.set(func(s *spool.Stats) { s.Accepted, s.Acked, s.Messages = 1, 1, 5 })
	if st := m.Status(); st.Rates.AcceptedPerSecond != 0 || st.DrainETA != -1 {
		t.Fatalf("after reset: rates %+v eta %v", st.Rates, st.DrainETA)
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
