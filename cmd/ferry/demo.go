package main

// ferry demo: store-and-forward in one command. One process with nothing
// else installed: an embedded upstream broker, a fault-injecting proxy in
// front of it, the gateway as a child process (this binary re-executed as
// `ferry run`) on a temporary spool, simulated devices over MQTT 3.1.1, MQTT
// 5 and STOMP, and a verifier subscribed upstream. The link is cut at
// intervals and the gateway is SIGKILLed once and restarted on the same
// spool; at the end the verifier's report says whether every acknowledged
// message arrived.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	firmwaresim "github.com/ferrymq/ferry/firmware-sim"
	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/freeport"
	"github.com/ferrymq/ferry/protocols/mqtt"
)

const demoUsage = "ferry demo [--duration 60s] [--devices 6] [--cut-every 15s] [--cut-for 5s] [--rate 50] [--no-crash] [--http ADDR]"

// demoOptions are the demo's knobs (flags), with the test's hooks.
type demoOptions struct {
	Duration time.Duration // production time
	Devices  int           // telemetry devices (one alarm device more)
	Rate     float64       // readings per second per telemetry device
	CutEvery time.Duration // a link cut every this long; 0: none
	CutFor   time.Duration // length of a cut; 0: min(5s, CutEvery/2)
	Crash    bool          // SIGKILL the gateway once in the middle
	HTTP     string        // the gateway's HTTP listener; "": a free loopback port

	Exe  string // binary run as the gateway (`Exe run -c …`); "": this one
	Dir  string // work directory (spool, config, log); "": a fresh temporary one, removed after a clean run
	Out  io.Writer
	Stop <-chan struct{} // closed: end production now and go to the summary
}

func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := demoOptions{Out: stdout}
	fs.DurationVar(&o.Duration, "duration", time.Minute, "how long the devices produce")
	fs.IntVar(&o.Devices, "devices", 6, "telemetry devices, round-robin MQTT 3.1.1, MQTT 5, STOMP (plus one alarm device)")
	fs.Float64Var(&o.Rate, "rate", 50, "readings per second per telemetry device")
	fs.DurationVar(&o.CutEvery, "cut-every", 15*time.Second, "cut the upstream link every this long (0: never)")
	fs.DurationVar(&o.CutFor, "cut-for", 0, "how long each cut lasts (default: 5s, at most half of --cut-every)")
	noCrash := fs.Bool("no-crash", false, "do not SIGKILL and restart the gateway in the middle")
	fs.StringVar(&o.HTTP, "http", "", "serve the gateway's status page on this `address` during the demo (default: a free loopback port)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s\n\n"+
			"Runs an upstream broker, the gateway (as a child process, on a temporary spool), simulated\n"+
			"devices and a verifier in one process; cuts the link at intervals, SIGKILLs the gateway once,\n"+
			"and ends with a verified summary. Exit 1 if any acknowledged message was lost.\n\nflags:\n", demoUsage)
		fs.PrintDefaults()
	}
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ferry demo: unexpected arguments %q\nusage: %s\n", fs.Args(), demoUsage)
		return exitUsage
	}
	o.Crash = !*noCrash
	if err := o.validate(); err != nil {
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintf(stderr, "ferry demo: %s\n", line)
		}
		return exitUsage
	}

	// First Ctrl-C: stop producing, let the backlog drain, print the
	// summary. A second one: abort.
	ctx, abort := context.WithCancel(context.Background())
	defer abort()
	stop := make(chan struct{})
	o.Stop = stop
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; !ok {
			return
		}
		fmt.Fprintln(stderr, "\nferry demo: stopping the devices; waiting for the backlog to drain (Ctrl-C again to abort)")
		close(stop)
		if _, ok := <-sigs; ok {
			abort()
		}
	}()

	sum, err := runDemo(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "ferry demo: %v\n", err)
		return exitFailure
	}
	return sum.exitCode()
}

