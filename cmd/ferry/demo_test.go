package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

func TestDemoPlan(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name     string
		o        demoOptions
		cuts     []time.Duration
		cutFor   time.Duration
		crashAt  time.Duration
		validErr bool
	}{
		{"defaults", demoOptions{Duration: 60 * s, CutEvery: 15 * s, Crash: true}, []time.Duration{15 * s, 30 * s, 45 * s}, 5 * s, 32*s + s/2, false},
		{"short", demoOptions{Duration: 8 * s, CutEvery: 4 * s, Crash: true}, []time.Duration{4 * s}, 2 * s, 5 * s, false},
		{"no crash", demoOptions{Duration: 60 * s, CutEvery: 15 * s}, []time.Duration{15 * s, 30 * s, 45 * s}, 5 * s, -1, false},
		{"no cuts", demoOptions{Duration: 60 * s, Crash: true}, nil, 0, 30 * s, false},
		{"cut longer than the gap", demoOptions{Duration: 60 * s, CutEvery: 5 * s, CutFor: 6 * s}, nil, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			o.Devices, o.Rate = 1, 1
			err := o.validate()
			if tc.validErr {
				if err == nil || !strings.Contains(err.Error(), "--cut-for") {
					t.Fatalf("validate: %v, want an error naming --cut-for", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p := o.plan()
			if !slices.Equal(p.cuts, tc.cuts) || p.cutFor != tc.cutFor || p.crashAt != tc.crashAt {
				t.Fatalf("plan %+v, want cuts %v for %v, crash at %v", p, tc.cuts, tc.cutFor, tc.crashAt)
			}
		})
	}
	bad := demoOptions{Duration: 0, Devices: 0, Rate: 0, CutEvery: -1, HTTP: "8080"}
	err := bad.validate()
	for _, flag := range []string{"--duration", "--devices", "--rate", "--cut-every", "--http"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("validate(%+v) = %v: does not name %s", bad, err, flag)
		}
	}
}

