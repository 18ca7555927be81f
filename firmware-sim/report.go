package firmwaresim

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Percentiles summarise a latency distribution.
type Percentiles struct {
	N                  int
	P50, P95, P99, Max time.Duration
}

func percentiles(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	slices.Sort(ds)
	at := func(p float64) time.Duration {
		i := int(p*float64(len(ds))+0.999999) - 1
		return ds[min(max(i, 0), len(ds)-1)]
	}
	return Percentiles{N: len(ds), P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: ds[len(ds)-1]}
}

func (p Percentiles) String() string {
	if p.N == 0 {
		return "n=0"
	}
	r := func(d time.Duration) time.Duration {
		if d > time.Second {
			return d.Round(time.Millisecond)
		}
		return d.Round(time.Microsecond)
	}
	return fmt.Sprintf("p50=%v p95=%v p99=%v max=%v (n=%d)", r(p.P50), r(p.P95), r(p.P99), r(p.Max), p.N)
}

// Report is what the verifier found, measured against the acknowledged ids.
type Report struct {
	Acked      int // ids the devices had acknowledged
	Arrived    int // distinct readings that arrived (of this run)
	Deliveries int // every copy that arrived
	Lost       int // acknowledged and never arrived
	LostIDs    []string
	// Unacked arrived without an acknowledgement: QoS 0, or in flight
	// when a device gave up. Not an error.
	Unacked int

	Duplicates      int // copies beyond the first
	DupSameEnvelope int // duplicates with the first copy's envelope id: upstream resends, removable by id
	DupNewEnvelope  int // duplicates with another envelope id: device retransmits that ingress did not dedupe
	DupNoEnvelope   int // duplicates in raw format (no envelope id to compare)

	OrderViolations int // first arrivals with a lower seq than one already seen (per device and topic)
	OrderSamples    []string

	Malformed    int // payloads that were not readings
	Foreign      int // readings of other runs, ignored
	VerifierCuts int // times the verifier lost its own connection

	AckToArrival  Percentiles // device ack -> upstream arrival (clamped at 0)
	SendToArrival Percentiles // first send -> upstream arrival
	Span          time.Duration
	Throughput    float64 // distinct arrivals per second over Span
}

// OK reports no loss, no reordering and no malformed payloads.
func (r Report) OK() bool {
	return r.Lost == 0 && r.OrderViolations == 0 && r.Malformed == 0
}

// Report compares the arrivals so far with acked (reading id -> ack time,
// as Fleet.Acked returns).
func (v *Verifier) Report(acked map[string]time.Time) Report {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := Report{
		Acked: len(acked), Arrived: len(v.byID), Deliveries: v.deliveries,
		OrderViolations: v.nViolation, OrderSamples: slices.Clone(v.violations),
		Malformed: v.malformed, Foreign: v.foreign, VerifierCuts: v.lost,
	}
	ackLat := make([]time.Duration, 0, len(acked))
	for id, at := range acked {
		a := v.byID[id]
		if a == nil {
			r.Lost++
			r.LostIDs = append(r.LostIDs, id)
			continue
		}
		ackLat = append(ackLat, max(a.at.Sub(at), 0))
	}
	sendLat := make([]time.Duration, 0, len(v.byID))
	for id, a := range v.byID {
		if _, ok := acked[id]; !ok {
			r.Unacked++
		}
		r.Duplicates += a.copies - 1
		r.DupSameEnvelope += a.sameEnv
		r.DupNewEnvelope += a.otherEnv
		r.DupNoEnvelope += a.noEnv
		sendLat = append(sendLat, max(a.at.Sub(a.sentAt), 0))
	}
	slices.Sort(r.LostIDs)
	r.AckToArrival = percentiles(ackLat)
	r.SendToArrival = percentiles(sendLat)
	r.Span = v.lastAt.Sub(v.firstAt)
	if r.Span > 0 {
		r.Throughput = float64(r.Arrived) / r.Span.Seconds()
	}
	return r
}

// String is the human-readable report, one topic per line.
func (r Report) String() string {
	var b strings.Builder
	verdict := "OK"
	if !r.OK() {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "verdict: %s\n", verdict)
	fmt.Fprintf(&b, "acked: %d  arrived: %d distinct, %d deliveries  unacked arrivals: %d\n", r.Acked, r.Arrived, r.Deliveries, r.Unacked)
	fmt.Fprintf(&b, "lost: %d", r.Lost)
	if r.Lost > 0 {
		ids := r.LostIDs
		more := ""
		if len(ids) > maxSamples {
			ids, more = ids[:maxSamples], fmt.Sprintf(" … (%d more)", len(r.LostIDs)-maxSamples)
		}
		fmt.Fprintf(&b, " [%s%s]", strings.Join(ids, " "), more)
	}
	b.WriteByte('\n')
	fmt.Fprintf(&b, "duplicates: %d (same envelope id %d, new envelope id %d, raw %d)\n",
		r.Duplicates, r.DupSameEnvelope, r.DupNewEnvelope, r.DupNoEnvelope)
	fmt.Fprintf(&b, "order violations: %d", r.OrderViolations)
	if len(r.OrderSamples) > 0 {
		fmt.Fprintf(&b, " [%s]", strings.Join(r.OrderSamples, "; "))
	}
	b.WriteByte('\n')
	fmt.Fprintf(&b, "malformed: %d  other runs: %d  verifier reconnects: %d\n", r.Malformed, r.Foreign, r.VerifierCuts)
	fmt.Fprintf(&b, "latency ack->arrival: %v\n", r.AckToArrival)
	fmt.Fprintf(&b, "latency send->arrival: %v\n", r.SendToArrival)
	fmt.Fprintf(&b, "throughput: %.0f msgs/s over %v\n", r.Throughput, r.Span.Round(time.Millisecond))
	return b.String()
}
