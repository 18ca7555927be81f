package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// settings are the knobs of one benchmark run. Every scenario is bounded
// in count and in time; the bounds here are the defaults of a full run,
// BENCH_QUICK=1 shrinks them to seconds.
type settings struct {
	Quick       bool    `json:"quick"`
	Full        bool    `json:"full"`
	Runs        int     `json:"runs"`         // runs per system and scenario, alternating
	Window      int     `json:"window"`       // publishes in flight per publisher; also both bridges' in-flight window
	Partitions  int     `json:"partitions"`   // Ferry's bridge.partitions in the extra store-and-forward runs; <2: none
	FerryFormat string  `json:"ferry_format"` // bridge.format of Ferry
	Scale       float64 `json:"guard_scale"`  // multiplies every hang guard (the test passes FERRY_TEST_TIMEOUT_SCALE)

	LinkUpCount   int           `json:"linkup_count"`  // messages per run, all publishers together
	LinkUpFor     time.Duration `json:"linkup_for_ns"` // longest send phase
	FixedRate     float64       `json:"fixed_rate"`    // per publisher, messages/s
	FixedFor      time.Duration `json:"fixed_for_ns"`
	OfflineCount  int           `json:"offline_count"`
	OfflineFor    time.Duration `json:"offline_for_ns"`
	BacklogCounts []int         `json:"backlog_counts"` // store-and-forward backlogs
	BacklogFor    time.Duration `json:"backlog_for_ns"` // longest ingest phase of a backlog, and longest drain
	BigRuns       int           `json:"big_runs"`       // runs of a backlog of 1M or more (each takes minutes)

	Settle     time.Duration `json:"settle_ns"`      // nothing new arrived for this long: stop waiting for the rest
	AckGuard   time.Duration `json:"ack_guard_ns"`   // after the send phase, longest wait for outstanding acks
	StartGuard time.Duration `json:"start_guard_ns"` // edge start, bridge up, clients connected
}

func defaultSettings() settings {
	return settings{
		Runs: 3, Window: 64, Partitions: 4, FerryFormat: "raw", Scale: 1,
		LinkUpCount: 30_000, LinkUpFor: 15 * time.Second,
		FixedRate: 250, FixedFor: 10 * time.Second,
		OfflineCount: 30_000, OfflineFor: 15 * time.Second,
		BacklogCounts: []int{100_000}, BacklogFor: 3 * time.Minute, BigRuns: 1,
		Settle: 10 * time.Second, AckGuard: 30 * time.Second, StartGuard: 30 * time.Second,
	}
}

// quickSettings is BENCH_QUICK=1: every scenario, small counts, one run
// per system, seconds in all.
func quickSettings() settings {
	s := defaultSettings()
	s.Quick, s.Runs = true, 1
	s.LinkUpCount, s.LinkUpFor = 1_500, 5*time.Second
	s.FixedFor = 1500 * time.Millisecond
	s.OfflineCount, s.OfflineFor = 2_000, 5*time.Second
	s.BacklogCounts, s.BacklogFor = []int{5_000}, 30*time.Second
	s.Settle = 5 * time.Second
	return s
}

// settingsFromEnv reads BENCH_QUICK, BENCH_FULL (adds the 1M backlog unless
// quick), BENCH_RUNS, BENCH_WINDOW, BENCH_PARTITIONS and BENCH_FERRY_FORMAT.
func settingsFromEnv(getenv func(string) string) (settings, error) {
	s := defaultSettings()
	if getenv("BENCH_QUICK") == "1" {
		s = quickSettings()
	}
	if getenv("BENCH_FULL") == "1" && !s.Quick {
		s.Full = true
		s.BacklogCounts = append(s.BacklogCounts, 1_000_000)
		s.BacklogFor = 15 * time.Minute
	}
	ints := []struct {
		name string
		dst  *int
		min  int
	}{
		{"BENCH_RUNS", &s.Runs, 1}, {"BENCH_WINDOW", &s.Window, 1}, {"BENCH_PARTITIONS", &s.Partitions, 0},
	}
	for _, e := range ints {
		v := getenv(e.name)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < e.min || n > 65535 {
			return s, fmt.Errorf("%s: want an integer %d..65535 (got %q)", e.name, e.min, v)
		}
		*e.dst = n
	}
	if v := getenv("BENCH_FERRY_FORMAT"); v != "" {
		if v != "raw" && v != "envelope" {
			return s, fmt.Errorf("BENCH_FERRY_FORMAT: want raw or envelope (got %q)", v)
		}
		s.FerryFormat = v
	}
	return s, nil
}

