package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/natsserver"
	"github.com/ferrymq/ferry/internal/testkit"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// ferryBinary builds ./cmd/ferry of this checkout once for the package's
// tests.
func ferryBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "bench-compare-test-"); buildErr != nil {
			return
		}
		wd, err := os.Getwd()
		if err != nil {
			buildErr = err
			return
		}
		root, err := moduleRoot(wd)
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(5*time.Minute))
		defer cancel()
		buildBin, buildErr = buildFerry(ctx, root, buildDir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// requireMosquitto skips under -short or without mosquitto or nats-server,
// and fails instead when CI=true: the comparison needs mosquitto as the
// upstream and as the system compared, and nats-server as the JetStream
// upstream.
func requireMosquitto(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs ferry and mosquitto: skipped with -short")
	}
	if mosquittoPath() == "" {
		msg := "mosquitto not found: apt-get install mosquitto (or set MOSQUITTO=/path/to/mosquitto)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true)")
		}
		t.Skip(msg)
	}
	if natsserver.Path() == "" {
		msg := "nats-server not found (the JetStream upstream of the drain per upstream kind): apt-get install nats-server (or set NATS_SERVER=/path)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true)")
		}
		t.Skip(msg)
	}
}

// TestGeneratedFerryConfigPassesCheck runs `ferry check` on every edge
// configuration the harness generates, so that a change of the gateway's
// schema shows up here and not as a benchmark that cannot start.
func TestGeneratedFerryConfigPassesCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs ferry: skipped with -short")
	}
	bin := ferryBinary(t)
	dir := t.TempDir()
	for _, upstream := range []string{upstreamMQTT311, upstreamMQTT5, upstreamJetStream} {
		for _, format := range []string{"raw", "envelope"} {
			for _, partitions := range []int{1, 4} {
				e := edgeEnv{dir: dir, port: 18830, uplink: "127.0.0.1:18831", window: 64, upstream: upstream}
				conf := filepath.Join(dir, fmt.Sprintf("ferry-%s-%s-%d.yaml", upstream, format, partitions))
				if err := os.WriteFile(conf, []byte(ferryConfig(e, partitions, format)), 0o600); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command(bin, "check", "-c", conf).CombinedOutput()
				if err != nil {
					t.Errorf("upstream %s, format %s, partitions %d: ferry check: %v\n%s", upstream, format, partitions, err, out)
				}
			}
		}
	}
}

func TestBadUsage(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
	}{
		"bad regexp":     {args: []string{"-only", "("}},
		"argument":       {args: []string{"extra"}},
		"unknown flag":   {args: []string{"-nope"}},
		"bad BENCH_RUNS": {env: map[string]string{"BENCH_RUNS": "0"}},
	} {
		t.Run(name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out, errOut bytes.Buffer
			if code := run(context.Background(), tc.args, &out, &errOut); code != 2 {
				t.Errorf("exit %d, want 2 (stderr %q)", code, errOut.String())
			}
		})
	}
}

// TestQuickBenchmark is BENCH_QUICK=1 end to end: both systems measured in
// every scenario, counts that add up, nothing lost and nothing reordered by
// Ferry. It asserts outcomes, never how fast anything was.
func TestQuickBenchmark(t *testing.T) {
	requireMosquitto(t)
	bin := ferryBinary(t)
	s := quickSettings()
	s.Scale = testkit.Scale()
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(5*time.Minute))
	defer cancel()
	var progress bytes.Buffer
	rep, err := benchmark(ctx, s, options{ferryBin: bin}, &progress)
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatalf("benchmark: %v", err)
	}
	md := rep.markdown()
	t.Logf("table:\n%s", md)

	if len(rep.Ceilings) != 2 {
		t.Errorf("load generator ceiling measured %d times, want before and after", len(rep.Ceilings))
	}
	for _, c := range rep.Ceilings {
		if c.Error != "" || c.DirectMsgsPerS <= 0 || c.BacklogMsgsPerS <= 0 {
			t.Errorf("load generator ceiling not measured: %+v", c)
		}
	}
	want := scenarios(s)
	if len(rep.Scenarios) != len(want) {
		t.Fatalf("%d scenarios measured, want %d", len(rep.Scenarios), len(want))
	}
	for i, sc := range rep.Scenarios {
		if sc.ID != want[i].ID {
			t.Errorf("scenario %d is %s, want %s", i, sc.ID, want[i].ID)
		}
		runs := map[string]int{}
		for _, r := range sc.Results {
			runs[r.System]++
			checkRun(t, sc.scenario, r)
		}
		for _, sys := range sc.Systems {
			if runs[sys.Key] != sc.Runs {
				t.Errorf("%s: %s ran %d times, want %d", sc.ID, sys.Label, runs[sys.Key], sc.Runs)
			}
			if sc.Summary[sys.Key] == nil {
				t.Errorf("%s: no summary for %s", sc.ID, sys.Label)
			}
		}
		for _, sys := range sc.Systems {
			if sys.Kind != kindFerry {
				continue
			}
			for _, row := range tableRows[sc.Kind] {
				// No ratio is right when Mosquitto's figure is 0: its CPU
				// over a quick run's few thousand messages can stay under
				// one 10 ms tick (the table shows "—").
				if _, ok := sc.Ratios[sys.Key][row.key]; !ok && row.key != "counts" && !zeroReference(sc, row.key) {
					t.Errorf("%s: no ratio %s for %s", sc.ID, row.key, sys.Label)
				}
			}
		}
	}
	if rep.Errors != 0 {
		t.Errorf("%d runs failed", rep.Errors)
	}
	if strings.Contains(md, "| error |") {
		t.Errorf("table has error cells:\n%s", md)
	}
	for _, w := range []string{rep.Machine.CPU, rep.Machine.Mosquitto, rep.Machine.GoVersion, "load average"} {
		if w == "" || !strings.Contains(md, w) {
			t.Errorf("table header lacks %q", w)
		}
	}

	// The files: markdown as printed, JSON that reads back with every figure.
	dir := t.TempDir()
	if err := writeReport(dir, rep, md); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "bench-compare.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("JSON does not read back: %v", err)
	}
	if len(back.Scenarios) != len(rep.Scenarios) || len(back.Scenarios[0].Results) != len(rep.Scenarios[0].Results) {
		t.Errorf("JSON lost results")
	}
}

