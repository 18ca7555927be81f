package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/protocols/mqtt"
	"github.com/ferrymq/ferry/spool"
)

// The local MQTT state (docs/operations.md, "Local state"), registered by
// the gateway when state.persist is on.
var (
	dStateRecords     = desc("ferry_state_records", "Local MQTT state records in the spool file, by kind (retained, clients, subscriptions, inflight).", "kind")
	dStateBytes       = desc("ferry_state_bytes", "Bytes of the local state records (keys, values, 12-byte headers), by kind.", "kind")
	dStateSessions    = desc("ferry_state_sessions", "Persistent MQTT sessions kept, connected or not (state.max_sessions).")
	dStateQueued      = desc("ferry_state_queued_messages", "QoS 1/2 messages queued or in flight for persistent sessions.")
	dStateQueuedBytes = desc("ferry_state_queued_bytes", "Bytes of those messages (state.max_session_bytes per session).")
	dStateRetained    = desc("ferry_state_retained_bytes", "Bytes of retained messages, as state.max_retained_bytes counts them.")
	dStateLimitHits   = desc("ferry_state_limit_hits_total", "Times a local state bound was hit, by limit: retained_bytes (retained message not retained, or a QoS 1/2 one refused), sessions (CONNECT refused), session_queue (oldest queued message dropped).", "limit")
	dStateExpired     = desc("ferry_state_expired_sessions_total", "Persistent sessions that expired (also those whose deadline passed while the gateway was down).")
)

// stateCollector exports the MQTT server's and the spool's view of the
// local state.
type stateCollector struct {
	mq *mqtt.Server
	sp *spool.Spool
}

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dStateRecords, dStateBytes, dStateSessions, dStateQueued, dStateQueuedBytes,
		dStateRetained, dStateLimitHits, dStateExpired} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	sp := c.sp.StateStats()
	for k, st := range sp {
		gauge(dStateRecords, float64(st.Records), spool.StateKindNames[k])
		gauge(dStateBytes, float64(st.Bytes), spool.StateKindNames[k])
	}
	st := c.mq.StoreStats()
	gauge(dStateSessions, float64(st.Sessions))
	gauge(dStateQueued, float64(st.Queued))
	gauge(dStateQueuedBytes, float64(st.QueuedBytes))
	gauge(dStateRetained, float64(st.RetainedBytes))
	for i, n := range st.LimitHits {
		if i == mqtt.LimitRetainedBytes {
			n += sp[spool.StateRetained].Refused // QoS 1/2 retained publishes the spool refused
		}
		counter(dStateLimitHits, float64(n), mqtt.LimitNames[i])
	}
	counter(dStateExpired, float64(st.ExpiredSessions))
}