func (o *demoOptions) validate() error {
	var errs []error
	if o.Duration <= 0 {
		errs = append(errs, fmt.Errorf("--duration must be positive (got %v)", o.Duration))
	}
	if o.Devices < 1 || o.Devices > 1000 {
		errs = append(errs, fmt.Errorf("--devices must be 1..1000 (got %d)", o.Devices))
	}
	if o.Rate <= 0 || o.Rate > 10000 {
		errs = append(errs, fmt.Errorf("--rate must be in (0, 10000] (got %g)", o.Rate))
	}
	if o.CutEvery < 0 {
		errs = append(errs, fmt.Errorf("--cut-every must not be negative (got %v)", o.CutEvery))
	}
	if o.CutFor < 0 || (o.CutEvery > 0 && o.CutFor >= o.CutEvery) {
		errs = append(errs, fmt.Errorf("--cut-for must be positive and shorter than --cut-every (got %v)", o.CutFor))
	}
	if o.CutFor == 0 && o.CutEvery > 0 {
		o.CutFor = min(5*time.Second, o.CutEvery/2)
	}
	if o.HTTP != "" {
		if _, _, err := net.SplitHostPort(o.HTTP); err != nil {
			errs = append(errs, fmt.Errorf("--http %q: want host:port (e.g. 127.0.0.1:8080)", o.HTTP))
		}
	}
	return errors.Join(errs...)
}

// demoPlan is when the faults happen, relative to the start of production.
type demoPlan struct {
	cuts    []time.Duration // start of each cut; each lasts cutFor
	cutFor  time.Duration
	crashAt time.Duration // -1: no crash
}

