package gateway

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry/spool"
)

// fakeLink is a bridge whose one partition the test moves between states.
type fakeLink struct {
	mu sync.Mutex
	s  BridgeStats
}

func (f *fakeLink) stats() BridgeStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.s
	s.Links = append([]LinkStats(nil), f.s.Links...)
	return s
}

// to puts the partition into state now; err, when set, is recorded as the
// bridge records a failed attempt or a cut.
func (f *fakeLink) to(state, err string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if len(f.s.Links) == 0 {
		f.s.Links = []LinkStats{{}}
	}
	l := &f.s.Links[0]
	if state == LinkUp && l.State != LinkUp && !l.Since.IsZero() {
		f.s.Reconnects++
	}
	l.State, l.Since = state, now
	if err != "" {
		l.LastError, l.LastErrorAt = err, now
	}
}

// runSampler runs m's sampler until the test ends.
func runSampler(t *testing.T, m *Metrics) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestAckedRateWhileDraining: a page loaded during a drain that nobody
// watched before shows the delivery rate and the ETA (it showed "acked/s
// 0.0" and no ETA: rates were sampled only when the page was read).
func TestAckedRateWhileDraining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := &fakeSpool{}
		sp.set(func(s *spool.Stats) { s.Messages = 20000 })
		link := &fakeLink{}
		link.to(LinkUp, "")
		m := NewMetrics(MetricsOptions{Spool: sp, Bridge: link.stats})
		runSampler(t, m)
		// Between the sampler's ticks (every second from 0): 1000 acked and
		// 100 accepted per second, and nobody reads.
		time.Sleep(500 * time.Millisecond)
		for range 9 {
			sp.set(func(s *spool.Stats) { s.Acked += 1000; s.Accepted += 100; s.Messages -= 900 })
			time.Sleep(time.Second)
		}
		st := m.Status()
		if st.Rates.AckedPerSecond != 1000 || st.Rates.AcceptedPerSecond != 100 {
			t.Errorf("first read after 9 s of draining: acked/s %v, accepted/s %v, want 1000 and 100", st.Rates.AckedPerSecond, st.Rates.AcceptedPerSecond)
		}
		// 11,900 left, shrinking by 900 a second.
		if st.DrainETA != 14 {
			t.Errorf("drain ETA %v, want 14 s (11900 / (1000 − 100) per second)", st.DrainETA)
		}
		if got := gather(t, m)["ferry_bridge_ack_rate_messages_per_second"]; got != 1000 {
			t.Errorf("ferry_bridge_ack_rate_messages_per_second = %v, want 1000", got)
		}
	})
}

// TestDrainETAOnlyWhileLinkUp: with the link in backoff there is no drain
// ETA (-1), even though acks from before the cut are inside the rate
// window (the page showed "drain ETA 1m59s"); once the link is back the
// ETA is computed from the rate since it came up.
func TestDrainETAOnlyWhileLinkUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := &fakeSpool{}
		sp.set(func(s *spool.Stats) { s.Messages = 1000 })
		link := &fakeLink{}
		link.to(LinkUp, "")
		m := NewMetrics(MetricsOptions{Spool: sp, Bridge: link.stats})
		runSampler(t, m)
		// A page reads every second, between the sampler's ticks.
		time.Sleep(500 * time.Millisecond)
		step := func(acked uint64) Status {
			sp.set(func(s *spool.Stats) { s.Acked += acked; s.Messages -= int64(acked) })
			time.Sleep(time.Second)
			return m.Status()
		}
		for range 5 {
			step(100)
		}
		link.to(LinkBackoff, "dial tcp 127.0.0.1:1883: connect: connection refused")
		for i := range 3 {
			st := step(0)
			if st.Rates.AckedPerSecond == 0 {
				t.Fatalf("%d s into the backoff: acked/s 0: the test wants acks from before the cut in the window", i+1)
			}
			if st.DrainETA != -1 {
				t.Errorf("%d s into the backoff: drain ETA %v, want -1 (not draining); backlog %d, acked/s %v", i+1, st.DrainETA, st.Spool.Messages, st.Rates.AckedPerSecond)
			}
			if got := gather(t, m)["ferry_bridge_drain_eta_seconds"]; got != -1 {
				t.Errorf("%d s into the backoff: ferry_bridge_drain_eta_seconds = %v, want -1", i+1, got)
			}
		}
		link.to(LinkUp, "")
		var st Status
		for range 3 {
			st = step(50)
		}
		// 350 left; since the link came up: 50/s.
		if st.DrainETA != 7 {
			t.Errorf("3 s after the link came back at 50/s: drain ETA %v, want 7 s (350 / 50 per second); rates %+v", st.DrainETA, st.Rates)
		}
	})
}

