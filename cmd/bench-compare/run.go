package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"
)

// harness holds what every run shares.
type harness struct {
	s          settings
	ferryBin   string
	mosquitto  string
	natsServer string    // "" when no selected scenario runs a JetStream upstream
	tmp        string    // parent of the runs' directories
	progress   io.Writer // one line per run
	runSeq     uint32
}

// runResult is one run of one system in one scenario.
type runResult struct {
	System  string             `json:"system"`
	Rep     int                `json:"rep"`   // repetition, 0-based
	Order   int                `json:"order"` // position of this system within the repetition
	Started time.Time          `json:"started"`
	Figures map[string]float64 `json:"figures"`
	Error   string             `json:"error,omitempty"`
}

// runScenario runs every repetition of sc; within a repetition the systems
// take turns, and the order rotates from one repetition to the next, so
// that drift in the machine's load does not favour one of them.
func (h *harness) runScenario(ctx context.Context, sc scenario) []runResult {
	var out []runResult
	for rep := range sc.Runs {
		order := rotate(sc.Systems, rep)
		for i, sys := range order {
			if ctx.Err() != nil {
				return out
			}
			r := runResult{System: sys.Key, Rep: rep, Order: i, Started: time.Now().UTC()}
			f, err := h.runOnce(ctx, sc, sys)
			r.Figures = f
			if err != nil {
				r.Error = err.Error()
			}
			fmt.Fprintf(h.progress, "%-16s %-26s run %d: %s\n", sc.ID, sys.Label, rep+1, summaryLine(sc, r))
			out = append(out, r)
		}
	}
	return out
}

func rotate(s []system, n int) []system {
	n %= len(s)
	return append(slices.Clone(s[n:]), s[:n]...)
}

