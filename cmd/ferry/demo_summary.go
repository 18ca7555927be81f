package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"

	firmwaresim "github.com/ferrymq/ferry/firmware-sim"
	"github.com/ferrymq/ferry/gateway"
)

// demoSummary is the demo's verified result.
type demoSummary struct {
	RunID              string
	Duration, Elapsed  time.Duration
	Devices            int // telemetry devices; one alarm device more
	Cuts               int
	CutFor             time.Duration
	Crashes            int
	Sent, Retransmits  uint64
	Acked              int // acknowledged by the gateway
	Delivered          int // distinct readings upstream
	Deliveries         int // every copy upstream
	Lost               int
	LostIDs            []string
	Duplicates         int
	DupOriginalID      int // duplicates carrying the first copy's envelope id
	DupNewID           int
	OrderViolations    int
	OrderSamples       []string
	Malformed          int
	AlarmsAcked        int
	AlarmsLost         int
	DLQ                int64 // dead letters in the gateway's spool at the end (-1: unknown)
	UpstreamDropped    int64 // messages the embedded broker dropped to the verifier
	AckToArrival       firmwaresim.Percentiles
	Mosquitto          mosquittoEstimate
	Dir, Log, StopErr  string
	Kept               bool
	VerifierReconnects int
	UnackedArrivals    int
	PeakBacklog        int64 // largest spool backlog the live view saw
}

func newDemoSummary(o demoOptions, plan demoPlan, fleets []*firmwaresim.Fleet, r firmwaresim.Report, acked map[string]time.Time,
	tl *timeline, final *gateway.Status, up *mochi.Server) *demoSummary {
	s := &demoSummary{
		RunID: fleets[0].RunID(), Duration: o.Duration, Devices: o.Devices, CutFor: plan.cutFor,
		Acked: r.Acked, Delivered: r.Arrived, Deliveries: r.Deliveries, Lost: r.Lost, LostIDs: r.LostIDs,
		Duplicates: r.Duplicates, DupOriginalID: r.DupSameEnvelope, DupNewID: r.DupNewEnvelope + r.DupNoEnvelope,
		OrderViolations: r.OrderViolations, OrderSamples: r.OrderSamples, Malformed: r.Malformed,
		AckToArrival: r.AckToArrival, DLQ: -1, VerifierReconnects: r.VerifierCuts, UnackedArrivals: r.Unacked,
	}
	for _, f := range fleets {
		st := f.Stats()
		s.Sent += st.Sent
		s.Retransmits += st.Retransmits
	}
	for id := range acked {
		if isAlarm(id) {
			s.AlarmsAcked++
		}
	}
	for _, id := range r.LostIDs {
		if isAlarm(id) {
			s.AlarmsLost++
		}
	}
	tl.mu.Lock()
	s.Cuts, s.Crashes = len(tl.outages), len(tl.crashes)
	s.Mosquitto = estimateMosquitto(acked, tl.outages, tl.crashes)
	tl.mu.Unlock()
	if final != nil && final.Spool != nil {
		s.DLQ = final.Spool.DLQMessages
	}
	if up != nil {
		s.UpstreamDropped = atomic.LoadInt64(&up.Info.MessagesDropped) + atomic.LoadInt64(&up.Info.InflightDropped)
	}
	return s
}

// ok: everything acknowledged arrived, in order, as readings.
func (s *demoSummary) ok() bool {
	return s.Acked > 0 && s.Lost == 0 && s.OrderViolations == 0 && s.Malformed == 0
}

func (s *demoSummary) exitCode() int {
	if s.ok() {
		return exitOK
	}
	return exitFailure
}

