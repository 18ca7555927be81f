package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
)

// upstream is one upstream with the spool file it drains: the bridge
// section (main: the gateway's spool) or an upstreams entry (a file of its
// own). A route that names several stores one copy in each one's spool;
// each bridge deletes its copy on its own broker's ack (docs/design.md §5).
type upstream struct {
	name string
	sp   *spool.Spool
	br   *bridge.Bridge
	up   atomic.Bool // its link is up, for qos0_when_offline (watchLink)
	// sink stores into sp with the gateway's accept/duplicate callbacks;
	// quiet without them (the copies after a message's first upstream,
	// so that a message is counted once).
	sink, quiet spoolsink.Sink
}

// openUpstreams opens the spool file of every upstreams entry.
func (g *Gateway) openUpstreams() error {
	for i, uc := range g.cfg.Upstreams {
		path := g.cfg.UpstreamSpoolPath(i)
		sp, err := spool.Open(path, g.cfg.UpstreamSpoolOptions(i, g.log.With("component", "spool", "upstream", uc.Name)))
		if err != nil {
			_ = g.closeUpstreams()
			return fmt.Errorf("upstreams[%d] (%s): spool %s: %w", i, uc.Name, path, err)
		}
		if rep := sp.Salvaged(); rep != nil {
			g.log.Warn("upstream spool was damaged and has been salvaged", "upstream", uc.Name, "kept", rep.Kept, "lost", rep.LostText(), "damaged_file", rep.Damaged)
		}
		g.ups = append(g.ups, &upstream{name: uc.Name, sp: sp})
	}
	return nil
}

// closeUpstreams closes the further upstreams' spools (not main's) and
// returns the first error.
func (g *Gateway) closeUpstreams() error {
	var first error
	for _, u := range g.ups {
		if u.sp == g.sp {
			continue
		}
		if err := u.sp.Close(); err != nil && first == nil {
			first = fmt.Errorf("upstream %s: %w", u.name, err)
		}
	}
	return first
}

// upstreamNames are the names of the running upstreams, main first.
func (g *Gateway) upstreamNames() []string {
	out := []string{config.MainUpstream}
	for _, u := range g.ups {
		if u.name != config.MainUpstream {
			out = append(out, u.name)
		}
	}
	return out
}

// buildUpstreams makes the further upstreams' bridges and sinks; main's
// are made by build. It runs after the main upstream took its place in
// g.ups[0].
func (g *Gateway) buildUpstreams(o spoolsink.Options) error {
	quiet := spoolsink.Options{}
	for i, u := range g.ups {
		if u.name == config.MainUpstream {
			continue
		}
		u.sink, u.quiet = spoolsink.New(u.sp, o), spoolsink.New(u.sp, quiet)
		bo, err := g.cfg.UpstreamBridgeOptions(i - 1)
		if err != nil {
			return fmt.Errorf("upstreams[%d] (%s): %w", i-1, u.name, err)
		}
		bo.Retain = func(m *message.Message) bool { return g.router.Route(m.Topic).UpstreamRetain }
		bo.Logger = g.log.With("component", "bridge", "upstream", u.name)
		if u.br, err = bridge.New(u.sp, bo); err != nil {
			return fmt.Errorf("upstreams[%d] (%s): %w", i-1, u.name, err)
		}
	}
	return nil
}

// fanSink is the ingest sink with further upstreams: each message is
// stored in the spool of every upstream its route names, concurrently, and
// acknowledged once every copy is durable. Retained state stays in the
// main spool (state.persist), also for a route that does not send to main.
type fanSink struct {
	router     *Router
	byName     map[string]*upstream
	main       *upstream
	retained   bool // state.persist: a retained message's state goes to main's spool
	onAccepted func(m *message.Message)
}

var _ spoolsink.Sink = (*fanSink)(nil)

func newFanSink(router *Router, ups []*upstream, o spoolsink.Options) *fanSink {
	f := &fanSink{router: router, byName: make(map[string]*upstream, len(ups)), main: ups[0], retained: o.Retained, onAccepted: o.OnAccepted}
	for _, u := range ups {
		f.byName[u.name] = u
	}
	return f
}