// TestRatesWindow: rates cover the last RateWindow of samples, decay to 0
// when nothing moves, restart when the spool's counters go back (the file
// was reopened), and are not reported once the sampler stopped.
func TestRatesWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := &fakeSpool{}
		sp.set(func(s *spool.Stats) { s.Messages = 100 })
		m := NewMetrics(MetricsOptions{Spool: sp})
		if st := m.Status(); st.Rates.WindowSeconds != 0 || st.DrainETA != -1 || st.DrainState != DrainStopped {
			t.Fatalf("before the first sample: %+v, eta %v %s", st.Rates, st.DrainETA, st.DrainState)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); m.Run(ctx) }()
		time.Sleep(500 * time.Millisecond)
		for range 4 {
			sp.set(func(s *spool.Stats) { s.Accepted += 30; s.Acked += 10 })
			time.Sleep(time.Second)
		}
		if r := m.Status().Rates; r.AcceptedPerSecond != 30 || r.AckedPerSecond != 10 || r.WindowSeconds != 4 {
			t.Errorf("after 4 s: %+v, want 30/s, 10/s over 4 s", r)
		}
		// Nothing for longer than the window: back to 0, over the full window.
		time.Sleep(RateWindow + time.Second)
		if r := m.Status().Rates; r.AcceptedPerSecond != 0 || r.AckedPerSecond != 0 || r.WindowSeconds != RateWindow.Seconds() {
			t.Errorf("idle: %+v, want 0/s over %v", r, RateWindow)
		}
		// Counters back to small numbers: measured afresh, not negative.
		sp.set(func(s *spool.Stats) { s.Accepted, s.Acked = 1, 1 })
		time.Sleep(time.Second)
		if r := m.Status().Rates; r.WindowSeconds != 0 || r.AcceptedPerSecond != 0 {
			t.Errorf("after a counter reset: %+v, want no rate yet", r)
		}
		time.Sleep(2 * time.Second)
		if r := m.Status().Rates; r.WindowSeconds != 2 {
			t.Errorf("2 s after the reset: %+v", r)
		}
		cancel()
		<-done
		time.Sleep(RateWindow + time.Second)
		if r := m.Status().Rates; r.WindowSeconds != 0 {
			t.Errorf("sampler stopped %v ago: still reports %+v", RateWindow, r)
		}
	})
}

func TestDrainStates(t *testing.T) {
	r := func(acc, ack float64) Rates {
		return Rates{AcceptedPerSecond: acc, AckedPerSecond: ack, WindowSeconds: 10, drainAccepted: acc, drainAcked: ack}
	}
	tests := []struct {
		name    string
		backlog int64
		leased  int
		up      bool
		rates   Rates
		state   string
		eta     float64
	}{
		{"empty, link down", 0, 0, false, Rates{}, DrainEmpty, 0},
		{"empty, link up", 0, 0, true, r(50, 50), DrainEmpty, 0},
		{"link down", 500, 0, false, r(0, 300), DrainStopped, -1},
		{"link up, nothing acked yet", 500, 64, true, r(10, 0), DrainStopped, -1},
		{"keeping up: all of it in flight", 40, 40, true, r(20, 20), DrainKeepingUp, 2},
		{"keeping up: under a second's worth", 30, 5, true, r(100, 100), DrainKeepingUp, 0.3},
		{"draining", 9000, 64, true, r(100, 1000), DrainDraining, 10},
		{"draining, rounds up", 9001, 64, true, r(100, 1000), DrainDraining, 11},
		{"growing: paced below the arrival rate", 9000, 64, true, r(300, 200), DrainGrowing, -1},
		{"growing: as fast in as out", 9000, 64, true, r(200, 200), DrainGrowing, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state, eta := drain(tt.backlog, tt.leased, tt.up, tt.rates)
			if state != tt.state || eta != tt.eta {
				t.Errorf("drain(%d, %d, %v, %+v) = %s %v, want %s %v", tt.backlog, tt.leased, tt.up, tt.rates, state, eta, tt.state, tt.eta)
			}
		})
	}
}

