package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	firmwaresim "github.com/ferrymq/ferry/firmware-sim"
	"github.com/ferrymq/ferry/gateway"
)

// demoView is the demo's live terminal view. On a terminal it keeps a
// block of status lines at the bottom, redrawn in place, with what happened
// (cut, heal, crash, restart, link up/down, drained) scrolling above it;
// elsewhere (a pipe, a log, CI) it prints the events as lines and one
// status line every plainEvery. It reads the gateway's /api/status and the
// devices' and verifier's counters; rates are its own, from those counters.
type demoView struct {
	out    io.Writer
	tty    bool
	o      demoOptions
	plan   demoPlan
	fleets []*firmwaresim.Fleet
	v      *firmwaresim.Verifier
	child  *gatewayChild

	mu        sync.Mutex
	start     time.Time
	pending   []string // events not printed yet
	drawn     int      // lines of the block on screen (tty)
	lastPlain time.Time
	st        *gateway.Status // last status read (nil: none yet, or the gateway is down)
	samples   []viewSample    // the last few seconds
	linkUp    bool
	linkSeen  bool
	downSince time.Time
	lastErrs  map[string]uint64
	cut       struct {
		n, of int
		since time.Time
	}
	downAt     time.Time // the gateway was killed at; zero while it runs
	downLook   time.Time // the last look at a down link
	peak       int64     // largest backlog seen
	outagePeak int64     // largest backlog seen during the current (or last) outage
	drainFrom  int64     // backlog when the link came back
	drainStart time.Time
	exitSeen   bool
}

type viewSample struct {
	at                   time.Time
	sent, acked, arrived uint64
}

const (
	viewTick   = 250 * time.Millisecond
	plainEvery = 2 * time.Second
)

func newDemoView(out io.Writer, tty bool, o demoOptions, plan demoPlan, fleets []*firmwaresim.Fleet, v *firmwaresim.Verifier, child *gatewayChild) *demoView {
	return &demoView{out: out, tty: tty, o: o, plan: plan, fleets: fleets, v: v, child: child}
}

func (w *demoView) printHeader(run string, addrs map[string]string, dir string) {
	var b strings.Builder
	cuts := "no link cuts"
	if n := len(w.plan.cuts); n > 0 {
		at := make([]string, n)
		for i, c := range w.plan.cuts {
			at[i] = c.String()
		}
		cuts = fmt.Sprintf("link cut at %s (%v each)", strings.Join(at, ", "), w.plan.cutFor)
	}
	crash := "no crash (--no-crash)"
	if w.plan.crashAt >= 0 {
		crash = fmt.Sprintf("gateway SIGKILLed at %v and restarted on the same spool", w.plan.crashAt)
	}
	fmt.Fprintf(&b, "ferry demo (run %s): %v of traffic; %s; %s\n", run, w.o.Duration, cuts, crash)
	fmt.Fprintf(&b, "  devices      %d telemetry (MQTT 3.1.1, MQTT 5, STOMP in turn; %g/s each, QoS 1) on sensors/# -> lane %d\n",
		w.o.Devices, w.o.Rate, demoTelemetryLane)
	fmt.Fprintf(&b, "               1 alarm device (MQTT 5, one every %v) on alarms/# -> lane %d (drains first)\n",
		time.Duration(float64(time.Second)/demoAlarmRate), demoAlarmLane)
	fmt.Fprintf(&b, "  gateway      ferry run -c %s (a child process; log in %s)\n", w.child.cfg, w.child.logPath)
	fmt.Fprintf(&b, "  upstream     embedded MQTT broker behind a fault-injecting proxy; the verifier subscribes to sites/%s/#\n", demoGatewayID)
	fmt.Fprintf(&b, "  status page  http://%s/   (MQTT %s, STOMP %s)\n\n", addrs["http"], addrs["mqtt"], addrs["stomp"])
	_, _ = io.WriteString(w.out, b.String())
}

