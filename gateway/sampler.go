package gateway

import (
	"context"
	"math"
	"time"
)

// The sampler is the clock of everything on the status page that is a
// change over time: the rates, the drain ETA, the last hour's history and
// the outage list. Metrics.Run reads the sources once per SampleEvery
// (the gateway runs it for as long as it runs), so the numbers do not
// depend on who reads the page or /metrics, or how often.
const (
	// DefaultSampleEvery is MetricsOptions.SampleEvery's default.
	DefaultSampleEvery = time.Second
	// RateWindow is what the current rates are averaged over.
	RateWindow = 10 * time.Second
	// HistoryStep is the resolution of Status.History; HistoryLength
	// steps make an hour.
	HistoryStep   = 10 * time.Second
	HistoryLength = 360
	// MaxOutages is how many outages Status.Outages remembers.
	MaxOutages = 20
)

// Drain states (Status.DrainState).
const (
	DrainEmpty     = "empty"      // nothing queued; ETA 0
	DrainKeepingUp = "keeping_up" // only what is in transit is queued; ETA = backlog ÷ acked/s (under a second)
	DrainDraining  = "draining"   // the backlog shrinks; ETA = backlog ÷ (acked/s − accepted/s)
	DrainGrowing   = "growing"    // the link is up but messages arrive as fast as they leave, or faster; ETA -1
	DrainStopped   = "stopped"    // the link is not up, or no delivery measured since it came up; ETA -1
)

// Rates are recent message rates, from the spool's counters: accepted
// (stored) and acked (removed after the upstream acknowledged them).
type Rates struct {
	// AcceptedPerSecond is over the last WindowSeconds: RateWindow once
	// the sampler has run that long, less before; 0: not measured yet.
	AcceptedPerSecond float64 `json:"accepted_per_second"`
	WindowSeconds     float64 `json:"window_seconds"`
	// AckedPerSecond is over the last AckedWindowSeconds: the same window,
	// or, when the link came up inside it, the time since (between
	// samples taken with the link up), so that a drain is not averaged
	// with the outage before it.
	AckedPerSecond     float64 `json:"acked_per_second"`
	AckedWindowSeconds float64 `json:"acked_window_seconds"`
	// DrainPerSecond is the net rate the drain ETA divides by: acked/s −
	// accepted/s over the acked window (negative: the backlog grows).
	DrainPerSecond float64 `json:"drain_per_second"`

	drainAccepted, drainAcked float64 // unrounded, over the acked window
}

// Outage is one period in which the upstream link was not up (every
// partition up), as the sampler saw it.
type Outage struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end,omitzero"` // zero while ongoing
	// DurationSeconds is End − Start, or now − Start while ongoing.
	DurationSeconds float64 `json:"duration_seconds"`
	Ongoing         bool    `json:"ongoing"`
	// State is the worst link state seen during the outage; "" when it was
	// shorter than a sample (seen only as a reconnect).
	State       string `json:"state,omitempty"`
	LastError   string `json:"last_error,omitempty"`
	BacklogPeak int64  `json:"backlog_peak"` // the most messages queued during it
}

// History is the last hour in steps of HistoryStep, oldest first, as
// columns. Each step's rates are averaged over the step; its backlog is
// the one at T. The last step is the one in progress.
type History struct {
	StepSeconds float64   `json:"step_seconds"`
	T           []int64   `json:"t"` // Unix seconds of each step's last sample
	Backlog     []int64   `json:"backlog"`
	Accepted    []float64 `json:"accepted_per_second"`
	Acked       []float64 `json:"acked_per_second"`
}

type sample struct {
	t               time.Time
	accepted, acked uint64
	backlog         int64
}

type histPoint struct {
	t               time.Time
	backlog         int64
	accepted, acked float64
	base            sample // the sample before the step began
	last            sample
}

// sampler is the state behind the rates, the history and the outages.
// Metrics.mu guards it.
type sampler struct {
	recent []sample // oldest first; the oldest may be older than RateWindow (the base)
	hist   []histPoint

	upSince    time.Time // when the link was last seen coming up; zero while not up
	lastUp     time.Time // the last sample with the link up
	everUp     bool
	reconnects uint64
	prevT      time.Time
	open       *Outage
	outages    []Outage // oldest first, at most MaxOutages, open one not included
}

// Run samples the sources every SampleEvery until ctx is done. The gateway
// runs it for its lifetime; without it, Status and /metrics have no rates
// (WindowSeconds 0), no history and no outages.
func (m *Metrics) Run(ctx context.Context) {
	t := time.NewTicker(m.opts.SampleEvery)
	defer t.Stop()
	m.sample(m.opts.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.sample(m.opts.Now())
		}
	}
}