func (s *demoSummary) print(w io.Writer) {
	var b strings.Builder
	crash := "no crash"
	if s.Crashes > 0 {
		crash = fmt.Sprintf("%d SIGKILL and restart of the gateway", s.Crashes)
	}
	fmt.Fprintf(&b, "\nVerified summary (run %s): %v of traffic from %d devices (+1 alarm device), %d link cut(s) of %v, %s\n",
		s.RunID, s.Duration, s.Devices, s.Cuts, s.CutFor, crash)
	row := func(label string, n int64, note string) {
		fmt.Fprintln(&b, strings.TrimRight(fmt.Sprintf("  %-22s %9s   %s", label, num(n), note), " "))
	}
	resent := ""
	if s.Retransmits > 0 {
		resent = fmt.Sprintf("(+%s re-sends of unacknowledged readings after a lost connection)", num(int64(s.Retransmits)))
	}
	row("sent by the devices", int64(s.Sent), resent)
	row("acknowledged by ferry", int64(s.Acked), "fsync'd to the spool before the ack: the promise to deliver")
	row("delivered upstream", int64(s.Delivered), fmt.Sprintf("distinct readings the verifier received (%s deliveries)", num(int64(s.Deliveries))))
	lost := "acknowledged and never delivered"
	if s.Lost > 0 {
		ids := s.LostIDs
		if len(ids) > 10 {
			ids = ids[:10]
		}
		lost += ": " + strings.Join(ids, " ")
		if len(s.LostIDs) > 10 {
			lost += fmt.Sprintf(" … (%d more)", len(s.LostIDs)-10)
		}
	}
	row("lost", int64(s.Lost), lost)
	dup := "none"
	switch {
	case s.Duplicates > 0 && s.DupNewID == 0:
		dup = "each carries its original message id (bridge re-sends of what was in flight at a cut or the crash): dropped by id upstream"
	case s.Duplicates > 0:
		dup = fmt.Sprintf("%s carry the original message id, %s a new one (device retransmits that ingress did not de-duplicate)", num(int64(s.DupOriginalID)), num(int64(s.DupNewID)))
	}
	row("duplicates", int64(s.Duplicates), dup)
	order := "per device and topic"
	if len(s.OrderSamples) > 0 {
		order += ": " + strings.Join(s.OrderSamples, "; ")
	}
	row("order violations", int64(s.OrderViolations), order)
	if s.DLQ >= 0 {
		row("dead letters", s.DLQ, "in the spool at the end")
	}
	if s.PeakBacklog > 0 {
		row("largest backlog", s.PeakBacklog, "held in the spool (on disk) during an outage")
	}
	row("alarms acknowledged", int64(s.AlarmsAcked), fmt.Sprintf("%s delivered (lane %d drains before telemetry)", num(int64(s.AlarmsAcked-s.AlarmsLost)), demoAlarmLane))
	if s.AckToArrival.N > 0 {
		fmt.Fprintf(&b, "  %-22s %9s   %v\n", "ack -> upstream", "", s.AckToArrival)
	}
	if s.UnackedArrivals > 0 {
		fmt.Fprintf(&b, "  (%s readings arrived that no device saw acknowledged: their ack was on its way when a connection broke or the devices stopped)\n", num(int64(s.UnackedArrivals)))
	}
	if s.Malformed > 0 {
		fmt.Fprintf(&b, "  %s upstream payloads were not readings\n", num(int64(s.Malformed)))
	}
	if s.UpstreamDropped > 0 {
		fmt.Fprintf(&b, "  note: the embedded upstream broker dropped %s messages on their way to the verifier (a slow subscriber):\n"+
			"  a loss above may be the test broker's rather than Ferry's\n", num(s.UpstreamDropped))
	}
	if s.ok() {
		fmt.Fprintf(&b, "PASS: every message ferry acknowledged reached upstream, in order per topic.\n")
	} else {
		fmt.Fprintf(&b, "FAIL: %s of %s acknowledged messages lost, %s order violations, %s malformed (gateway log: %s)\n",
			num(int64(s.Lost)), num(int64(s.Acked)), num(int64(s.OrderViolations)), num(int64(s.Malformed)), s.Log)
	}
	if s.StopErr != "" {
		fmt.Fprintf(&b, "note: %s\n", s.StopErr)
	}
	s.Mosquitto.print(&b, s.Acked)
	if s.Kept {
		fmt.Fprintf(&b, "\nwork directory kept: %s (configuration, spool, gateway log)\n", s.Dir)
	}
	_, _ = io.WriteString(w, b.String())
}

// Mosquitto 2.0's documented defaults (mosquitto.conf(5)) that decide what
// its bridge loses in an outage.
const (
	mosquittoMaxQueued   = 1000 // max_queued_messages: QoS 1/2 messages queued per client above those in flight
	mosquittoMaxInflight = 20   // max_inflight_messages
)

