// Command bench-compare runs the same end-to-end scenarios against Ferry and
// against Mosquitto 2 in bridge mode with persistence, in the same
// invocation, and prints a markdown table with both and the ratio
// Ferry/Mosquitto per figure (`make bench-compare`; docs/benchmarks.md
// explains the scenarios and holds the latest table).
//
// Topology of every run, all on loopback and fresh for each run:
//
//	publishers (paho, QoS 1) ──▶ edge ──▶ [uplink switch] ──▶ upstream mosquitto ──▶ subscriber (paho)
//
// The edge is either the ferry binary built from this checkout (a child
// process on a generated YAML configuration) or a mosquitto child with a
// bridge to the upstream; the uplink switch (a TCP forwarder in this
// process) is on the path only in the offline scenarios, where it plays the
// unreachable upstream. The publishers and the subscriber are the same code
// for both systems. Only the edge's CPU is counted (/proc/<pid>/stat).
//
// A last scenario drains the same backlog into each kind of upstream Ferry
// supports (MQTT 3.1.1, MQTT 5, NATS JetStream on a nats-server), with
// Mosquitto's MQTT 3.1.1 bridge as the reference, and checks that every
// message arrived in order per topic.
//
// Environment: BENCH_QUICK=1 (small counts, seconds), BENCH_FULL=1 (adds the
// 1M-message backlog), BENCH_RUNS, BENCH_WINDOW, BENCH_PARTITIONS,
// BENCH_FERRY_FORMAT, MOSQUITTO and NATS_SERVER (paths of the binaries).
//
//	go run ./cmd/bench-compare [-out DIR] [-ferry BIN] [-only REGEXP] [-keep]
//
// Exit codes: 0 every run measured; 1 a run failed (the others are still
// reported); 2 bad usage or a setup error (no mosquitto, build failed).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/ferrymq/ferry/internal/natsserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the flags; settings come from the environment.
type options struct {
	out      string // directory for bench-compare.md and bench-compare.json; "" writes nothing
	ferryBin string // prebuilt ferry; "" builds ./cmd/ferry of the checkout
	only     *regexp.Regexp
	keep     bool // keep the runs' directories
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench-compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var only string
	fs.StringVar(&o.out, "out", "bin/bench-compare", "directory for bench-compare.md and bench-compare.json (empty: none)")
	fs.StringVar(&o.ferryBin, "ferry", "", "ferry binary to measure (default: go build ./cmd/ferry of this checkout)")
	fs.StringVar(&only, "only", "", "run only the scenarios whose id matches this regexp (ceiling, linkup-1, linkup-8, linkup-64, fixed-2000, offline-8, backlog-100k, backlog-1M, drain-kinds-100k)")
	fs.BoolVar(&o.keep, "keep", false, "keep the runs' directories (configurations, logs, spools)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench-compare: unexpected arguments: %v\n", fs.Args())
		return 2
	}
	if only != "" {
		re, err := regexp.Compile(only)
		if err != nil {
			fmt.Fprintf(stderr, "bench-compare: -only: %v\n", err)
			return 2
		}
		o.only = re
	}
	s, err := envSettings()
	if err != nil {
		fmt.Fprintf(stderr, "bench-compare: %v\n", err)
		return 2
	}
	rep, err := benchmark(ctx, s, o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "bench-compare: %v\n", err)
		return 2
	}
	md := rep.markdown()
	fmt.Fprint(stdout, "\n"+md)
	if o.out != "" {
		if err := writeReport(o.out, rep, md); err != nil {
			fmt.Fprintf(stderr, "bench-compare: %v\n", err)
			return 2
		}
		fmt.Fprintf(stdout, "\nwritten: %s, %s\n", filepath.Join(o.out, "bench-compare.md"), filepath.Join(o.out, "bench-compare.json"))
	}
	if rep.Errors > 0 {
		return 1
	}
	return 0
}

// benchmark runs every selected scenario; progress lines go to progress.
// An error is a setup problem; failed runs are counted in the report.
func benchmark(ctx context.Context, s settings, o options, progress io.Writer) (report, error) {
	mosq := mosquittoPath()
	if mosq == "" {
		return report{}, errors.New("mosquitto not found (it is the upstream broker of every run, and the system compared): " +
			"apt-get install mosquitto, or set MOSQUITTO=/path/to/mosquitto")
	}
	var selected []scenario
	for _, sc := range scenarios(s) {
		if o.only == nil || o.only.MatchString(sc.ID) {
			selected = append(selected, sc)
		}
	}
	var natsBin string
	if needsNATS(selected) {
		if natsBin = natsserver.Path(); natsBin == "" {
			return report{}, errNoNATS
		}
	}
	tmp, err := tmpDir()
	if err != nil {
		return report{}, err
	}
	if !o.keep {
		defer func() { _ = os.RemoveAll(tmp) }()
	} else {
		fmt.Fprintf(progress, "runs' directories under %s\n", tmp)
	}
	m := probeMachine()
	m.Mosquitto = mosquittoVersion(mosq)
	if natsBin != "" {
		m.NATSServer = natsServerVersion(natsBin)
	}
	ferry := o.ferryBin
	if ferry == "" {
		wd, err := os.Getwd()
		if err != nil {
			return report{}, err
		}
		root, err := moduleRoot(wd)
		if err != nil {
			return report{}, err
		}
		fmt.Fprintf(progress, "building ferry from %s\n", root)
		if ferry, err = buildFerry(ctx, root, tmp); err != nil {
			return report{}, err
		}
		m.FerryVersion = gitDescribe(root)
	}
	if m.FerryVersion == "" {
		m.FerryVersion = ferryVersion(ferry)
	}
	h := &harness{s: s, ferryBin: ferry, mosquitto: mosq, natsServer: natsBin, tmp: tmp, progress: progress}
	rep := report{Machine: m, Settings: s}
	// The ceiling is measured before and after the scenarios: the
	// machine's load drifts during a long run.
	measureCeiling := func() {
		if o.only == nil || o.only.MatchString("ceiling") {
			c := h.measureCeiling(ctx)
			rep.Ceilings = append(rep.Ceilings, c)
			if c.Error != "" {
				rep.Errors++
			}
		}
	}
	measureCeiling()
	for _, sc := range selected {
		results := h.runScenario(ctx, sc)
		for _, r := range results {
			if r.Error != "" {
				rep.Errors++
			}
		}
		rep.Scenarios = append(rep.Scenarios, summariseScenario(sc, results))
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	measureCeiling()
	rep.Machine.LoadEnd = loadAverage()
	return rep, nil
}

func writeReport(dir string, rep report, md string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench-compare.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "bench-compare.md"), []byte(md), 0o644)
}

func gitDescribe(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// natsServerVersion is `nats-server --version` ("nats-server: v2.10.16").
func natsServerVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "nats-server (version unknown)"
	}
	return strings.TrimSpace(string(out))
}

func ferryVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "unknown"
	}
	return parseFerryVersion(string(out))
}

// parseFerryVersion is the version from `ferry version`'s first line
// ("ferry 29f8c3b", then indented details): one line, for the report's
// "Measured … ferry VERSION." sentence.
func parseFerryVersion(out string) string {
	first, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	if f := strings.Fields(first); len(f) >= 2 && f[0] == "ferry" {
		return strings.Join(f[1:], " ")
	}
	return "unknown"
}