// sample reads the sources once (outside the lock: they take their own)
// and folds the reading in.
func (m *Metrics) sample(now time.Time) {
	var s sample
	s.t = now
	if m.opts.Spool != nil {
		st := m.opts.Spool.Stats()
		s.accepted, s.acked, s.backlog = st.Accepted, st.Acked, st.Messages
	}
	var b BridgeStats
	haveBridge := m.opts.Bridge != nil
	if haveBridge {
		b = m.opts.Bridge()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	sm := &m.smp
	if m.opts.Spool != nil {
		sm.addSample(s)
	}
	if haveBridge {
		sm.observeLink(now, b, s.backlog)
	}
	sm.prevT = now
}

func (sm *sampler) addSample(s sample) {
	if n := len(sm.recent); n > 0 {
		last := sm.recent[n-1]
		if s.accepted < last.accepted || s.acked < last.acked || s.t.Before(last.t) {
			// Counters reset (spool reopened) or the clock went back:
			// measure afresh.
			sm.recent = sm.recent[:0]
			sm.hist = sm.hist[:0]
		}
	}
	sm.recent = append(sm.recent, s)
	// Keep the newest sample at least RateWindow old as the base.
	drop := 0
	for drop+1 < len(sm.recent) && s.t.Sub(sm.recent[drop+1].t) >= RateWindow {
		drop++
	}
	sm.recent = append(sm.recent[:0], sm.recent[drop:]...)
	sm.addHistory(s)
}

func (sm *sampler) addHistory(s sample) {
	step := s.t.Truncate(HistoryStep)
	n := len(sm.hist)
	if n == 0 || !sm.hist[n-1].last.t.Truncate(HistoryStep).Equal(step) {
		base := s
		if n > 0 {
			base = sm.hist[n-1].last
		}
		sm.hist = append(sm.hist, histPoint{base: base})
		n++
	}
	p := &sm.hist[n-1]
	p.last, p.t, p.backlog = s, s.t, s.backlog
	if dt := s.t.Sub(p.base.t).Seconds(); dt > 0 {
		p.accepted = float64(s.accepted-p.base.accepted) / dt
		p.acked = float64(s.acked-p.base.acked) / dt
	}
	// An hour, by count and by age (the sampler may have been stopped).
	drop := max(0, len(sm.hist)-HistoryLength)
	for drop < len(sm.hist)-1 && s.t.Sub(sm.hist[drop].t) >= time.Duration(HistoryLength)*HistoryStep {
		drop++
	}
	if drop > 0 {
		sm.hist = append(sm.hist[:0], sm.hist[drop:]...)
	}
}

// rates are the current rates: over the last RateWindow, and for the ETA
// over the part of it since the link came up.
func (sm *sampler) rates(now time.Time) Rates {
	var r Rates
	n := len(sm.recent)
	if n < 2 {
		return r
	}
	last := sm.recent[n-1]
	if now.Sub(last.t) > RateWindow {
		return r // the sampler stopped: nothing current to say
	}
	base := sm.recent[0]
	dt := last.t.Sub(base.t).Seconds()
	if dt <= 0 {
		return r
	}
	r.WindowSeconds, r.AckedWindowSeconds = dt, dt
	r.AcceptedPerSecond = float64(last.accepted-base.accepted) / dt
	r.drainAccepted = r.AcceptedPerSecond
	r.drainAcked = float64(last.acked-base.acked) / dt
	if !sm.upSince.IsZero() && sm.upSince.After(base.t) {
		// The link came up inside the window: the time before does not
		// tell how fast it drains (nor do the messages that arrived
		// during the outage). From the first sample taken with it up.
		b := last
		for _, s := range sm.recent {
			if !s.t.Before(sm.upSince) {
				b = s
				break
			}
		}
		d := last.t.Sub(b.t).Seconds()
		r.AckedWindowSeconds, r.drainAccepted, r.drainAcked = d, 0, 0
		if d > 0 {
			r.drainAccepted = float64(last.accepted-b.accepted) / d
			r.drainAcked = float64(last.acked-b.acked) / d
		}
	}
	r.AckedPerSecond = r.drainAcked
	if r.AckedWindowSeconds > 0 {
		r.DrainPerSecond = r.drainAcked - r.drainAccepted
	}
	return r
}

// drain is the drain state and ETA for a backlog of which leased messages
// are in transit, with the link up or not, at rates r.
func drain(backlog int64, leased int, linkUp bool, r Rates) (string, float64) {
	switch {
	case backlog <= 0:
		return DrainEmpty, 0
	case !linkUp || r.drainAcked <= 0:
		return DrainStopped, -1
	case float64(backlog) <= max(float64(leased), r.drainAcked): // at most a second's worth, or all of it in flight
		return DrainKeepingUp, roundTo(float64(backlog)/r.drainAcked, 1)
	case r.drainAcked > r.drainAccepted:
		return DrainDraining, math.Ceil(float64(backlog) / (r.drainAcked - r.drainAccepted))
	}
	return DrainGrowing, -1
}

// observeLink follows the summarised link state for the outage list and
// the time the link came up.
func (sm *sampler) observeLink(now time.Time, b BridgeStats, backlog int64) {
	state := summarizeLinks(b.Links)
	reconnected := b.Reconnects > sm.reconnects
	sm.reconnects = b.Reconnects
	if state == LinkUp {
		since := upSince(b.Links)
		switch {
		case sm.open != nil:
			o := *sm.open
			sm.open = nil
			o.End = since
			if o.End.Before(o.Start) || o.End.After(now) {
				o.End = now
			}
			o.Ongoing = false
			o.DurationSeconds = o.End.Sub(o.Start).Seconds()
			o.LastError = lastError(b.Links, o.Start, o.LastError)
			sm.addOutage(o)
		case reconnected && sm.everUp:
			// Down and up again between two samples: only the reconnect
			// and the cause the bridge recorded show it.
			start := sm.prevT
			if t, _ := newestError(b.Links); t.After(start) && t.Before(since) {
				start = t
			}
			if since.After(start) {
				sm.addOutage(Outage{Start: start, End: since, DurationSeconds: since.Sub(start).Seconds(),
					LastError: lastError(b.Links, start, ""), BacklogPeak: backlog})
			}
		}
		if sm.upSince.IsZero() || since.After(sm.upSince) {
			sm.upSince = since
		}
		sm.everUp, sm.lastUp = true, now
		return
	}
	sm.upSince = time.Time{}
	if sm.open == nil {
		// Before the link was ever up, connecting (and down: the bridge
		// not started yet) is not an outage; a failed attempt is.
		if !sm.everUp && (state == LinkConnecting || state == LinkDown) {
			return
		}
		sm.open = &Outage{Start: outageStart(b.Links, sm.lastUp, now), Ongoing: true, State: state}
	}
	o := sm.open
	if severity(state) < severity(o.State) {
		o.State = state
	}
	o.LastError = lastError(b.Links, o.Start, o.LastError)
	o.BacklogPeak = max(o.BacklogPeak, backlog)
}

func (sm *sampler) addOutage(o Outage) {
	if len(sm.outages) == MaxOutages {
		sm.outages = append(sm.outages[:0], sm.outages[1:]...)
	}
	sm.outages = append(sm.outages, o)
}

// outageList returns the outages newest first, the ongoing one (its
// duration up to now) at the top.
func (sm *sampler) outageList(now time.Time) []Outage {
	out := make([]Outage, 0, len(sm.outages)+1)
	if sm.open != nil {
		o := *sm.open
		o.DurationSeconds = max(0, now.Sub(o.Start).Seconds())
		out = append(out, o)
	}
	for i := len(sm.outages) - 1; i >= 0; i-- {
		out = append(out, sm.outages[i])
	}
	return out
}

func (sm *sampler) history() *History {
	h := &History{StepSeconds: HistoryStep.Seconds(), T: []int64{}, Backlog: []int64{}, Accepted: []float64{}, Acked: []float64{}}
	for _, p := range sm.hist {
		h.T = append(h.T, p.t.Unix())
		h.Backlog = append(h.Backlog, p.backlog)
		h.Accepted = append(h.Accepted, roundTo(p.accepted, 1))
		h.Acked = append(h.Acked, roundTo(p.acked, 1))
	}
	return h
}

// upSince is when the last partition came up.
func upSince(links []LinkStats) time.Time {
	var t time.Time
	for _, l := range links {
		if l.Since.After(t) {
			t = l.Since
		}
	}
	return t
}

// outageStart is when the link went down: the earliest of the partitions
// that are not up, each from its recorded error if that came after the
// link was last seen up (it precedes the backoff), else from when it
// entered its state.
func outageStart(links []LinkStats, lastUp, now time.Time) time.Time {
	start := now
	for _, l := range links {
		if l.State == LinkUp {
			continue
		}
		t := l.Since
		if l.LastErrorAt.After(lastUp) && (t.IsZero() || l.LastErrorAt.Before(t)) {
			t = l.LastErrorAt
		}
		if !t.IsZero() && t.Before(start) {
			start = t
		}
	}
	if start.Before(lastUp) {
		start = lastUp
	}
	return start
}

func newestError(links []LinkStats) (time.Time, string) {
	var t time.Time
	var e string
	for _, l := range links {
		if l.LastError != "" && l.LastErrorAt.After(t) {
			t, e = l.LastErrorAt, l.LastError
		}
	}
	return t, e
}

// lastError is the newest error recorded at or after start, else prev.
func lastError(links []LinkStats, start time.Time, prev string) string {
	if t, e := newestError(links); e != "" && !t.Before(start) {
		return e
	}
	return prev
}

// severity orders link states as LinkStates does: 0 is the worst.
func severity(s string) int {
	for i, x := range LinkStates {
		if x == s {
			return i
		}
	}
	if s == "partial" {
		return len(LinkStates) - 1 // better than any single failed state, not up
	}
	return len(LinkStates)
}

func roundTo(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}