// TestHistoryLastHour: two hours of samples leave one hour of 10 s steps,
// each with the step's average rates and its last backlog; the step in
// progress is the last one.
func TestHistoryLastHour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := &fakeSpool{}
		m := NewMetrics(MetricsOptions{Spool: sp})
		start := time.Now()
		runSampler(t, m)
		time.Sleep(500 * time.Millisecond)
		// 2 h: 5 accepted per second; from 1 h 30 m on, 20 acked per
		// second as well; backlog = accepted − acked.
		for i := 1; i <= 7200; i++ {
			sp.set(func(s *spool.Stats) {
				s.Accepted += 5
				if i > 5400 {
					s.Acked += 20
				}
				s.Messages = int64(s.Accepted) - int64(s.Acked)
			})
			time.Sleep(time.Second)
		}
		h := m.Status().History
		if h == nil || h.StepSeconds != HistoryStep.Seconds() {
			t.Fatalf("history %+v", h)
		}
		n := len(h.T)
		if n != HistoryLength || len(h.Backlog) != n || len(h.Accepted) != n || len(h.Acked) != n {
			t.Fatalf("history has %d steps (%d, %d, %d), want %d", n, len(h.Backlog), len(h.Accepted), len(h.Acked), HistoryLength)
		}
		now := time.Now()
		if last := time.Unix(h.T[n-1], 0); now.Sub(last) > time.Second {
			t.Errorf("last step at %v, now %v: the step in progress is missing", last, now)
		}
		if first := time.Unix(h.T[0], 0); now.Sub(first) >= time.Hour {
			t.Errorf("first step %v before now: more than the last hour", now.Sub(first))
		}
		for i := 1; i < n; i++ {
			// Closed steps end on the grid; the one in progress anywhere in
			// its step.
			if d := h.T[i] - h.T[i-1]; d != int64(HistoryStep.Seconds()) && (i < n-1 || d > int64(HistoryStep.Seconds())) {
				t.Fatalf("steps %d and %d (of %d) are %d s apart", i-1, i, n, d)
			}
		}
		// Step i covers the 10 s up to h.T[i]; the sample at second k saw k
		// updates (sampled at k s after start, updates at k−0.5 s).
		for i := range n {
			k := int(time.Unix(h.T[i], 0).Sub(start.Truncate(time.Second)).Seconds())
			wantAcked := 0.0
			if k-9 > 5400 {
				wantAcked = 20
			}
			backlog := int64(5 * k)
			if k > 5400 {
				backlog -= int64(20 * (k - 5400))
			}
			if h.Accepted[i] != 5 || (k-9 > 5400 || k <= 5400) && h.Acked[i] != wantAcked || h.Backlog[i] != backlog {
				t.Fatalf("step %d (second %d): accepted %v/s acked %v/s backlog %d, want 5/s, %v/s, %d", i, k, h.Accepted[i], h.Acked[i], h.Backlog[i], wantAcked, backlog)
			}
		}
	})
}