// TestEstimateMosquitto replays ack times against outages and crashes with
// Mosquitto 2.0's documented defaults: 1000 queued + 20 in flight while the
// link is down, newer ones dropped; a SIGKILL loses the queue.
func TestEstimateMosquitto(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	acks := func(run string, from, n, stepMs int) map[string]time.Time {
		m := map[string]time.Time{}
		for i := range n {
			m[fmt.Sprintf("r-%s-%06d", run, i)] = at(from + i*stepMs)
		}
		return m
	}
	merge := func(ms ...map[string]time.Time) map[string]time.Time {
		out := map[string]time.Time{}
		for _, m := range ms {
			for k, v := range m {
				out[k] = v
			}
		}
		return out
	}
	const limit = mosquittoMaxQueued + mosquittoMaxInflight
	for _, tc := range []struct {
		name    string
		acked   map[string]time.Time
		outages []span
		crashes []time.Time
		want    mosquittoEstimate
	}{
		{"link up throughout", acks("dev0", 0, 5000, 1), nil, nil, mosquittoEstimate{}},
		{"outage under the limit", acks("dev0", 0, 5000, 1), []span{{at(100), at(100 + limit)}}, nil, mosquittoEstimate{}},
		{"outage over the limit", acks("dev0", 0, 5000, 1), []span{{at(1000), at(2500)}}, nil, mosquittoEstimate{OverQueue: 1500 - limit}},
		{"crash inside an outage, then the queue refills", acks("dev0", 0, 5000, 1),
			[]span{{at(1000), at(3000)}}, []time.Time{at(1500)},
			mosquittoEstimate{AtCrash: 500, OverQueue: 1500 - limit}},
		{"crash with the link up loses no queue", acks("dev0", 0, 5000, 1), nil, []time.Time{at(2000)}, mosquittoEstimate{}},
		{"dropped alarms are counted", merge(acks("dev0", 0, 2000, 1), acks("alarm0", 1900, 3, 10)),
			[]span{{at(0), at(5000)}}, nil, mosquittoEstimate{OverQueue: 2003 - limit, Alarms: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := estimateMosquitto(tc.acked, tc.outages, tc.crashes); got != tc.want {
				t.Fatalf("estimate %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDemoSummaryVerdict: a lost message, an order violation or nothing
// acknowledged fail the demo (exit 1) and say so.
func TestDemoSummaryVerdict(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    demoSummary
		code int
		says string
	}{
		{"clean", demoSummary{Acked: 10, Delivered: 10}, exitOK, "PASS"},
		{"lost", demoSummary{Acked: 10, Delivered: 9, Lost: 1, LostIDs: []string{"r-dev0-000007"}}, exitFailure, "r-dev0-000007"},
		{"reordered", demoSummary{Acked: 10, Delivered: 10, OrderViolations: 1}, exitFailure, "FAIL"},
		{"nothing acknowledged", demoSummary{}, exitFailure, "FAIL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tc.s.print(&b)
			if c := tc.s.exitCode(); c != tc.code || !strings.Contains(b.String(), tc.says) {
				t.Fatalf("exit %d (want %d), summary lacks %q:\n%s", c, tc.code, tc.says, b.String())
			}
		})
	}
}

// TestDemo runs `ferry demo` for 8 s with one link cut and the crash: the
// gateway is the real binary (built here) as a child process, SIGKILLed
// and restarted; the devices, the verifier, the proxy and the upstream
// broker run in the test. Every acknowledged message must arrive, and the
// counts must add up. Waits are hang guards only.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs the demo with real processes")
	}
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	guard := testkit.Timeout(3 * time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var out syncBuffer
	sum, err := runDemo(ctx, demoOptions{
		Duration: 8 * time.Second, Devices: 6, Rate: 50, CutEvery: 4 * time.Second, Crash: true,
		Exe: bin, Dir: t.TempDir(), Out: &out,
	})
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		if ctx.Err() != nil {
			t.Fatalf("hang guard: the demo did not end within %v (%s=%g): %v", guard, testkit.ScaleEnv, testkit.Scale(), err)
		}
		t.Fatal(err)
	}
	if sum.Lost != 0 || sum.exitCode() != exitOK {
		t.Fatalf("lost %d (exit %d): %v", sum.Lost, sum.exitCode(), sum.LostIDs)
	}
	// The counts are consistent with one another.
	switch {
	case sum.Acked == 0 || sum.AlarmsAcked == 0:
		t.Errorf("nothing (or no alarm) acknowledged: %+v", sum)
	case uint64(sum.Acked) > sum.Sent:
		t.Errorf("acknowledged %d > sent %d", sum.Acked, sum.Sent)
	case sum.Delivered != sum.Acked+sum.UnackedArrivals:
		t.Errorf("delivered %d != acknowledged %d + unacknowledged arrivals %d", sum.Delivered, sum.Acked, sum.UnackedArrivals)
	case sum.Deliveries != sum.Delivered+sum.Duplicates:
		t.Errorf("deliveries %d != distinct %d + duplicates %d", sum.Deliveries, sum.Delivered, sum.Duplicates)
	case sum.DupNewID != 0 || sum.DupOriginalID != sum.Duplicates:
		t.Errorf("duplicates %d: %d with the original id, %d with a new one (ingress dedupe by json:id failed)", sum.Duplicates, sum.DupOriginalID, sum.DupNewID)
	case sum.OrderViolations != 0 || sum.Malformed != 0 || sum.DLQ != 0:
		t.Errorf("order violations %d, malformed %d, DLQ %d", sum.OrderViolations, sum.Malformed, sum.DLQ)
	case sum.Cuts != 1 || sum.Crashes != 1:
		t.Errorf("%d cuts and %d crashes, want 1 and 1", sum.Cuts, sum.Crashes)
	case sum.Mosquitto.AtCrash == 0:
		t.Errorf("the crash fell inside the cut, yet the Mosquitto estimate has no queue lost at the crash: %+v", sum.Mosquitto)
	}
	// The summary says what the struct says; the live view told the story.
	text := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^  lost\s+0\s`),
		regexp.MustCompile(`(?m)^  acknowledged by ferry\s+` + regexp.QuoteMeta(num(int64(sum.Acked))) + `\s`),
		regexp.MustCompile(`(?m)^  delivered upstream\s+` + regexp.QuoteMeta(num(int64(sum.Delivered))) + `\s`),
		regexp.MustCompile(`(?m)^PASS: `),
		regexp.MustCompile(`link CUT 1 of 1`),
		regexp.MustCompile(`gateway CRASH: SIGKILL`),
		regexp.MustCompile(`gateway RESTARTED on the same spool`),
		regexp.MustCompile(`link healed`),
		regexp.MustCompile(`Mosquitto 2\.0's bridge .*ESTIMATE from its documented defaults`),
	} {
		if !want.MatchString(text) {
			t.Errorf("output lacks %s", want)
		}
	}
}

// TestDemoGatewayDoesNotStart: a gateway that exits at once is a clear
// error that quotes its output, not a hang or a summary.
func TestDemoGatewayDoesNotStart(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "broken-ferry")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho 'ferry: cannot open the spool' >&2\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait)) // a hang guard
	defer cancel()
	sum, err := runDemo(ctx, demoOptions{Duration: time.Second, Devices: 1, Rate: 1, Exe: exe, Dir: t.TempDir()})
	if err == nil || sum != nil {
		t.Fatalf("runDemo = %v, %v; want an error", sum, err)
	}
	for _, want := range []string{"exited while starting", "exit status 3", "ferry: cannot open the spool"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
