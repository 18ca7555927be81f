package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// machine describes where and when the figures were measured.
type machine struct {
	Date         time.Time `json:"date"`
	CPU          string    `json:"cpu"`
	Cores        int       `json:"cores"`
	Kernel       string    `json:"kernel"`
	LoadStart    string    `json:"load_average_start"`
	LoadEnd      string    `json:"load_average_end"`
	GoVersion    string    `json:"go_version"`
	Mosquitto    string    `json:"mosquitto_version"`
	NATSServer   string    `json:"nats_server_version,omitempty"`
	FerryVersion string    `json:"ferry_version"`
}

func probeMachine() machine {
	return machine{
		Date: time.Now().UTC().Truncate(time.Second), CPU: cpuModel(), Cores: runtime.NumCPU(),
		Kernel: firstLine("/proc/sys/kernel/osrelease"), LoadStart: loadAverage(), GoVersion: runtime.Version(),
	}
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// loadAverage is the 1, 5 and 15 minute load average.
func loadAverage() string {
	f := strings.Fields(firstLine("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(path string) string {
	b, _ := os.ReadFile(path)
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(line)
}

// stat summarises one figure of one system over its runs.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Sum    float64 `json:"sum"`
	N      int     `json:"n"`
}

func summarise(vs []float64) stat {
	if len(vs) == 0 {
		return stat{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	st := stat{Min: s[0], Max: s[len(s)-1], N: len(s)}
	for _, v := range s {
		st.Sum += v
	}
	if n := len(s); n%2 == 1 {
		st.Median = s[n/2]
	} else {
		st.Median = (s[n/2-1] + s[n/2]) / 2
	}
	return st
}

// scenarioResult is a scenario with its runs and their summary per system.
type scenarioResult struct {
	scenario
	Results []runResult                   `json:"results"`
	Summary map[string]map[string]stat    `json:"summary"` // system key → figure → stat, over runs without an error
	Ratios  map[string]map[string]float64 `json:"ratios"`  // Ferry variant key → figure → median(Ferry)/median(Mosquitto)
}

func summariseScenario(sc scenario, results []runResult) scenarioResult {
	r := scenarioResult{scenario: sc, Results: results, Summary: map[string]map[string]stat{}, Ratios: map[string]map[string]float64{}}
	values := map[string]map[string][]float64{}
	for _, res := range results {
		if res.Error != "" {
			continue
		}
		if values[res.System] == nil {
			values[res.System] = map[string][]float64{}
		}
		for k, v := range res.Figures {
			values[res.System][k] = append(values[res.System][k], v)
		}
	}
	for sys, figs := range values {
		r.Summary[sys] = map[string]stat{}
		for k, vs := range figs {
			r.Summary[sys][k] = summarise(vs)
		}
	}
	base := r.Summary[sysMosquitto.Key]
	for _, sys := range sc.Systems {
		if sys.Kind != kindFerry || r.Summary[sys.Key] == nil || base == nil {
			continue
		}
		r.Ratios[sys.Key] = map[string]float64{}
		for k, st := range r.Summary[sys.Key] {
			if b, ok := base[k]; ok && b.Median != 0 {
				r.Ratios[sys.Key][k] = st.Median / b.Median
			}
		}
	}
	return r
}

// figure is one row of the table.
type figure struct {
	key, label string
	decimals   int
}

// Rows per scenario kind. "counts" is the lost / duplicates / order
// violations row, totals over the runs.
var tableRows = map[string][]figure{
	kindLinkUp: {
		{"e2e_msgs_per_s", "end-to-end msg/s", 0}, {"p50_ms", "p50 latency ms", 1}, {"p99_ms", "p99 latency ms", 1},
		{"edge_cpu_us_per_msg", "edge CPU µs/msg", 1}, {"counts", "lost / duplicates / order violations", 0},
	},
	kindFixed: {
		{"p50_ms", "p50 latency ms", 2}, {"p99_ms", "p99 latency ms", 2}, {"edge_cpu_us_per_msg", "edge CPU µs/msg", 1},
		{"e2e_msgs_per_s", "end-to-end msg/s (offered: fixed rate)", 0}, {"counts", "lost / duplicates / order violations", 0},
	},
	kindOffline: {
		{"ingest_msgs_per_s", "ingest msg/s (PUBACKs)", 0}, {"ingest_cpu_us_per_msg", "edge CPU µs/msg", 1},
	},
	kindBacklog: {
		{"ingest_msgs_per_s", "ingest msg/s, uplink down", 0}, {"drain_msgs_per_s", "drain msg/s, first to last arrival", 0},
		{"bridge_cpu_us_per_msg", "bridge CPU µs/msg (edge, during the drain)", 1},
		{"counts", "lost / duplicates / order violations", 0},
	},
	kindDrain: {
		{"drain_msgs_per_s", "drain msg/s, first to last arrival", 0},
		{"bridge_cpu_us_per_msg", "bridge CPU µs/msg (edge, during the drain)", 1},
		{"counts", "lost / duplicates / order violations", 0},
	},
}

// report is everything one invocation measured: the JSON file's content.
type report struct {
	Machine   machine          `json:"machine"`
	Settings  settings         `json:"settings"`
	Ceilings  []ceiling        `json:"ceilings,omitempty"` // before and after the scenarios
	Scenarios []scenarioResult `json:"scenarios"`
	Errors    int              `json:"errors"`
}

// markdown renders the report as the table of docs/benchmarks.md.
func (r report) markdown() string {
	var b bytes.Buffer
	m := r.Machine
	servers := m.Mosquitto
	if m.NATSServer != "" {
		servers += "; " + m.NATSServer
	}
	fmt.Fprintf(&b, "Measured %s on %s (%d cores, Linux %s), load average %s at the start and %s at the end; %s; %s; ferry %s.\n",
		m.Date.Format("2006-01-02 15:04 UTC"), m.CPU, m.Cores, m.Kernel, m.LoadStart, m.LoadEnd, m.GoVersion, servers, m.FerryVersion)
	mode := "full"
	if r.Settings.Quick {
		mode = "quick (BENCH_QUICK=1)"
	}
	fmt.Fprintf(&b, "Mode %s, %d run(s) per system and scenario, alternating; window %d; Ferry bridge.format %s. "+
		"A cell is the median of the runs (min–max when more than one).\n\n",
		mode, r.Settings.Runs, r.Settings.Window, r.Settings.FerryFormat)
	if cs := r.Ceilings; len(cs) > 0 {
		var direct, backlog []float64
		for _, c := range cs {
			if c.Error == "" {
				direct, backlog = append(direct, c.DirectMsgsPerS), append(backlog, c.BacklogMsgsPerS)
			}
		}
		fmt.Fprintf(&b, "The load generator alone (no edge: %d publishers straight to the upstream mosquitto; measured before and after): "+
			"%s msg/s end to end; a %s backlog queued there delivered to the subscriber at %s msg/s. Figures near these are the "+
			"limit of the harness and the shared cores, not of the edge.\n\n",
			cs[0].Publishers, span(direct), countLabel(cs[0].Backlog), span(backlog))
	}
	b.WriteString("| scenario | figure | Ferry | Mosquitto | Ferry/Mosquitto |\n|---|---|--:|--:|--:|\n")
	for _, sc := range r.Scenarios {
		for _, sys := range sc.Systems {
			if sys.Kind != kindFerry {
				continue
			}
			title := sc.Title
			if sc.Runs != r.Settings.Runs {
				title += fmt.Sprintf(" (%d run%s)", sc.Runs, plural(sc.Runs))
			}
			if sys.Key != sysFerry.Key {
				title += " — " + sys.Label
			}
			for _, row := range tableRows[sc.Kind] {
				ferry := cell(sc, sys.Key, row)
				mosq := cell(sc, sysMosquitto.Key, row)
				ratio := "—"
				if x, ok := sc.Ratios[sys.Key][row.key]; ok && row.key != "counts" {
					ratio = fmt.Sprintf("%.2f×", x)
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", title, row.label, ferry, mosq, ratio)
			}
		}
	}
	b.WriteString("\nmsg/s: higher is better; latency and CPU: lower is better (a ratio above 1 there means Ferry uses more).\n")
	for _, sc := range r.Scenarios {
		if sc.Kind == kindDrain {
			b.WriteString("In the drain per upstream kind, the Mosquitto column is Mosquitto's MQTT 3.1.1 bridge in every row: " +
				"the reference for all three of Ferry's upstream kinds; each run there is also a delivery check " +
				"(the whole backlog acknowledged, every message arrived, in order per topic), and a run that fails it is an error.\n")
			break
		}
	}
	if r.Errors > 0 {
		fmt.Fprintf(&b, "\n%d run(s) failed; their figures are left out (see the JSON file for the errors).\n", r.Errors)
	}
	return b.String()
}

func cell(sc scenarioResult, sys string, row figure) string {
	st := sc.Summary[sys]
	if st == nil {
		return "error"
	}
	if row.key == "counts" {
		return fmt.Sprintf("%s / %s / %s", num(st["lost"].Sum, 0), num(st["duplicates"].Sum, 0), num(st["order_violations"].Sum, 0))
	}
	v, ok := st[row.key]
	if !ok {
		return "—"
	}
	if v.N > 1 && v.Min != v.Max {
		return fmt.Sprintf("%s (%s–%s)", num(v.Median, row.decimals), num(v.Min, row.decimals), num(v.Max, row.decimals))
	}
	return num(v.Median, row.decimals)
}

// span is "a–b" of the values (one value: itself; none: "error").
func span(vs []float64) string {
	if len(vs) == 0 {
		return "error"
	}
	st := summarise(vs)
	if st.Min == st.Max {
		return num(st.Min, 0)
	}
	return num(st.Min, 0) + "–" + num(st.Max, 0)
}

// num formats v with thousands separators.
func num(v float64, decimals int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var out []byte
	for i, c := range []byte(intPart) {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, c)
	}
	res := string(out)
	if neg {
		res = "-" + res
	}
	if frac != "" {
		res += "." + frac
	}
	return res
}

// summaryLine is the progress line of one run.
func summaryLine(sc scenario, r runResult) string {
	f := r.Figures
	var parts []string
	add := func(k, label string, dec int) {
		if v, ok := f[k]; ok {
			parts = append(parts, label+"="+num(v, dec))
		}
	}
	add("sent", "sent", 0)
	add("acked", "acked", 0)
	switch sc.Kind {
	case kindLinkUp, kindFixed:
		add("e2e_msgs_per_s", "msg/s", 0)
		add("p50_ms", "p50ms", 1)
		add("p99_ms", "p99ms", 1)
		add("edge_cpu_us_per_msg", "cpu_us/msg", 1)
		add("lost", "lost", 0)
	case kindOffline:
		add("ingest_msgs_per_s", "ingest/s", 0)
		add("ingest_cpu_us_per_msg", "cpu_us/msg", 1)
	case kindBacklog, kindDrain:
		add("ingest_msgs_per_s", "ingest/s", 0)
		add("drain_msgs_per_s", "drain/s", 0)
		add("bridge_cpu_us_per_msg", "cpu_us/msg", 1)
		add("lost", "lost", 0)
		add("duplicates", "dup", 0)
		add("order_violations", "order", 0)
	}
	line := strings.Join(parts, " ")
	if r.Error != "" {
		line += " ERROR: " + r.Error
	}
	return line
}
