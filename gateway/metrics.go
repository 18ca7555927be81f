package gateway

import (
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ferrymq/ferry/spool"
)

// SpoolStats is what the metrics read from the spool (*spool.Spool).
type SpoolStats interface {
	Stats() spool.Stats
}

// IngressStats is a snapshot of one ingress protocol, adapted by the wiring
// from the listener's own counters. Counters are totals since start.
// Accepted messages are counted by ObserveAccepted instead, in the sink,
// where the lane is known.
type IngressStats struct {
	Protocol  string            // "mqtt", "stomp"
	Connected int               // clients connected now
	Rejected  map[string]uint64 // refused messages and connections, by reason (not_authorized, full, quota, too_large, invalid_topic, malformed, timeout, ...)
	// LocalDropped counts messages not delivered to a local subscriber
	// whose queue was full (QoS 0); SlowConsumers the subscribers
	// disconnected for not keeping up.
	LocalDropped  uint64
	SlowConsumers uint64
	// PendingClosed counts connections closed before their login because
	// max_pending newer ones were waiting.
	PendingClosed uint64
}

// Link states of an upstream connection.
const (
	LinkConnecting = "connecting"
	LinkUp         = "up"
	LinkBackoff    = "backoff"
	LinkStalled    = "stalled"
	LinkDown       = "down"
)

// LinkStates lists the link states in the order of severity used to
// summarise several partitions (worst first).
var LinkStates = []string{LinkDown, LinkStalled, LinkBackoff, LinkConnecting, LinkUp}

// LinkStats is the state of one upstream connection (partition).
type LinkStats struct {
	Partition int       `json:"partition"`
	State     string    `json:"state"` // one of LinkStates
	Since     time.Time `json:"since"` // when State was entered
	InFlight  int       `json:"in_flight"`
	Upstream  string    `json:"upstream,omitempty"` // URL currently used
	// LastError is the last connection failure or cut, at LastErrorAt.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// BridgeStats is a snapshot of the bridge, adapted by the wiring from the
// bridge's own counters. Counters are totals since start.
type BridgeStats struct {
	Links        []LinkStats
	Reconnects   uint64
	Published    uint64            // publishes sent, resends included
	Acked        uint64            // acknowledged by the upstream
	Resent       uint64            // publishes of messages already sent once (after a cut)
	Stalls       uint64            // links declared stalled (no ack progress)
	DeadLettered uint64            // messages the bridge moved to the DLQ (poison, refused)
	Downstream   uint64            // messages received from upstream subscriptions
	Errors       map[string]uint64 // upstream errors by reason (connect_refused, tls, timeout, disconnect, ...)
}

// MetricsOptions are the data sources of the metrics and the status API.
// Any source may be nil: its metrics are left out.
type MetricsOptions struct {
	GatewayID string
	Version   string
	Spool     SpoolStats
	Ingress   func() []IngressStats
	Bridge    func() BridgeStats
	// Routes lists the routes, for the lanes they feed; nil: none shown.
	Routes func() []RouteInfo
	// SpoolMaxBytes and SpoolMaxMessages are the spool's caps
	// (spool.max_bytes, spool.max_messages); 0: no cap.
	SpoolMaxBytes    int64
	SpoolMaxMessages int64
	// MaxRate and MaxByteRate pace the drain (bridge.max_rate); 0: unpaced.
	MaxRate     float64
	MaxByteRate float64
	// Salvage is what the spool salvaged when it was opened (nil: it was
	// not damaged).
	Salvage *spool.SalvageReport
	// SampleEvery is the sampler's tick (Run); default DefaultSampleEvery.
	SampleEvery time.Duration
	Logins      func() LoginStats
	// Upstreams lists every upstream (main first) for the status; nil or
	// one entry: not shown.
	Upstreams func() []UpstreamStatus
	Now       func() time.Time // nil: time.Now
}

// Metrics owns the gateway's Prometheus registry (its own, not the global
// one) and the status snapshot the HTTP API serves. Gauges and counters are
// read from the sources at scrape time, so nothing has to be pushed except
// the message age histogram (ObserveMessageAge), accepted messages
// (ObserveAccepted) and duplicates (ObserveDuplicate). Rates, the drain
// ETA, the history and the outages come from the sampler (Run). Safe for
// concurrent use.
type Metrics struct {
	opts     MetricsOptions
	reg      *prometheus.Registry
	age      prometheus.Histogram
	accepted *prometheus.CounterVec
	started  time.Time

	mu   sync.Mutex
	smp  sampler
	dups map[dupKey]uint64
}

type dupKey struct{ route, reason string }

// RouteInfo is one route as the status page shows it on its lane.
type RouteInfo struct {
	Name      string
	Match     string // "" for the default route
	Priority  uint8  // the lane
	LocalOnly bool   // never spooled: feeds no lane
}

// MessageAgeBuckets are the buckets of ferry_message_age_seconds: from a
// few milliseconds (link up) to a day (a long outage drained).
var MessageAgeBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}