// plan puts a cut every CutEvery that heals at least a second before
// production ends, and the crash in the middle: inside the cut nearest to
// the middle (half-way through it, so that the spool holds a backlog when
// the gateway dies), or at half the duration without cuts.
func (o demoOptions) plan() demoPlan {
	p := demoPlan{cutFor: o.CutFor, crashAt: -1}
	if o.CutEvery > 0 {
		for at := o.CutEvery; at+o.CutFor <= o.Duration-time.Second; at += o.CutEvery {
			p.cuts = append(p.cuts, at)
		}
	}
	if !o.Crash {
		return p
	}
	p.crashAt = o.Duration / 2
	if len(p.cuts) > 0 {
		best := p.cuts[0]
		for _, c := range p.cuts {
			if absDur(c+o.CutFor/2-o.Duration/2) < absDur(best+o.CutFor/2-o.Duration/2) {
				best = c
			}
		}
		p.crashAt = best + o.CutFor/2
	}
	return p
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// Names of the demo's routes, by lane: the generated configuration sends
// alarms/# to lane 0 and sensors/# to lane 5.
const (
	demoAlarmLane     = 0
	demoTelemetryLane = 5
	demoGatewayID     = "demo"
)

var demoLaneNames = map[int]string{demoAlarmLane: "alarms", demoTelemetryLane: "telemetry"}

// demoConfig is the gateway's configuration: loopback listeners on the
// given addresses, the spool in dir, alarms at priority 0 and telemetry
// below, de-duplicated on the readings' id (so device retransmits after a
// crash are dropped at ingress and only bridge resends, which carry the
// original envelope id, can reach upstream twice), and a bridge through
// the proxy that reconnects quickly.
func demoConfig(dir, mqttAddr, stompAddr, httpAddr, upstreamURL string) string {
	return fmt.Sprintf(`# Generated by ferry demo.
gateway_id: %s
log:
  level: info
  format: text
listeners:
  mqtt:
    address: %s
  stomp:
    address: %s
  http:
    address: %s
allow_anonymous: true
spool:
  path: %s
  max_bytes: 256MiB
routes:
  - name: alarms
    match: alarms/#
    priority: %d
    dedupe: json:id
  - name: telemetry
    match: sensors/#
    priority: %d
    dedupe: json:id
bridge:
  upstream: %s
  format: envelope
  connect_timeout: 2s
  backoff:
    base: 200ms
    max: 1s
  stall_timeout: 3s
`, demoGatewayID, mqttAddr, stompAddr, httpAddr, filepath.Join(dir, "spool.db"), demoAlarmLane, demoTelemetryLane, upstreamURL)
}

// freeLoopback returns a loopback address that was free a moment ago, for
// a listener of the child (which binds it itself, again after a restart).
func freeLoopback() (string, error) {
	p, err := freeport.Loopback()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// startUpstream runs the embedded upstream broker (mochi-mqtt, anyone
// allowed) on a free loopback port. Its queues are sized so that the
// verifier, its only subscriber, is never dropped from during a drain:
// mochi drops silently when a subscriber's queue is full (docs/design.md §4),
// and the demo counts those drops to tell them from a loss of Ferry's.
func startUpstream() (*mochi.Server, string, error) {
	srv := mochi.New(&mochi.Options{
		InlineClient: false,
		Logger:       slog.New(slog.DiscardHandler),
		Capabilities: func() *mochi.Capabilities {
			c := mochi.NewDefaultServerCapabilities()
			c.MaximumClientWritesPending = 1 << 16
			c.MaximumInflight = 1<<16 - 1
			return c
		}(),
	})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	if err := srv.AddListener(mqtt.GuardListener(listeners.NewNet("demo-upstream", ln))); err != nil {
		_ = ln.Close()
		return nil, "", err
	}
	go func() { _ = srv.Serve() }()
	return srv, ln.Addr().String(), nil
}

// runDemo runs the whole demo and returns the verified summary. An error
// means the demo could not run (a port, the child binary), not a loss.
func runDemo(ctx context.Context, o demoOptions) (*demoSummary, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	exe := o.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("cannot find this binary to run the gateway: %w", err)
		}
	}
	dir, removeDir := o.Dir, false
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "ferry-demo-*"); err != nil {
			return nil, err
		}
		removeDir = true
	}
	keep := false
	defer func() {
		if removeDir && !keep {
			_ = os.RemoveAll(dir)
		}
	}()

	up, upAddr, err := startUpstream()
	if err != nil {
		return nil, fmt.Errorf("embedded upstream: %w", err)
	}
	defer func() { _ = mqtt.CloseMochi(up) }()
	proxy, err := firmwaresim.NewProxy("127.0.0.1:0", upAddr)
	if err != nil {
		return nil, err
	}
	defer func() { _ = proxy.Close() }()

	addrs := map[string]string{"http": o.HTTP}
	for _, k := range []string{"mqtt", "stomp", "http"} {
		if addrs[k] != "" {
			continue
		}
		if addrs[k], err = freeLoopback(); err != nil {
			return nil, err
		}
	}
	cfgPath := filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(cfgPath, []byte(demoConfig(dir, addrs["mqtt"], addrs["stomp"], addrs["http"], proxy.URL())), 0o600); err != nil {
		return nil, err
	}
	if _, err := config.Load(cfgPath); err != nil {
		return nil, fmt.Errorf("generated configuration: %w", err)
	}

	telemetry, err := firmwaresim.NewFleet(firmwaresim.FleetOptions{
		Devices: o.Devices, Mix: []firmwaresim.Protocol{firmwaresim.MQTT311, firmwaresim.MQTT5, firmwaresim.STOMP},
		MQTTAddr: addrs["mqtt"], STOMPAddr: addrs["stomp"], Prefix: "dev",
		Duration: o.Duration, Drain: demoDrain,
		Template: firmwaresim.DeviceConfig{
			Topic: "sensors/{device}/temp", QoS: 1, Rate: o.Rate, Burst: 1, Window: 8, PayloadSize: 128,
			BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second, ConnectTimeout: 2 * time.Second,
		},
	})
	if err != nil {
		return nil, err
	}
	alarms, err := firmwaresim.NewFleet(firmwaresim.FleetOptions{
		Devices: 1, Mix: []firmwaresim.Protocol{firmwaresim.MQTT5}, MQTTAddr: addrs["mqtt"], Prefix: demoAlarmPrefix,
		RunID: telemetry.RunID(), Duration: o.Duration, Drain: demoDrain,
		Template: firmwaresim.DeviceConfig{
			Topic: "alarms/{device}", QoS: 1, Rate: demoAlarmRate, Burst: 1, Window: 1, PayloadSize: 96,
			BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second, ConnectTimeout: 2 * time.Second,
		},
	})
	if err != nil {
		return nil, err
	}
	fleets := []*firmwaresim.Fleet{telemetry, alarms}

	v := firmwaresim.NewVerifier(firmwaresim.VerifierOptions{Broker: upAddr, Filter: "sites/" + demoGatewayID + "/#", RunID: telemetry.RunID()})
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = v.Start(sctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer v.Close()

	child := &gatewayChild{exe: exe, cfg: cfgPath, logPath: filepath.Join(dir, "ferry.log"), httpAddr: addrs["http"], client: http.Client{Timeout: time.Second}}
	defer func() { _ = child.stop(10 * time.Second) }() // after an early return; the summary path stops it first
	plan := o.plan()
	view := newDemoView(out, isTerminal(out), o, plan, fleets, v, child)
	view.printHeader(telemetry.RunID(), addrs, dir)
	if err := child.start(ctx); err != nil {
		keep = true
		return nil, err
	}

	// Production, the faults and the live view run together.
	start := time.Now()
	view.begin(start)
	viewCtx, stopView := context.WithCancel(ctx)
	var viewWG sync.WaitGroup
	viewWG.Go(func() { view.run(viewCtx) })
	prodCtx, stopProd := context.WithCancel(ctx)
	defer stopProd()
	if o.Stop != nil {
		go func() {
			select {
			case <-o.Stop:
				stopProd()
			case <-prodCtx.Done():
			}
		}()
	}
	tl := &timeline{}
	var faultWG sync.WaitGroup
	faultErr := make(chan error, 1)
	faultWG.Go(func() {
		if err := runFaults(prodCtx, start, plan, proxy, child, view, tl); err != nil {
			faultErr <- err
			stopProd()
		}
	})
	var fleetWG sync.WaitGroup
	for _, f := range fleets {
		fleetWG.Go(func() { _ = f.Run(prodCtx) }) // a cancelled run keeps what was acknowledged
	}
	fleetWG.Wait()
	view.event("devices stopped producing; waiting for the backlog to reach upstream")
	stopProd()
	faultWG.Wait()
	select {
	case err := <-faultErr:
		stopView()
		viewWG.Wait()
		keep = true
		return nil, fmt.Errorf("%w (gateway log: %s)", err, child.logPath)
	default:
	}
	proxy.Heal() // an early stop may end production inside a cut

	acked := map[string]time.Time{}
	for _, f := range fleets {
		for id, at := range f.Acked() {
			acked[id] = at
		}
	}
	wctx, cancel := context.WithTimeout(ctx, demoSettle)
	missing := v.WaitFor(wctx, acked)
	cancel()
	if missing == 0 {
		view.event("every acknowledged message is upstream")
	}
	final, _ := child.status(ctx)
	stopView()
	viewWG.Wait()

	sum := newDemoSummary(o, plan, fleets, v.Report(acked), acked, tl, final, up)
	sum.Elapsed = time.Since(start)
	sum.PeakBacklog = view.peakBacklog()
	sum.Dir, sum.Log = dir, child.logPath
	if err := child.stop(10 * time.Second); err != nil {
		sum.StopErr = err.Error()
	}
	if sum.exitCode() != exitOK {
		keep = true
	}
	sum.Kept = !removeDir || keep
	sum.print(out)
	if ctx.Err() != nil {
		return sum, ctx.Err()
	}
	return sum, nil
}