// runOnce sets up a fresh topology (upstream mosquitto, subscriber, edge,
// for the offline scenarios the uplink switch between them), loads it and
// measures. The figures are returned even with an error, as far as they go.
func (h *harness) runOnce(ctx context.Context, sc scenario, sys system) (map[string]float64, error) {
	h.runSeq++
	run := h.runSeq
	dir, err := os.MkdirTemp(h.tmp, fmt.Sprintf("%s-%s-", sc.ID, sys.Key))
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()

	startCtx, cancelStart := context.WithTimeout(ctx, h.s.guard(h.s.StartGuard))
	defer cancelStart()
	clk := newClock()
	tr := newTracker(clk, run, sc.Publishers, sc.perPublisher())
	far, err := h.startFarEnd(startCtx, dir, sys.Upstream, run, tr)
	if err != nil {
		return nil, err
	}
	defer far.close()
	upstream := far.broker

	offline := sc.Kind == kindOffline || sc.Kind == kindBacklog || sc.Kind == kindDrain
	env := edgeEnv{dir: dir, uplink: far.addr, window: h.s.Window, ferryBin: h.ferryBin,
		mosquitto: h.mosquitto, ferryFormat: h.s.FerryFormat, upstream: sys.Upstream}
	var sw *uplink
	if offline {
		if sw, err = newUplink(far.addr); err != nil {
			return nil, err
		}
		defer func() { _ = sw.close() }()
		env.uplink = sw.addr()
	}
	if env.port, err = freePort(); err != nil {
		return nil, err
	}
	edge, err := startEdge(startCtx, sys, env)
	if err != nil {
		return nil, err
	}
	defer edge.kill()
	edgeAddr := loopback(env.port)

	// Both edges are loaded only once their bridge runs: with the link up,
	// a probe message has gone through; with it down, every bridge
	// connection has tried the uplink at least once.
	if offline {
		want := max(1, sys.Partitions)
		if err := waitFor(startCtx, func() bool { return sw.connectAttempts() >= want }); err != nil {
			return nil, fmt.Errorf("%s never tried the uplink: %w; log: %s", sys.Label, err, edge.tail())
		}
	} else if err := probe(startCtx, edgeAddr, fmt.Sprintf("bench-probe-%d", run), tr); err != nil {
		return nil, fmt.Errorf("probe through %s: %w; log: %s", sys.Label, err, edge.tail())
	}

	pubs, err := connectPublishers(startCtx, edgeAddr, run, clk, sc.Publishers)
	defer func() {
		for _, p := range pubs {
			p.client.Disconnect(0)
		}
	}()
	if err != nil {
		return nil, err
	}
	cancelStart()

	f := map[string]float64{}
	cpu0, err := readCPU(edge, upstream)
	if err != nil {
		return nil, err
	}
	start := clk.now()
	sendUntil := time.Now().Add(sc.SendFor)
	ackCtx, cancelAck := context.WithDeadline(ctx, sendUntil.Add(h.s.guard(h.s.AckGuard)))
	defer cancelAck()
	var wg sync.WaitGroup
	per := sc.perPublisher()
	for i, p := range pubs {
		l := load{count: max(0, min(per, sc.Count-i*per)), rate: sc.Rate, window: h.s.Window, start: start, sendUntil: sendUntil}
		if sc.Rate > 0 {
			l.phase = time.Duration(float64(time.Second) / sc.Rate * float64(i) / float64(len(pubs)))
		}
		wg.Go(func() { p.run(ackCtx, l) })
	}
	wg.Wait()
	cancelAck()
	acked := make([][]bool, len(pubs))
	var lastAck time.Duration
	var firstErr error
	for i, p := range pubs {
		acked[i] = p.acked
		f["sent"] += float64(p.sent)
		f["acked"] += float64(p.ackedN)
		f["failed"] += float64(p.failed)
		lastAck = max(lastAck, p.lastAck)
		if firstErr == nil && p.firstErr != nil {
			firstErr = fmt.Errorf("publisher %d: %w", i, p.firstErr)
		}
	}
	tr.setAcked(acked)
	if f["acked"] == 0 {
		if firstErr == nil {
			firstErr = errors.New("nothing was sent")
		}
		return f, fmt.Errorf("%s acknowledged nothing: %w; log: %s", sys.Label, firstErr, edge.tail())
	}

	switch sc.Kind {
	case kindLinkUp, kindFixed:
		waitCtx, cancel := context.WithTimeout(ctx, h.s.guard(sc.SendFor+h.s.AckGuard))
		tr.waitComplete(waitCtx, h.s.guard(h.s.Settle))
		cancel()
		cpu1, err := readCPU(edge, upstream)
		if err != nil {
			return f, err
		}
		a := tr.snapshot()
		arrivalFigures(f, a)
		if a.ArrivedAcked > 0 {
			cpuFigures(f, "edge_cpu_us_per_msg", "", cpu1.sub(cpu0), a.ArrivedAcked)
			if d := a.Last - start; d > 0 {
				f["e2e_msgs_per_s"] = float64(a.ArrivedAcked) / d.Seconds()
			}
		}
		latencyFigures(f, a.Latencies)
		if sc.Kind == kindFixed {
			f["offered_msgs_per_s"] = sc.Rate * float64(sc.Publishers)
		}
	case kindOffline, kindBacklog, kindDrain:
		cpu1, err := readCPU(edge, upstream)
		if err != nil {
			return f, err
		}
		cpuFigures(f, "ingest_cpu_us_per_msg", "ingest_", cpu1.sub(cpu0), int(f["acked"]))
		if d := lastAck - start; d > 0 {
			f["ingest_msgs_per_s"] = f["acked"] / d.Seconds()
		}
		// Nothing can pass a switched-off uplink: anything here means the
		// switch leaks and the scenario measured the wrong thing.
		f["arrived_while_offline"] = float64(tr.uniqueCount())
		if sc.Kind == kindOffline {
			break
		}
		sw.setUp(true)
		waitCtx, cancel := context.WithTimeout(ctx, h.s.guard(sc.DrainFor))
		tr.waitComplete(waitCtx, h.s.guard(h.s.Settle))
		cancel()
		cpu2, err := readCPU(edge, upstream)
		if err != nil {
			return f, err
		}
		// Late duplicates (a resend after a reconnect) still count.
		time.Sleep(500 * time.Millisecond)
		if far.stored != nil {
			// The consumer reads the stream behind the stores: let it
			// catch up (bounded) before the figures are taken.
			catchUp, cancel := context.WithTimeout(ctx, h.s.guard(5*time.Second))
			_ = waitFor(catchUp, func() bool { n, err := far.stored(catchUp); return err == nil && tr.received() >= n })
			cancel()
		}
		a := tr.snapshot()
		arrivalFigures(f, a)
		if a.ArrivedAcked > 0 {
			cpuFigures(f, "bridge_cpu_us_per_msg", "drain_", cpu2.sub(cpu1), a.ArrivedAcked)
			if d := a.Last - a.First; d > 0 {
				f["drain_s"] = d.Seconds()
				f["drain_msgs_per_s"] = float64(a.ArrivedAcked) / d.Seconds()
			}
		}
		if sc.Kind == kindDrain {
			if err := checkDrain(ctx, sc, f, a, far); err != nil {
				return f, fmt.Errorf("%s: %w", sys.Label, err)
			}
		}
	}
	if edgeExited(edge) {
		return f, fmt.Errorf("%s exited during the run: %s", sys.Label, edge.tail())
	}
	return f, nil
}