// TestOutages: an outage is recorded from the cut to the reconnection with
// its worst state, last error and backlog peak; one shorter than a sample
// is found from the reconnect count; the first connection is not an
// outage, a first attempt that fails is; the list keeps the last
// MaxOutages, newest first.
func TestOutages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := &fakeSpool{}
		link := &fakeLink{}
		link.to(LinkConnecting, "")
		m := NewMetrics(MetricsOptions{Spool: sp, Bridge: link.stats})
		runSampler(t, m)
		time.Sleep(2500 * time.Millisecond)
		link.to(LinkUp, "")
		time.Sleep(2 * time.Second)
		if o := m.Status().Outages; len(o) != 0 {
			t.Fatalf("connecting at start is an outage: %+v", o)
		}

		cut := time.Now()
		link.to(LinkBackoff, "EOF")
		sp.set(func(s *spool.Stats) { s.Messages = 300 })
		time.Sleep(2 * time.Second)
		link.to(LinkConnecting, "")
		time.Sleep(time.Second)
		link.to(LinkBackoff, "dial tcp: connection refused")
		sp.set(func(s *spool.Stats) { s.Messages = 500 })
		time.Sleep(3 * time.Second)
		o := m.Status().Outages
		if len(o) != 1 || !o[0].Ongoing || !o[0].Start.Equal(cut) || o[0].DurationSeconds != time.Since(cut).Seconds() ||
			o[0].State != LinkBackoff || o[0].LastError != "dial tcp: connection refused" || o[0].BacklogPeak != 500 {
			t.Fatalf("ongoing outage: %+v", o)
		}
		link.to(LinkConnecting, "")
		time.Sleep(time.Second)
		back := time.Now()
		link.to(LinkUp, "")
		time.Sleep(2 * time.Second)
		o = m.Status().Outages
		if len(o) != 1 || o[0].Ongoing || !o[0].End.Equal(back) || o[0].DurationSeconds != back.Sub(cut).Seconds() {
			t.Fatalf("after the reconnection: %+v (cut %v, back %v)", o, cut, back)
		}

		// Down and up between two samples.
		time.Sleep(200 * time.Millisecond)
		short := time.Now()
		link.to(LinkBackoff, "stalled")
		time.Sleep(200 * time.Millisecond)
		link.to(LinkUp, "")
		time.Sleep(2 * time.Second)
		o = m.Status().Outages
		if len(o) != 2 || !o[0].Start.Equal(short) || o[0].DurationSeconds != 0.2 || o[0].LastError != "stalled" || o[0].State != "" {
			t.Fatalf("short outage: %+v", o)
		}

		for i := range MaxOutages + 3 {
			link.to(LinkStalled, "no ack "+string(rune('a'+i)))
			time.Sleep(2 * time.Second)
			link.to(LinkUp, "")
			time.Sleep(2 * time.Second)
		}
		o = m.Status().Outages
		if len(o) != MaxOutages || o[0].LastError != "no ack "+string(rune('a'+MaxOutages+2)) || o[0].State != LinkStalled {
			t.Fatalf("after %d more: %d outages, newest %+v", MaxOutages+3, len(o), o[0])
		}
	})

	synctest.Test(t, func(t *testing.T) {
		link := &fakeLink{}
		link.to(LinkConnecting, "")
		m := NewMetrics(MetricsOptions{Bridge: link.stats})
		runSampler(t, m)
		time.Sleep(1500 * time.Millisecond)
		failed := time.Now()
		link.to(LinkBackoff, "dial tcp: connection refused")
		time.Sleep(time.Second)
		if o := m.Status().Outages; len(o) != 1 || !o[0].Start.Equal(failed) || !o[0].Ongoing {
			t.Fatalf("a failed first attempt: %+v", o)
		}
	})
}

// TestDrainAfterShortOutage: what devices sent during an outage shorter
// than a tick is not an arrival rate of the drain that follows (the page
// said "growing" while 5000 spooled messages drained).
func TestDrainAfterShortOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sp := &fakeSpool{}
		link := &fakeLink{}
		link.to(LinkUp, "")
		m := NewMetrics(MetricsOptions{Spool: sp, Bridge: link.stats})
		runSampler(t, m)
		time.Sleep(200 * time.Millisecond)
		link.to(LinkBackoff, "EOF")
		time.Sleep(100 * time.Millisecond)
		sp.set(func(s *spool.Stats) { s.Accepted, s.Messages = 5000, 5000 })
		time.Sleep(500 * time.Millisecond)
		link.to(LinkUp, "") // at 0.8 s
		for range 3 {
			time.Sleep(time.Second)
			sp.set(func(s *spool.Stats) { s.Acked += 100; s.Messages -= 100 })
		}
		time.Sleep(time.Second) // samples at 1 … 4 s; 1 s is the first with the link up
		st := m.Status()
		if st.DrainState != DrainDraining || st.DrainETA != 47 {
			t.Fatalf("drain %s, ETA %v, want draining, 47 s (4700 at 100/s); rates %+v", st.DrainState, st.DrainETA, st.Rates)
		}
		// Delivered/s since the link came up, not averaged with the
		// outage; accepted/s over the whole window.
		if r := st.Rates; r.AckedPerSecond != 100 || r.AckedWindowSeconds != 3 || r.DrainPerSecond != 100 || r.AcceptedPerSecond != 1250 || r.WindowSeconds != 4 {
			t.Errorf("rates %+v, want 100/s delivered over 3 s, 1250/s accepted over 4 s, 100/s net", r)
		}
	})
}