func envSettings() (settings, error) { return settingsFromEnv(os.Getenv) }

// guard scales a hang guard.
func (s settings) guard(d time.Duration) time.Duration {
	if s.Scale <= 0 {
		return d
	}
	return time.Duration(float64(d) * s.Scale)
}

// Scenario kinds.
const (
	kindLinkUp  = "linkup"  // link up, max rate
	kindFixed   = "fixed"   // link up, fixed rate
	kindOffline = "offline" // uplink down, max rate, ingest only
	kindBacklog = "backlog" // uplink down, ingest a backlog, uplink up, drain
	kindDrain   = "drain"   // the backlog drained into each kind of upstream, delivery checked
)

// scenario is one row group of the table.
type scenario struct {
	ID         string        `json:"id"`
	Title      string        `json:"title"`
	Kind       string        `json:"kind"`
	Publishers int           `json:"publishers"`
	Count      int           `json:"count"`                  // messages in all, bound
	Rate       float64       `json:"rate_per_publisher"`     // 0: max rate
	SendFor    time.Duration `json:"send_for_ns"`            // bound of the send (ingest) phase
	DrainFor   time.Duration `json:"drain_for_ns,omitempty"` // bound of the drain phase
	Runs       int           `json:"runs"`
	Systems    []system      `json:"systems"`
}

// perPublisher is each publisher's share of Count, rounded up.
func (sc scenario) perPublisher() int { return (sc.Count + sc.Publishers - 1) / sc.Publishers }

func scenarios(s settings) []scenario {
	both := []system{sysFerry, sysMosquitto}
	var out []scenario
	for _, n := range []int{1, 8, 64} {
		out = append(out, scenario{
			ID: fmt.Sprintf("linkup-%d", n), Title: fmt.Sprintf("link up, max rate, %d publisher%s", n, plural(n)),
			Kind: kindLinkUp, Publishers: n, Count: s.LinkUpCount, SendFor: s.LinkUpFor, Runs: s.Runs, Systems: both,
		})
	}
	fixedPubs := 8
	out = append(out, scenario{
		ID: "fixed-2000", Title: fmt.Sprintf("fixed %s msg/s (%d × %g/s)", num(s.FixedRate*float64(fixedPubs), 0), fixedPubs, s.FixedRate),
		Kind: kindFixed, Publishers: fixedPubs, Rate: s.FixedRate,
		// The count ends the send phase; the time bound leaves room for a
		// system that falls behind, whose late sends count as latency.
		Count: int(s.FixedRate * s.FixedFor.Seconds() * float64(fixedPubs)), SendFor: 2*s.FixedFor + 10*time.Second,
		Runs: s.Runs, Systems: both,
	})
	out = append(out, scenario{
		ID: "offline-8", Title: "offline ingest (uplink down), 8 publishers",
		Kind: kindOffline, Publishers: 8, Count: s.OfflineCount, SendFor: s.OfflineFor, Runs: s.Runs, Systems: both,
	})
	for _, n := range s.BacklogCounts {
		sys := both
		if s.Partitions > 1 {
			sys = append(sys[:len(sys):len(sys)], sysFerryPartitions(s.Partitions))
		}
		runs := s.Runs
		if n >= 1_000_000 {
			runs = min(runs, s.BigRuns)
		}
		out = append(out, scenario{
			ID: fmt.Sprintf("backlog-%s", countLabel(n)), Title: fmt.Sprintf("store-and-forward, %s backlog, 8 publishers", countLabel(n)),
			Kind: kindBacklog, Publishers: 8, Count: n, SendFor: s.BacklogFor, DrainFor: s.BacklogFor, Runs: runs, Systems: sys,
		})
	}
	// The drain per upstream kind: the first backlog once more, with
	// Ferry bridging to MQTT 3.1.1, MQTT 5 and JetStream, and Mosquitto's
	// own MQTT 3.1.1 bridge in the same rotation as the reference.
	n := s.BacklogCounts[0]
	out = append(out, scenario{
		ID: "drain-kinds-" + countLabel(n), Title: fmt.Sprintf("drain per upstream kind, %s backlog, 8 publishers", countLabel(n)),
		Kind: kindDrain, Publishers: 8, Count: n, SendFor: s.BacklogFor, DrainFor: s.BacklogFor, Runs: s.Runs,
		Systems: []system{sysFerryUpstream(upstreamMQTT311), sysFerryUpstream(upstreamMQTT5), sysFerryUpstream(upstreamJetStream), sysMosquitto},
	})
	return out
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func countLabel(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}