func (w *demoView) begin(start time.Time) {
	w.mu.Lock()
	w.start = start
	w.mu.Unlock()
}

// event records something that happened; the next redraw prints it.
func (w *demoView) event(msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.eventLocked(msg)
}

func (w *demoView) eventLocked(msg string) {
	el := 0.0
	if !w.start.IsZero() {
		el = time.Since(w.start).Seconds()
	}
	w.pending = append(w.pending, fmt.Sprintf("%6.1fs  %s", el, msg))
}

func (w *demoView) cutStarted(n, of int, d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cut.n, w.cut.of, w.cut.since = n, of, time.Now()
	w.eventLocked(fmt.Sprintf("link CUT %d of %d: the proxy resets the bridge's connection and refuses new ones for %v", n, of, d))
}

func (w *demoView) healed(n, of int, d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cut.n = 0
	w.eventLocked(fmt.Sprintf("link healed after %v (cut %d of %d); the bridge reconnects on its next attempt", d.Round(100*time.Millisecond), n, of))
}

// peakBacklog is the largest backlog seen while the link was down.
func (w *demoView) peakBacklog() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}

// lastBacklog is the spool backlog of the last status read.
func (w *demoView) lastBacklog() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.st == nil || w.st.Spool == nil {
		return -1
	}
	return w.st.Spool.Messages
}

func (w *demoView) crashed(backlog int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.downAt = time.Now()
	w.st = nil
	held := ""
	if backlog >= 0 {
		held = fmt.Sprintf(" with %s messages in its spool", num(backlog))
	}
	w.eventLocked("gateway CRASH: SIGKILL" + held + "; devices lose their connections until it is back")
}

// restarted: the gateway serves again; queued is its backlog at the first
// look (-1: unknown), draining whether its link was already up then.
func (w *demoView) restarted(queued int64, draining bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	down := time.Since(w.downAt).Round(10 * time.Millisecond)
	w.downAt = time.Time{}
	w.lastErrs = nil // the new process counts from zero
	w.peak = max(w.peak, queued)
	w.outagePeak = max(w.outagePeak, queued)
	msg := fmt.Sprintf("gateway RESTARTED on the same spool after %v", down)
	if queued >= 0 {
		msg += fmt.Sprintf(": %s messages queued in it at the first look", num(queued))
		if draining {
			msg += " (the link is up: the bridge is draining already)"
		}
	}
	w.eventLocked(msg)
}

// run samples and redraws until ctx ends, then draws a last time.
func (w *demoView) run(ctx context.Context) {
	t := time.NewTicker(viewTick)
	defer t.Stop()
	for {
		w.sample(ctx)
		w.render(false)
		select {
		case <-ctx.Done():
			w.sample(context.Background())
			w.render(true)
			return
		case <-t.C:
		}
	}
}

func (w *demoView) counters() viewSample {
	var s firmwaresim.DeviceStats
	for _, f := range w.fleets {
		fs := f.Stats()
		s.Sent += fs.Sent
		s.Acked += fs.Acked
	}
	return viewSample{at: time.Now(), sent: s.Sent, acked: s.Acked, arrived: uint64(w.v.Arrived())}
}