// checkRun asserts that one run's counts are consistent, and for Ferry
// that nothing it acknowledged was lost or reordered.
func checkRun(t *testing.T, sc scenario, r runResult) {
	t.Helper()
	f := r.Figures
	where := fmt.Sprintf("%s/%s run %d", sc.ID, r.System, r.Rep)
	if r.Error != "" {
		t.Errorf("%s: %s", where, r.Error)
		return
	}
	sent, acked, failed := f["sent"], f["acked"], f["failed"]
	if sent <= 0 || sent > float64(sc.Count) {
		t.Errorf("%s: sent %v, want 1..%d", where, sent, sc.Count)
	}
	if acked <= 0 || acked+failed != sent {
		t.Errorf("%s: acked %v + failed %v != sent %v", where, acked, failed, sent)
	}
	isFerry := strings.HasPrefix(r.System, kindFerry)
	if isFerry && failed != 0 {
		t.Errorf("%s: %v publishes failed", where, failed)
	}
	if sc.Kind == kindOffline || sc.Kind == kindBacklog || sc.Kind == kindDrain {
		if f["arrived_while_offline"] != 0 {
			t.Errorf("%s: %v messages arrived while the uplink was down", where, f["arrived_while_offline"])
		}
		if f["ingest_msgs_per_s"] <= 0 {
			t.Errorf("%s: no ingest rate", where)
		}
	}
	if sc.Kind == kindOffline {
		return
	}
	arrived, arrivedAcked, lost := f["arrived"], f["arrived_acked"], f["lost"]
	if arrived > sent || arrivedAcked > arrived || arrivedAcked > acked || lost != acked-arrivedAcked {
		t.Errorf("%s: inconsistent: sent %v acked %v arrived %v arrived_acked %v lost %v", where, sent, acked, arrived, arrivedAcked, lost)
	}
	if f["foreign"] != 0 {
		t.Errorf("%s: %v messages upstream that no publisher of this run sent", where, f["foreign"])
	}
	if isFerry && (lost != 0 || f["order_violations"] != 0) {
		t.Errorf("%s: Ferry lost %v and reordered %v acknowledged messages", where, lost, f["order_violations"])
	}
	if sc.Kind == kindDrain && (acked != float64(sc.Count) || lost != 0 || f["order_violations"] != 0) {
		t.Errorf("%s: drain per upstream kind: acked %v of %d, lost %v, order violations %v", where, acked, sc.Count, lost, f["order_violations"])
	}
	if sc.Kind == kindDrain && r.System == sysFerryUpstream(upstreamJetStream).Key && f["upstream_stored"] != f["arrived"]+f["duplicates"] {
		t.Errorf("%s: the stream holds %v, the consumer read %v + %v duplicates", where, f["upstream_stored"], f["arrived"], f["duplicates"])
	}
	rate := "e2e_msgs_per_s"
	if sc.Kind == kindBacklog || sc.Kind == kindDrain {
		rate = "drain_msgs_per_s"
	} else if f["p50_ms"] <= 0 || f["p99_ms"] < f["p50_ms"] {
		t.Errorf("%s: latency p50 %v p99 %v", where, f["p50_ms"], f["p99_ms"])
	}
	if f[rate] <= 0 {
		t.Errorf("%s: no %s", where, rate)
	}
}

// zeroReference reports whether Mosquitto's median of figure in sc was
// measured as 0 (no ratio can be taken against it).
func zeroReference(sc scenarioResult, figure string) bool {
	st, ok := sc.Summary[sysMosquitto.Key][figure]
	return ok && st.Median == 0
}