// cpuTimes are the CPU times of the three processes of a run: the edge
// (the figure), and, to show what else was busy on the same cores, the
// upstream broker and this harness (publishers and subscriber).
type cpuTimes struct{ edge, upstream, harness time.Duration }

func readCPU(edge, upstream *process) (cpuTimes, error) {
	var c cpuTimes
	var err1, err2, err3 error
	c.edge, err1 = edge.cpu()
	c.upstream, err2 = upstream.cpu()
	c.harness, err3 = procCPU(os.Getpid())
	return c, errors.Join(err1, err2, err3)
}

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{edge: c.edge - o.edge, upstream: c.upstream - o.upstream, harness: c.harness - o.harness}
}

// cpuFigures sets edgeKey to the edge's CPU per message, and
// <phase>upstream_cpu_us_per_msg and <phase>harness_cpu_us_per_msg.
func cpuFigures(f map[string]float64, edgeKey, phase string, d cpuTimes, n int) {
	if n <= 0 {
		return
	}
	f[edgeKey] = us(d.edge) / float64(n)
	f[phase+"upstream_cpu_us_per_msg"] = us(d.upstream) / float64(n)
	f[phase+"harness_cpu_us_per_msg"] = us(d.harness) / float64(n)
}

func edgeExited(p *process) bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func arrivalFigures(f map[string]float64, a arrivals) {
	f["arrived"] = float64(a.Unique)
	f["arrived_acked"] = float64(a.ArrivedAcked)
	f["lost"] = float64(a.Lost())
	f["duplicates"] = float64(a.Duplicates)
	f["order_violations"] = float64(a.OrderViolations)
	f["foreign"] = float64(a.Foreign)
}

func latencyFigures(f map[string]float64, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	f["p50_ms"] = ms(percentile(lat, 50))
	f["p99_ms"] = ms(percentile(lat, 99))
	f["max_ms"] = ms(lat[len(lat)-1])
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// probe publishes to bench/probe through the edge, once a second, until
// one arrives upstream: the edge's bridge is connected and forwarding.
func probe(ctx context.Context, edgeAddr, clientID string, tr *tracker) error {
	c, err := connectRetry(ctx, mqttOptions(edgeAddr, clientID))
	if err != nil {
		return err
	}
	defer c.Disconnect(0)
	for {
		if !c.IsConnectionOpen() {
			return errors.New("the edge closed the probe's connection")
		}
		c.Publish(probeTopicSuffix, 1, false, []byte("probe"))
		resend := time.After(time.Second)
		for waiting := true; waiting; {
			if tr.probeCount() > 0 {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-resend:
				waiting = false
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// connectPublishers connects n publishers at once; the returned slice holds
// those that connected, also on error, so the caller can disconnect them.
func connectPublishers(ctx context.Context, edgeAddr string, run uint32, clk clock, n int) ([]*publisher, error) {
	pubs := make([]*publisher, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := connectRetry(ctx, mqttOptions(edgeAddr, fmt.Sprintf("bench-%d-p%d", run, i)))
			if err != nil {
				errs[i] = err
				return
			}
			pubs[i] = &publisher{idx: i, runID: run, topic: publisherTopic(i), client: c, clock: clk}
		})
	}
	wg.Wait()
	ok := slices.DeleteFunc(slices.Clone(pubs), func(p *publisher) bool { return p == nil })
	if err := errors.Join(errs...); err != nil {
		return ok, fmt.Errorf("publishers: %w", err)
	}
	return pubs, nil
}

// tmpDir makes the parent directory of every run.
func tmpDir() (string, error) { return os.MkdirTemp("", "bench-compare-") }