func (w *demoView) sample(ctx context.Context) {
	c := w.counters()
	var st *gateway.Status
	if w.child.pid() != 0 {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, _ = w.child.status(sctx)
		cancel()
	}
	unexpected, exitErr := w.child.unexpectedExit()

	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples = append(w.samples, c)
	for len(w.samples) > 2 && c.at.Sub(w.samples[1].at) > 2*time.Second {
		w.samples = w.samples[1:]
	}
	if unexpected && !w.exitSeen {
		w.exitSeen = true
		w.eventLocked(fmt.Sprintf("gateway EXITED on its own (%v): see its log", exitErr))
	}
	if st == nil {
		return // keep the last one for the block; the gateway may be down
	}
	w.st = st
	up := st.Link.State == gateway.LinkUp
	backlog := int64(0)
	if st.Spool != nil {
		backlog = st.Spool.Messages
	}
	switch {
	case !w.linkSeen:
		w.linkSeen, w.linkUp = true, up
		if !up {
			w.downSince = time.Now()
		}
	case w.linkUp && !up:
		w.linkUp, w.downSince, w.outagePeak = false, time.Now(), 0
		w.eventLocked(fmt.Sprintf("bridge: link %s%s; the spool takes over", st.Link.State, w.newErrors(st)))
	case !w.linkUp && up:
		w.linkUp = true
		msg := fmt.Sprintf("bridge: link UP after %v", time.Since(w.downSince).Round(100*time.Millisecond))
		if backlog > 0 {
			msg += fmt.Sprintf("; draining %s, alarms first", messages(backlog))
		}
		w.eventLocked(msg)
		w.peak = max(w.peak, backlog)
		w.drainFrom, w.drainStart = max(backlog, w.outagePeak), w.downLook
	}
	if !w.linkUp {
		w.newErrors(st) // keep the baseline current
		w.downLook = time.Now()
		w.outagePeak = max(w.outagePeak, backlog)
		w.peak = max(w.peak, backlog)
	}
	if w.linkUp && w.drainFrom > 0 && backlog == 0 {
		// The drain began between the last look at a down link and the
		// first at an up one: the time is an upper bound.
		w.eventLocked(fmt.Sprintf("backlog drained (%s messages at its peak), in under %v", num(w.drainFrom), time.Since(w.drainStart).Round(10*time.Millisecond)))
		w.drainFrom = 0
	}
}

// newErrors names the upstream error reasons that grew since the last call.
func (w *demoView) newErrors(st *gateway.Status) string {
	var grew []string
	for k, n := range st.Link.Errors {
		if n > w.lastErrs[k] {
			grew = append(grew, k)
		}
	}
	w.lastErrs = maps.Clone(st.Link.Errors)
	if len(grew) == 0 {
		return ""
	}
	slices.Sort(grew)
	return " (" + strings.Join(grew, ", ") + ")"
}

// rates are per second over the last samples (about two seconds).
func (w *demoView) rates() (accepted, delivered float64) {
	if len(w.samples) < 2 {
		return 0, 0
	}
	a, b := w.samples[0], w.samples[len(w.samples)-1]
	dt := b.at.Sub(a.at).Seconds()
	if dt <= 0 {
		return 0, 0
	}
	return float64(b.acked-a.acked) / dt, float64(b.arrived-a.arrived) / dt
}

func (w *demoView) render(final bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tty {
		var b strings.Builder
		if w.drawn > 0 {
			fmt.Fprintf(&b, "\033[%dA", w.drawn)
		}
		for _, e := range w.pending {
			b.WriteString("\r\033[K" + e + "\n")
		}
		lines := w.block()
		for _, l := range lines {
			b.WriteString("\r\033[K" + l + "\n")
		}
		w.drawn = len(lines)
		if final {
			w.drawn = 0
			b.WriteString("\n")
		}
		w.pending = w.pending[:0]
		_, _ = io.WriteString(w.out, b.String())
		return
	}
	for _, e := range w.pending {
		_, _ = io.WriteString(w.out, e+"\n")
	}
	w.pending = w.pending[:0]
	if final || time.Since(w.lastPlain) >= plainEvery {
		w.lastPlain = time.Now()
		_, _ = io.WriteString(w.out, w.plainLine()+"\n")
	}
}

func (w *demoView) elapsed() time.Duration {
	if w.start.IsZero() {
		return 0
	}
	return time.Since(w.start)
}

func (w *demoView) linkText() string {
	s := "?"
	if w.st != nil {
		s = w.st.Link.State
		if s != gateway.LinkUp {
			s = strings.ToUpper(s)
		}
	}
	if !w.downAt.IsZero() {
		s = "-"
	}
	if w.cut.n > 0 {
		s += fmt.Sprintf(" [cut %d/%d, %.1fs of %v]", w.cut.n, w.cut.of, time.Since(w.cut.since).Seconds(), w.plan.cutFor)
	}
	return s
}