// mosquittoEstimate is what a Mosquitto bridge in the gateway's place would
// have lost with the same devices and the same outages, computed from its
// documented behaviour, not measured.
type mosquittoEstimate struct {
	OverQueue int // dropped while the link was down: the queue was full
	AtCrash   int // in its in-memory queue at a SIGKILL
	Alarms    int // alarms among the lost
}

func (m mosquittoEstimate) Lost() int { return m.OverQueue + m.AtCrash }

// estimateMosquitto replays the acknowledged messages (by ack time: a
// Mosquitto bridge acknowledges a device on receipt) against the outages
// and crashes. While the link is down the bridge queues up to
// max_queued_messages above max_inflight_messages and drops every newer
// message; a SIGKILL loses the queue (persistence is off by default, and
// with it on the database is written only on a clean exit or every
// autosave_interval, 1800 s); when the link heals the queue drains. It
// favours Mosquitto: the bridge is assumed to reconnect the instant the link
// heals (its restart_timeout default waits 5 to 30 s) and to lose nothing
// in flight at a cut or while the link is up.
func estimateMosquitto(acked map[string]time.Time, outages []span, crashes []time.Time) mosquittoEstimate {
	type ev struct {
		at    time.Time
		kind  int // 0 link down, 1 crash, 2 link up, 3 ack
		alarm bool
	}
	evs := make([]ev, 0, len(acked)+2*len(outages)+len(crashes))
	for _, o := range outages {
		evs = append(evs, ev{at: o.from, kind: 0}, ev{at: o.to, kind: 2})
	}
	for _, c := range crashes {
		evs = append(evs, ev{at: c, kind: 1})
	}
	for id, at := range acked {
		evs = append(evs, ev{at: at, kind: 3, alarm: isAlarm(id)})
	}
	slices.SortStableFunc(evs, func(a, b ev) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.kind - b.kind
	})
	var m mosquittoEstimate
	down := false
	q, qAlarms := 0, 0
	for _, e := range evs {
		switch e.kind {
		case 0:
			down = true
		case 2:
			down, q, qAlarms = false, 0, 0
		case 1:
			m.AtCrash += q
			m.Alarms += qAlarms
			q, qAlarms = 0, 0
		case 3:
			if !down {
				continue // forwarded at once
			}
			if q < mosquittoMaxQueued+mosquittoMaxInflight {
				q++
				if e.alarm {
					qAlarms++
				}
				continue
			}
			m.OverQueue++
			if e.alarm {
				m.Alarms++
			}
		}
	}
	return m
}

func (m mosquittoEstimate) print(b *strings.Builder, acked int) {
	fmt.Fprintf(b, "\nMosquitto 2.0's bridge in the same outage pattern: an ESTIMATE from its documented defaults, not a measurement.\n")
	if m.Lost() == 0 {
		fmt.Fprintf(b, "  It would have lost nothing here: no outage queued more than max_queued_messages (%d) + max_inflight_messages (%d), and no crash hit a queue.\n",
			mosquittoMaxQueued, mosquittoMaxInflight)
		return
	}
	alarms := ""
	if m.Alarms > 0 {
		alarms = fmt.Sprintf(", %s of them alarms", num(int64(m.Alarms)))
	}
	fmt.Fprintf(b, "  It would have lost at least %s of the %s acknowledged messages (%.1f%%%s):\n", num(int64(m.Lost())), num(int64(acked)),
		100*float64(m.Lost())/float64(max(acked, 1)), alarms)
	fmt.Fprintf(b, "  %9s  while the link was down, beyond max_queued_messages %d + max_inflight_messages %d (newer messages are dropped)\n",
		num(int64(m.OverQueue)), mosquittoMaxQueued, mosquittoMaxInflight)
	fmt.Fprintf(b, "  %9s  in its in-memory queue at the SIGKILL (persistence false by default; with it on, the database is\n"+
		"             written only on a clean exit or every autosave_interval, 1800 s)\n", num(int64(m.AtCrash)))
	fmt.Fprintf(b, "  Mosquitto acknowledges a device's message on receipt, so each of these was acknowledged, then lost. The estimate\n"+
		"  assumes the bridge reconnects the instant the link heals (restart_timeout defaults to 5-30 s) and loses nothing\n"+
		"  in flight, so the real figure would be higher.\n")
}