// targets returns m's upstreams, or an error naming the route when one of
// them is not running (a reload cannot add one: checkUpstreams).
func (f *fanSink) targets(m *message.Message) ([]*upstream, error) {
	names, route := f.router.Upstreams(m.Topic)
	out := make([]*upstream, 0, len(names))
	for _, n := range names {
		u, ok := f.byName[n]
		if !ok {
			return nil, fmt.Errorf("route %s names upstream %q, which is not running (restart the gateway)", route, n)
		}
		out = append(out, u)
	}
	if len(out) > 1 && m.QoS == 0 && f.router.Route(m.Topic).QoS0 == message.QoS0Drop {
		// qos0_when_offline: drop, per upstream: no copy for one whose
		// link is down. The ingest core found one up (else the message
		// would be local only); if all went down since, every copy is
		// kept, as they were when it looked.
		up := make([]*upstream, 0, len(out))
		for _, u := range out {
			if u.up.Load() {
				up = append(up, u)
			}
		}
		if len(up) > 0 {
			out = up
		}
	}
	return out, nil
}

func (f *fanSink) Accept(ctx context.Context, m *message.Message) error { return f.Submit(ctx, m)() }

func (f *fanSink) AcceptBatch(ctx context.Context, ms []*message.Message) error {
	return f.SubmitBatch(ctx, ms)()
}

func failed(err error) func() error { return func() error { return err } }