// NewMetrics registers the Ferry collectors, the Go runtime and the process
// collectors in a new registry.
func NewMetrics(opts MetricsOptions) *Metrics {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SampleEvery <= 0 {
		opts.SampleEvery = DefaultSampleEvery
	}
	m := &Metrics{
		opts: opts,
		dups: map[dupKey]uint64{},
		reg:  prometheus.NewRegistry(),
		age: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ferry_message_age_seconds",
			Help:    "Time from acceptance (ack to the device) to the upstream broker's acknowledgement.",
			Buckets: MessageAgeBuckets,
		}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_ingress_accepted_total",
			Help: "Messages accepted from devices (acknowledged, duplicates included), by protocol and lane.",
		}, []string{"protocol", "lane"}),
		started: opts.Now(),
	}
	m.reg.MustRegister(m.age, m.accepted, &collector{m: m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry, for /metrics and for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveMessageAge records one message's accept → upstream-ack latency.
// The wiring calls it from the bridge's ack path.
func (m *Metrics) ObserveMessageAge(d time.Duration) { m.age.Observe(d.Seconds()) }

// laneLabels avoids formatting a lane number per message.
var laneLabels = func() (l [spool.Lanes]string) {
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

// ObserveAccepted counts one message accepted from protocol p ("mqtt",
// "stomp": message.Protocol.String()) into lane. The wiring calls it from
// its message.Sink after Accept succeeded.
func (m *Metrics) ObserveAccepted(protocol string, lane uint8) {
	l := "invalid"
	if int(lane) < len(laneLabels) {
		l = laneLabels[lane]
	}
	m.accepted.WithLabelValues(protocol, l).Inc()
}

// ObserveDuplicate counts one message acknowledged but not stored again:
// its route, and reason, the route's dedupe source ("retransmit",
// "property", "json", "hash"). The wiring calls it from its message.Sink.
func (m *Metrics) ObserveDuplicate(route, reason string) {
	m.mu.Lock()
	m.dups[dupKey{route, reason}]++
	m.mu.Unlock()
}

// duplicates returns the duplicate counts sorted by route and reason.
func (m *Metrics) duplicates() []DuplicateCount {
	m.mu.Lock()
	out := make([]DuplicateCount, 0, len(m.dups))
	for k, n := range m.dups {
		out = append(out, DuplicateCount{Route: k.route, Reason: k.reason, Count: n})
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Route != out[j].Route {
			return out[i].Route < out[j].Route
		}
		return out[i].Reason < out[j].Reason
	})
	return out
}

// current returns the sampler's rates (rounded as shown) for now.
func (m *Metrics) current(now time.Time) Rates {
	m.mu.Lock()
	r := m.smp.rates(now)
	m.mu.Unlock()
	r.AcceptedPerSecond = roundTo(r.AcceptedPerSecond, 1)
	r.AckedPerSecond = roundTo(r.AckedPerSecond, 1)
	r.DrainPerSecond = roundTo(r.DrainPerSecond, 1)
	r.WindowSeconds = roundTo(r.WindowSeconds, 1)
	r.AckedWindowSeconds = roundTo(r.AckedWindowSeconds, 1)
	return r
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// Descriptions of the scrape-time metrics. docs/metrics.md lists them all;
// a test checks that the two agree.
var (
	dBuildInfo = desc("ferry_build_info", "Always 1; labels carry the version and gateway id.", "version", "gateway_id")
	dUptime    = desc("ferry_uptime_seconds", "Seconds since the gateway started.")

	dDepthMsgs     = desc("ferry_spool_depth_messages", "Messages queued in a lane (leased included).", "lane")
	dDepthBytes    = desc("ferry_spool_depth_bytes", "Bytes queued in a lane.", "lane")
	dLaneOldest    = desc("ferry_spool_lane_oldest_age_seconds", "Age of the oldest queued message of a lane; 0 when empty.", "lane")
	dOldest        = desc("ferry_spool_oldest_age_seconds", "Age of the oldest queued message (consumer lag); 0 when empty.")
	dLeased        = desc("ferry_spool_leased_messages", "Messages leased to the bridge and not yet acked or nacked.")
	dDLQMsgs       = desc("ferry_spool_dlq_messages", "Messages in the dead-letter queue.")
	dDLQBytes      = desc("ferry_spool_dlq_bytes", "Bytes in the dead-letter queue.")
	dRetainedMsgs  = desc("ferry_spool_retained_messages", "Delivered messages kept for replay.")
	dRetainedBytes = desc("ferry_spool_retained_bytes", "Bytes of delivered messages kept for replay.")
	dDedupe        = desc("ferry_spool_dedupe_entries", "Dedupe keys remembered.")
	dFull          = desc("ferry_spool_full", "1 when the last put hit a cap (max_bytes or max_messages).")
	dFileSize      = desc("ferry_spool_file_size_bytes", "Size of the spool file (bbolt's high-water mark), as the status page and ferry spool stats show it.")
	dStoredBytes   = desc("ferry_spool_stored_bytes", "Bytes counted against spool.max_bytes: queue, dead letters and retained messages.")
	dMaxBytes      = desc("ferry_spool_max_bytes", "spool.max_bytes (absent without a cap).")
	dMaxMessages   = desc("ferry_spool_max_messages", "spool.max_messages (absent without a cap).")
	dAccepted      = desc("ferry_spool_accepted_total", "Messages stored.")
	dDuplicates    = desc("ferry_spool_duplicates_total", "Messages not stored because their dedupe key was seen inside the window.")
	dAcked         = desc("ferry_spool_acked_total", "Messages removed after delivery (upstream ack).")
	dNacked        = desc("ferry_spool_nacked_total", "Deliveries returned to the queue (nack or lease expiry).")
	dDeadLettered  = desc("ferry_spool_dead_lettered_total", "Messages moved to the dead-letter queue.")
	dRejected      = desc("ferry_spool_rejected_total", "Puts refused because the spool was full.")
	dDropped       = desc("ferry_spool_dropped_total", "Messages deleted without delivery, by reason.", "reason")
	dCommits       = desc("ferry_spool_commits_total", "Write transactions.")
	dCommitOps     = desc("ferry_spool_commit_ops_total", "Operations in write transactions (ops/commits = mean batch size).")
	dCommitSecs    = desc("ferry_spool_commit_seconds_total", "Time spent in write transactions, fsync included.")
	dSyncs         = desc("ferry_spool_syncs_total", "fsyncs issued.")
	dCommitDur     = desc("ferry_spool_commit_duration_seconds", "Duration of write transactions, fsync included.")
	dDiskFull      = desc("ferry_spool_disk_full", "1 while the file system holding the spool is full: new messages are refused (block: wait) until space frees.")
	dSpoolFailed   = desc("ferry_spool_failed", "1 when the spool stopped after a storage failure (see the log): restart the gateway.")
	dSalvageTime   = desc("ferry_spool_salvage_timestamp_seconds", "When the salvage that made the spool file finished (unix time); 0 if it never was salvaged.")
	dSalvageKept   = desc("ferry_spool_salvage_kept_messages", "Messages that salvage kept.")
	dSalvageLost   = desc("ferry_spool_salvage_lost_messages", "Messages that salvage lost; the least number lost when ferry_spool_salvage_lost_unknown is 1.")
	dSalvageUnkn   = desc("ferry_spool_salvage_lost_unknown", "1 when the salvage could not count what it lost exactly (it scanned raw pages).")
	dSalvageStKept = desc("ferry_spool_salvage_kept_state_records", "Local state records (retained messages, sessions, their subscriptions and queues) that salvage kept.")
	dSalvageStLost = desc("ferry_spool_salvage_lost_state_records", "Local state records that salvage found unreadable; the least number lost when a kind has ferry_spool_salvage_state_damaged 1.")
	dSalvageStDmg  = desc("ferry_spool_salvage_state_damaged", "1 when salvage could not read a page of this kind of local state: records of it may be lost beyond those counted.", "kind")

	dConnected       = desc("ferry_ingress_connected_clients", "Clients connected now.", "protocol")
	dIngressRejected = desc("ferry_ingress_rejected_total", "Messages and connections refused, by protocol and reason.", "protocol", "reason")
	dLocalDropped    = desc("ferry_local_dropped_total", "Messages not delivered to a local subscriber whose queue was full (QoS 0).", "protocol")
	dSlowConsumers   = desc("ferry_local_slow_consumers_total", "Local subscribers disconnected for not keeping up (socket, write buffer or queue full).", "protocol")
	dIngressDups     = desc("ferry_ingress_duplicates_total", "Messages acknowledged but not stored again, by route and dedupe source.", "route", "reason")
	dPendingClosed   = desc("ferry_ingress_pending_closed_total", "Connections closed before their login because max_pending newer ones were waiting.", "protocol")
	dLoginFailures   = desc("ferry_login_failures_total", "Refused logins, both protocols, by reason (bad_credentials, throttled).", "reason")

	dLinkState     = desc("ferry_bridge_link_state", "1 for the current state of an upstream connection, 0 for the others.", "partition", "state")
	dLinkSince     = desc("ferry_bridge_link_state_since_seconds", "Seconds since the upstream connection entered its current state.", "partition")
	dInFlight      = desc("ferry_bridge_in_flight_messages", "Messages published and not yet acknowledged upstream.", "partition")
	dReconnects    = desc("ferry_bridge_reconnects_total", "Upstream connection attempts after the first.")
	dPublished     = desc("ferry_bridge_published_total", "Publishes sent upstream, resends included.")
	dBridgeAcked   = desc("ferry_bridge_acked_total", "Publishes acknowledged by the upstream.")
	dResent        = desc("ferry_bridge_resent_total", "Publishes of messages already sent once (after a cut or stall).")
	dStalls        = desc("ferry_bridge_stalls_total", "Times a link was declared stalled (messages in flight, no ack progress).")
	dBridgeDead    = desc("ferry_bridge_dead_lettered_total", "Messages the bridge moved to the DLQ (poison, refused).")
	dDownstream    = desc("ferry_bridge_downstream_received_total", "Messages received from upstream subscriptions.")
	dUpstreamErrs  = desc("ferry_bridge_upstream_errors_total", "Upstream errors, by reason.", "reason")
	dDrainETA      = desc("ferry_bridge_drain_eta_seconds", "Seconds until the spool is empty at the current net rate; 0 when empty, -1 when not draining (link not up, nothing acked since it came up, or arriving as fast as delivered).")
	dAckRate       = desc("ferry_bridge_ack_rate_messages_per_second", "Messages removed after the upstream ack, per second over the last 10 s or since the link came up (sampled every second).")
	dAcceptRate    = desc("ferry_spool_accept_rate_messages_per_second", "Messages stored per second over the last 10 s (sampled every second).")
	allScrapeDescs = []*prometheus.Desc{dBuildInfo, dUptime, dDepthMsgs, dDepthBytes, dLaneOldest, dOldest, dLeased,
		dDLQMsgs, dDLQBytes, dRetainedMsgs, dRetainedBytes, dDedupe, dFull, dFileSize, dStoredBytes, dMaxBytes, dMaxMessages, dAccepted, dDuplicates, dAcked,
		dNacked, dDeadLettered, dRejected, dDropped, dCommits, dCommitOps, dCommitSecs, dSyncs, dCommitDur, dDiskFull,
		dSpoolFailed, dSalvageTime, dSalvageKept, dSalvageLost, dSalvageUnkn, dSalvageStKept, dSalvageStLost, dSalvageStDmg, dConnected,
		dIngressRejected, dLocalDropped, dSlowConsumers, dIngressDups, dPendingClosed, dLoginFailures, dLinkState, dLinkSince, dInFlight, dReconnects, dPublished, dBridgeAcked,
		dResent, dStalls, dBridgeDead, dDownstream, dUpstreamErrs, dDrainETA, dAckRate, dAcceptRate}
)

// collector reads every source once per scrape.
type collector struct{ m *Metrics }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allScrapeDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	now := m.opts.Now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(dBuildInfo, 1, m.opts.Version, m.opts.GatewayID)
	gauge(dUptime, now.Sub(m.started).Seconds())

	if m.opts.Spool != nil {
		s := m.opts.Spool.Stats()
		for i, l := range s.Lanes {
			lane := strconv.Itoa(i)
			gauge(dDepthMsgs, float64(l.Messages), lane)
			gauge(dDepthBytes, float64(l.Bytes), lane)
			gauge(dLaneOldest, age(now, l.Oldest), lane)
		}
		gauge(dOldest, age(now, s.Oldest()))
		gauge(dLeased, float64(s.Leased))
		gauge(dDLQMsgs, float64(s.DLQMessages))
		gauge(dDLQBytes, float64(s.DLQBytes))
		gauge(dRetainedMsgs, float64(s.Retained))
		gauge(dRetainedBytes, float64(s.RetainedBytes))
		gauge(dDedupe, float64(s.DedupeEntries))
		gauge(dFull, b2f(s.Full))
		gauge(dFileSize, float64(s.FileSize))
		gauge(dStoredBytes, float64(stored(&s)))
		if m.opts.SpoolMaxBytes > 0 {
			gauge(dMaxBytes, float64(m.opts.SpoolMaxBytes))
		}
		if m.opts.SpoolMaxMessages > 0 {
			gauge(dMaxMessages, float64(m.opts.SpoolMaxMessages))
		}
		counter(dAccepted, float64(s.Accepted))
		counter(dDuplicates, float64(s.Duplicates))
		counter(dAcked, float64(s.Acked))
		counter(dNacked, float64(s.Nacked))
		counter(dDeadLettered, float64(s.DeadLettered))
		counter(dRejected, float64(s.Rejected))
		for i, n := range s.Dropped {
			counter(dDropped, float64(n), spool.DropReasonNames[i])
		}
		counter(dCommits, float64(s.Commits))
		counter(dCommitOps, float64(s.CommitOps))
		counter(dCommitSecs, s.CommitTime.Seconds())
		counter(dSyncs, float64(s.Syncs))
		buckets := make(map[float64]uint64, len(spool.CommitBuckets))
		var cum uint64
		for i, ub := range spool.CommitBuckets {
			cum += s.CommitDurations[i]
			buckets[ub.Seconds()] = cum
		}
		ch <- prometheus.MustNewConstHistogram(dCommitDur, s.Commits, s.CommitTime.Seconds(), buckets)
		gauge(dDiskFull, b2f(s.DiskFull))
		gauge(dSpoolFailed, b2f(s.Failure != ""))
		var sv spool.SalvageReport
		if s.Salvage != nil {
			sv = *s.Salvage
		}
		if !sv.Completed.IsZero() {
			gauge(dSalvageTime, float64(sv.Completed.UnixNano())/1e9)
		} else {
			gauge(dSalvageTime, 0)
		}
		gauge(dSalvageKept, float64(sv.Kept))
		gauge(dSalvageLost, float64(sv.Lost))
		gauge(dSalvageUnkn, b2f(sv.LostUnknown))
		gauge(dSalvageStKept, float64(sv.StateKept))
		gauge(dSalvageStLost, float64(sv.StateLost))
		for _, kind := range spool.StateKindNames {
			gauge(dSalvageStDmg, b2f(slices.Contains(sv.StateDamaged, kind)), kind)
		}
		r := m.current(now)
		gauge(dAcceptRate, r.AcceptedPerSecond)
		gauge(dAckRate, r.AckedPerSecond)
		_, eta := drain(s.Messages, s.Leased, m.linkState() == LinkUp, r)
		gauge(dDrainETA, eta)
	}
	for _, d := range m.duplicates() {
		counter(dIngressDups, float64(d.Count), d.Route, d.Reason)
	}
	if m.opts.Ingress != nil {
		for _, in := range m.opts.Ingress() {
			gauge(dConnected, float64(in.Connected), in.Protocol)
			counter(dLocalDropped, float64(in.LocalDropped), in.Protocol)
			counter(dSlowConsumers, float64(in.SlowConsumers), in.Protocol)
			counter(dPendingClosed, float64(in.PendingClosed), in.Protocol)
			for _, reason := range sortedKeys(in.Rejected) {
				counter(dIngressRejected, float64(in.Rejected[reason]), in.Protocol, reason)
			}
		}
	}
	if m.opts.Logins != nil {
		l := m.opts.Logins()
		for _, reason := range sortedKeys(l.Failures) {
			counter(dLoginFailures, float64(l.Failures[reason]), reason)
		}
	}
	if m.opts.Bridge != nil {
		b := m.opts.Bridge()
		for _, l := range b.Links {
			p := strconv.Itoa(l.Partition)
			for _, st := range LinkStates {
				gauge(dLinkState, b2f(l.State == st), p, st)
			}
			gauge(dLinkSince, age(now, l.Since), p)
			gauge(dInFlight, float64(l.InFlight), p)
		}
		counter(dReconnects, float64(b.Reconnects))
		counter(dPublished, float64(b.Published))
		counter(dBridgeAcked, float64(b.Acked))
		counter(dResent, float64(b.Resent))
		counter(dStalls, float64(b.Stalls))
		counter(dBridgeDead, float64(b.DeadLettered))
		counter(dDownstream, float64(b.Downstream))
		for _, reason := range sortedKeys(b.Errors) {
			counter(dUpstreamErrs, float64(b.Errors[reason]), reason)
		}
	}
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func age(now, t time.Time) float64 {
	if t.IsZero() || now.Before(t) {
		return 0
	}
	return now.Sub(t).Seconds()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// stored is what spool.max_bytes caps.
func stored(s *spool.Stats) int64 { return s.Bytes + s.DLQBytes + s.RetainedBytes }