func (w *demoView) gatewayText() string {
	if !w.downAt.IsZero() {
		return fmt.Sprintf("DOWN (SIGKILLed %.1fs ago)", time.Since(w.downAt).Seconds())
	}
	if pid := w.child.pid(); pid != 0 {
		return fmt.Sprintf("running, pid %d", pid)
	}
	return "not running"
}

func (w *demoView) lanes() string {
	if !w.downAt.IsZero() {
		return "in the spool file while the gateway is down"
	}
	if w.st == nil || w.st.Spool == nil {
		return "?"
	}
	var parts []string
	for _, l := range w.st.Spool.Lanes {
		name, named := demoLaneNames[l.Lane]
		if !named && l.Messages == 0 {
			continue
		}
		if !named {
			name = fmt.Sprintf("lane %d", l.Lane)
		}
		parts = append(parts, fmt.Sprintf("%s %s", name, num(l.Messages)))
	}
	return strings.Join(parts, " · ")
}

func (w *demoView) block() []string {
	c := viewSample{}
	if n := len(w.samples); n > 0 {
		c = w.samples[n-1]
	}
	acc, del := w.rates()
	backlog, dlq, oldest, inflight, clients, file := "?", "?", "", "?", "?", "?"
	if !w.downAt.IsZero() {
		backlog, dlq, inflight, clients, file = "-", "-", "-", "none", "-"
	}
	if st := w.st; st != nil {
		n := 0
		for _, k := range slices.Sorted(maps.Keys(st.Clients)) {
			n += st.Clients[k]
		}
		clients = fmt.Sprint(n)
		inflight = fmt.Sprint(st.Link.InFlight)
		if sp := st.Spool; sp != nil {
			backlog, dlq, file = num(sp.Messages), num(sp.DLQMessages), human(sp.FileSize)
			if sp.Messages > 0 {
				oldest = fmt.Sprintf("   oldest %.1fs", sp.OldestAgeSeconds)
			}
		}
	}
	return []string{
		fmt.Sprintf("── %5.1fs of %v ── link: %s ── gateway: %s", w.elapsed().Seconds(), w.o.Duration, w.linkText(), w.gatewayText()),
		fmt.Sprintf("  devices   %s connected   sent %s   acknowledged by ferry %s   accepted %.0f/s", clients, num(int64(c.sent)), num(int64(c.acked)), acc),
		fmt.Sprintf("  upstream  delivered %s (verified, distinct)   %.0f/s   in flight %s", num(int64(c.arrived)), del, inflight),
		fmt.Sprintf("  backlog   %s   (%s)%s   DLQ %s   spool file %s", backlog, w.lanes(), oldest, dlq, file),
	}
}

func (w *demoView) plainLine() string {
	c := viewSample{}
	if n := len(w.samples); n > 0 {
		c = w.samples[n-1]
	}
	acc, del := w.rates()
	backlog, dlq := "?", "?"
	if w.st != nil && w.st.Spool != nil {
		backlog, dlq = num(w.st.Spool.Messages), num(w.st.Spool.DLQMessages)
	}
	return fmt.Sprintf("%6.1fs  link %s  gateway %s  backlog %s (%s)  accepted %.0f/s  delivered %.0f/s  acked %s  delivered %s  dlq %s",
		w.elapsed().Seconds(), w.linkText(), w.gatewayText(), backlog, w.lanes(), acc, del, num(int64(c.acked)), num(int64(c.arrived)), dlq)
}

// messages is "1 message", "1,204 messages".
func messages(n int64) string {
	if n == 1 {
		return "1 message"
	}
	return num(n) + " messages"
}

// num formats n with thousands separators: 12,345.
func num(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