// waitAll waits for every wait and returns the first error.
func waitAll(waits []func() error) func() error {
	return func() error {
		var first error
		for _, w := range waits {
			if err := w(); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
}

// needsState: m's retained state must be written to main's spool by the
// fan sink, because main does not store m itself.
func (f *fanSink) needsState(m *message.Message, ts []*upstream) bool {
	if !f.retained || !m.Retain || len(m.Topic) > spool.MaxStateKey {
		return false
	}
	for _, u := range ts {
		if u == f.main {
			return false
		}
	}
	return true
}

// Submit stores m in each of its upstreams' spools; each spool keeps the
// order of what one goroutine submits, so per-topic order holds in every
// upstream's copy.
func (f *fanSink) Submit(ctx context.Context, m *message.Message) func() error {
	ts, err := f.targets(m)
	if err != nil {
		return failed(err)
	}
	if len(ts) == 1 && ts[0] == f.main {
		return f.main.sink.Submit(ctx, m)
	}
	waits := make([]func() error, 0, len(ts)+1)
	for i, u := range ts {
		s := u.quiet
		if i == 0 {
			s = u.sink
		}
		waits = append(waits, s.Submit(ctx, m))
	}
	if f.needsState(m, ts) {
		waits = append(waits, f.main.sp.ApplyStateAsync(ctx, spoolsink.RetainedOp(m, message.Encode(nil, m))))
	}
	return waitAll(waits)
}

// SubmitBatch stores, in each upstream's spool, the messages of ms whose
// routes name it, as one batch (all or none in that file; not across
// files: docs/configuration.md, upstreams).
func (f *fanSink) SubmitBatch(ctx context.Context, ms []*message.Message) func() error {
	groups := make(map[*upstream][]*message.Message)
	var order []*upstream
	var state []spool.StateOp
	for _, m := range ms {
		ts, err := f.targets(m)
		if err != nil {
			return failed(err)
		}
		for _, u := range ts {
			if _, ok := groups[u]; !ok {
				order = append(order, u)
			}
			groups[u] = append(groups[u], m)
		}
		if f.needsState(m, ts) {
			state = append(state, spoolsink.RetainedOp(m, message.Encode(nil, m)))
		}
	}
	waits := make([]func() error, 0, len(order)+1)
	for _, u := range order {
		waits = append(waits, u.quiet.SubmitBatch(ctx, groups[u]))
	}
	if len(state) > 0 {
		waits = append(waits, f.main.sp.ApplyStateAsync(ctx, state...))
	}
	all := waitAll(waits)
	return func() error {
		if err := all(); err != nil {
			return err
		}
		// Counted once per message, here: the copies went through the
		// quiet sinks so that each file's batch stays one batch. (A
		// duplicate inside a fanned-out transaction counts as accepted,
		// not as a duplicate.)
		if f.onAccepted != nil {
			for _, m := range ms {
				f.onAccepted(m)
			}
		}
		return nil
	}
}

// Upstream metrics: one series per upstream, main included.
var (
	dUpQueued    = desc("ferry_upstream_queued_messages", "Messages queued for an upstream (its spool; main is the gateway's spool).", "upstream")
	dUpBytes     = desc("ferry_upstream_queued_bytes", "Bytes queued for an upstream.", "upstream")
	dUpOldest    = desc("ferry_upstream_oldest_age_seconds", "Age of the oldest message queued for an upstream (its lag); 0 when empty.", "upstream")
	dUpAcked     = desc("ferry_upstream_acked_total", "Messages an upstream acknowledged (removed from its spool).", "upstream")
	dUpDropped   = desc("ferry_upstream_dropped_total", "Messages deleted from an upstream's spool without delivery, by reason (expired, drop_oldest, drop_lowest_priority).", "upstream", "reason")
	dUpRejected  = desc("ferry_upstream_rejected_total", "Messages refused because an upstream's spool was full.", "upstream")
	dUpDead      = desc("ferry_upstream_dead_lettered_total", "Messages moved to an upstream's dead-letter queue.", "upstream")
	dUpLinkUp    = desc("ferry_upstream_link_up", "1 while every connection to an upstream is up.", "upstream")
	dUpInFlight  = desc("ferry_upstream_in_flight_messages", "Messages published to an upstream and not yet acknowledged.", "upstream")
	dUpFull      = desc("ferry_upstream_full", "1 when the last put into an upstream's spool hit its cap.", "upstream")
	dUpMaxBytes  = desc("ferry_upstream_max_bytes", "The cap of an upstream's spool (absent without a cap).", "upstream")
	upstreamDesc = []*prometheus.Desc{dUpQueued, dUpBytes, dUpOldest, dUpAcked, dUpDropped, dUpRejected, dUpDead, dUpLinkUp, dUpInFlight, dUpFull, dUpMaxBytes}
)

// upstreamCollector reports the ferry_upstream_* series of every upstream.
type upstreamCollector struct {
	ups      []*upstream
	maxBytes func(i int) int64 // ≤ 0: no cap
	now      func() float64    // unix seconds
}

func (c upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range upstreamDesc {
		ch <- d
	}
}

func (c upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for i, u := range c.ups {
		s := u.sp.Stats()
		gauge(dUpQueued, float64(s.Messages), u.name)
		gauge(dUpBytes, float64(s.Bytes), u.name)
		age := 0.0
		if o := s.Oldest(); !o.IsZero() {
			age = max(0, c.now()-float64(o.UnixNano())/1e9)
		}
		gauge(dUpOldest, age, u.name)
		counter(dUpAcked, s.Acked, u.name)
		for r, n := range s.Dropped {
			counter(dUpDropped, n, u.name, spool.DropReasonNames[r])
		}
		counter(dUpRejected, s.Rejected, u.name)
		counter(dUpDead, s.DeadLettered, u.name)
		bs := u.br.Stats()
		gauge(dUpLinkUp, b2f(bs.State == bridge.StateUp), u.name)
		gauge(dUpInFlight, float64(bs.InFlight), u.name)
		gauge(dUpFull, b2f(s.Full), u.name)
		if mb := c.maxBytes(i); mb > 0 {
			gauge(dUpMaxBytes, float64(mb), u.name)
		}
	}
}

// upstreamStatus is every upstream's line of /api/status.
func (g *Gateway) upstreamStatus() []UpstreamStatus {
	now := time.Now()
	out := make([]UpstreamStatus, len(g.ups))
	for i, u := range g.ups {
		s := u.sp.Stats()
		var dropped uint64
		for _, n := range s.Dropped {
			dropped += n
		}
		age := 0.0
		if o := s.Oldest(); !o.IsZero() {
			age = max(0, now.Sub(o).Seconds())
		}
		out[i] = UpstreamStatus{Name: u.name, Link: u.br.State().String(), Queued: s.Messages, QueuedBytes: s.Bytes,
			OldestAgeSeconds: age, Acked: s.Acked, Dropped: dropped, DeadLetters: s.DLQMessages}
	}
	return out
}