const (
	demoAlarmPrefix = "alarm"
	demoAlarmRate   = 0.5 // alarms per second: a rare lane
	demoDrain       = 20 * time.Second
	demoSettle      = 60 * time.Second
	demoDowntime    = time.Second // between the SIGKILL and the restart
)

// timeline records when the faults happened, for the Mosquitto estimate.
type timeline struct {
	mu      sync.Mutex
	outages []span      // link down: cut to heal
	crashes []time.Time // SIGKILLs
}

type span struct{ from, to time.Time }

func (t *timeline) outage(from, to time.Time) {
	t.mu.Lock()
	t.outages = append(t.outages, span{from, to})
	t.mu.Unlock()
}

func (t *timeline) crash(at time.Time) {
	t.mu.Lock()
	t.crashes = append(t.crashes, at)
	t.mu.Unlock()
}

// runFaults carries out the plan: cuts (proxy refuses new connections and
// resets the open one, until it heals) and the crash (SIGKILL, then the
// gateway is started again on the same spool at once). It returns early,
// with the link healed and the gateway running, when ctx ends.
func runFaults(ctx context.Context, start time.Time, plan demoPlan, proxy *firmwaresim.Proxy, child *gatewayChild, view *demoView, tl *timeline) (retErr error) {
	type step struct {
		at   time.Duration
		kind string // "cut", "heal", "crash"
		n    int
	}
	var steps []step
	for i, c := range plan.cuts {
		steps = append(steps, step{c, "cut", i + 1}, step{c + plan.cutFor, "heal", i + 1})
	}
	if plan.crashAt >= 0 {
		steps = append(steps, step{at: plan.crashAt, kind: "crash"})
	}
	// Stable by time; a crash at the same instant as a heal comes first.
	for i := 1; i < len(steps); i++ {
		for j := i; j > 0 && steps[j].at < steps[j-1].at; j-- {
			steps[j], steps[j-1] = steps[j-1], steps[j]
		}
	}
	var restart sync.WaitGroup
	restartErr := make(chan error, 1)
	defer func() {
		restart.Wait()
		select {
		case err := <-restartErr:
			retErr = err
		default:
		}
	}()
	var cutAt time.Time
	cutN := 0
	defer func() {
		if !cutAt.IsZero() { // production ended inside a cut
			proxy.Heal()
			tl.outage(cutAt, time.Now())
			view.healed(cutN, len(plan.cuts), time.Since(cutAt))
		}
	}()
	for _, s := range steps {
		t := time.NewTimer(time.Until(start.Add(s.at)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		switch s.kind {
		case "cut":
			proxy.Refuse()
			proxy.Cut()
			cutAt, cutN = time.Now(), s.n
			view.cutStarted(s.n, len(plan.cuts), plan.cutFor)
		case "heal":
			proxy.Heal()
			tl.outage(cutAt, time.Now())
			view.healed(s.n, len(plan.cuts), time.Since(cutAt))
			cutAt = time.Time{}
		case "crash":
			backlog := view.lastBacklog()
			child.kill()
			tl.crash(time.Now())
			view.crashed(backlog)
			// The restart runs beside the schedule, so that a heal due
			// meanwhile comes on time.
			restart.Go(func() {
				// Down for a moment, as under a supervisor's restart
				// delay: the devices find nobody to talk to.
				pause := time.NewTimer(demoDowntime)
				select {
				case <-pause.C:
				case <-ctx.Done():
					pause.Stop()
				}
				if err := child.start(context.WithoutCancel(ctx)); err != nil {
					restartErr <- fmt.Errorf("restart after the crash: %w", err)
					return
				}
				queued, draining := int64(-1), false
				if st, err := child.status(context.WithoutCancel(ctx)); err == nil && st.Spool != nil {
					queued, draining = st.Spool.Messages, st.Link.State == gateway.LinkUp
				}
				view.restarted(queued, draining)
			})
		}
	}
	return nil
}

// isTerminal reports whether w is a terminal (a character device), where
// the live view redraws its lines in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// isAlarm tells an alarm reading's id ("<run>-alarm0-000001") from a
// telemetry one.
func isAlarm(id string) bool { return strings.Contains(id, "-"+demoAlarmPrefix) }
