package gateway

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/protocols/mqtt"
	"github.com/ferrymq/ferry/protocols/stomp"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// Options are the runtime parts of a Gateway that are not configuration.
type Options struct {
	Logger *slog.Logger // nil: discard
	// LogLevel is the level Logger logs from, when it can change: Reload
	// sets it from log.level. nil: a reload leaves the level alone.
	LogLevel *slog.LevelVar
	// LogLevelPinned: the level was chosen at start (ferry run -v,
	// --log-level) and wins over log.level, also on reload.
	LogLevelPinned bool
	// Banner receives the start banner (how to publish, where to watch);
	// nil: none.
	Banner io.Writer
}

// Gateway is one running Ferry: spool, bridge, listeners and HTTP, wired
// as docs/design.md §2 draws them.
type Gateway struct {
	cfg    *config.Config
	log    *slog.Logger
	level  *slog.LevelVar // nil: fixed
	pinned bool           // level given at start, not from log.level
	banner io.Writer

	sp      *spool.Spool
	core    *ingest.Core
	auth    *Auth
	router  *Router
	metrics *Metrics
	mq      *mqtt.Server
	st      *stomp.Server
	stLns   []net.Listener
	stWS    *http.Server // the stomp_websocket listener, or nil
	stWSLn  net.Listener
	br      *bridge.Bridge
	ups     []*upstream   // main (sp, br) first, then the upstreams entries
	down    *downlane     // the downstream lane, or nil without bridge.downstream
	up      *mochi.Server // the embedded development upstream, or nil
	httpSrv *http.Server
	httpLn  net.Listener

	dupLog rate.Sometimes // the duplicate log line, at most once a second

	ready atomic.Bool
}

// New opens the spool and builds every part; nothing listens until Run.
// It fails with spool.ErrLocked when another gateway holds the spool.
func New(cfg *config.Config, o Options) (*Gateway, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, log: log, level: o.LogLevel, pinned: o.LogLevelPinned, banner: o.Banner, dupLog: rate.Sometimes{Interval: time.Second}}
	for _, w := range cfg.Warnings() {
		log.Warn("configuration warning", "warning", w)
	}
	var err error
	if g.auth, err = NewAuth(cfg); err != nil {
		return nil, err
	}
	if g.router, err = NewRouter(cfg); err != nil {
		return nil, err
	}
	if dir := dirOf(cfg.Spool.Path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("spool directory: %w", err)
		}
	}
	if g.sp, err = spool.Open(cfg.Spool.Path, cfg.GatewaySpoolOptions(log.With("component", "spool"))); err != nil {
		return nil, err
	}
	if rep := g.sp.Salvaged(); rep != nil {
		log.Warn("spool was damaged and has been salvaged", "kept", rep.Kept, "lost", rep.LostText(),
			"state_kept", rep.StateKept, "state_lost", rep.StateLostText(), "damaged_file", rep.Damaged)
	}
	g.ups = []*upstream{{name: config.MainUpstream, sp: g.sp}}
	if err := g.openUpstreams(); err != nil {
		_ = g.sp.Close()
		return nil, err
	}
	if len(cfg.Bridge.Downstream) > 0 {
		if g.down, err = openDownlane(cfg, log); err != nil {
			_ = g.closeUpstreams()
			_ = g.sp.Close()
			return nil, err
		}
	}
	if err := g.build(); err != nil {
		_ = g.closeUpstreams()
		_ = g.sp.Close()
		if g.down != nil {
			_ = g.down.sp.Close()
		}
		return nil, err
	}
	return g, nil
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return ""
}

func (g *Gateway) build() error {
	cfg := g.cfg
	var err error
	so := spoolsink.Options{
		OnAccepted: func(m *message.Message) { g.metrics.ObserveAccepted(m.Source.Protocol.String(), m.Priority) },
		OnDuplicate: func(m *message.Message) {
			rt := g.router.Route(m.Topic)
			g.metrics.ObserveDuplicate(rt.Name, dedupeReason(rt.Dedupe.Kind))
			g.dupLog.Do(func() {
				g.log.Info("duplicate acknowledged, not stored again (a retransmit, or the route's dedupe key seen inside spool.dedupe_window)",
					"topic", m.Topic, "client_id", m.Source.ClientID, "msg_id", m.ID, "duplicates_total", g.sp.Stats().Duplicates)
			})
		},
		Retained: cfg.State.Persist,
	}
	mainUp := g.ups[0]
	mainUp.sink, mainUp.quiet = spoolsink.New(g.sp, so), spoolsink.New(g.sp, spoolsink.Options{Retained: so.Retained})
	var sink message.Sink = mainUp.sink
	if len(g.ups) > 1 {
		if err := g.buildUpstreams(so); err != nil {
			return err
		}
		sink = newFanSink(g.router, g.ups, so)
	}
	g.core, err = ingest.New(ingest.Options{
		Sink:    sink,
		Router:  g.router,
		LinkUp:  g.routeLinkUp,
		Timeout: cfg.Limits.MQTT.AcceptTimeout.D(),
		Logger:  g.log.With("component", "ingest"),
	})
	if err != nil {
		return err
	}

	lns, err := cfg.MQTTListeners()
	if err != nil {
		return err
	}
	if len(lns) > 0 {
		mo := cfg.MQTTOptions(lns)
		mo.Ingest, mo.Auth, mo.Store = g.core, g.auth, cfg.StoreOptions(spoolState{g.sp})
		mo.Logger = g.log.With("component", "mqtt")
		if g.mq, err = mqtt.New(mo); err != nil {
			return err
		}
	}

	if cfg.HasSTOMP() {
		so := cfg.STOMPOptions()
		so.Ingest, so.Auth = g.core, g.auth
		so.Logger = g.log.With("component", "stomp")
		if g.st, err = stomp.NewServer(so); err != nil {
			return err
		}
	}

	bo, err := cfg.BridgeOptions()
	if err != nil {
		return err
	}
	bo.Retain = func(m *message.Message) bool { return g.router.Route(m.Topic).UpstreamRetain }
	bo.OnDelivered = func(age time.Duration) { g.metrics.ObserveMessageAge(age) }
	bo.Logger = g.log.With("component", "bridge")
	if g.down != nil {
		bo.DownstreamSink = g.down
		if g.mq != nil {
			g.down.targets = append(g.down.targets, g.mq)
		}
		if g.st != nil {
			g.down.targets = append(g.down.targets, g.st)
		}
	}
	if g.br, err = bridge.New(g.sp, bo); err != nil {
		return err
	}
	mainUp.br = g.br

	g.metrics = NewMetrics(MetricsOptions{
		GatewayID:        cfg.GatewayID,
		Version:          Version,
		Spool:            g.sp,
		Ingress:          g.ingressStats,
		Bridge:           g.bridgeStats,
		Routes:           g.router.Routes,
		SpoolMaxBytes:    int64(cfg.Spool.MaxBytes),
		SpoolMaxMessages: cfg.Spool.MaxMessages,
		MaxRate:          cfg.Bridge.MaxRate.Messages,
		MaxByteRate:      float64(cfg.Bridge.MaxRate.Bytes),
		Salvage:          g.sp.Stats().Salvage, // kept in the file: the last salvage, also after restarts
		Logins:           g.auth.Stats,
		Upstreams:        g.upstreamStatus,
	})
	if g.mq != nil && cfg.State.Persist {
		g.metrics.Registry().MustRegister(stateCollector{mq: g.mq, sp: g.sp})
	}
	g.metrics.Registry().MustRegister(upstreamCollector{ups: g.ups, now: func() float64 { return float64(time.Now().UnixNano()) / 1e9 },
		maxBytes: func(i int) int64 {
			if i == 0 {
				return int64(cfg.Spool.MaxBytes)
			}
			return int64(cfg.Upstreams[i-1].Spool.MaxBytes)
		}})
	return nil
}

// Run starts the parts in order (embedded upstream, bridge, listeners,
// HTTP) and serves until ctx is done, then shuts down in reverse: stop the
// listeners (devices whose ack was pending resend), stop the bridge (its in
// flight messages go back to the spool), stop HTTP, close the spool.
// Nothing acknowledged is lost.
func (g *Gateway) Run(ctx context.Context) (err error) {
	defer func() {
		if cerr := g.closeUpstreams(); err == nil && cerr != nil {
			err = cerr
		}
		if cerr := g.sp.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if g.down != nil {
			if cerr := g.down.sp.Close(); err == nil && cerr != nil {
				err = cerr
			}
		}
	}()
	if g.cfg.Bridge.IsEmbedded() {
		if err := g.startEmbedded(); err != nil {
			return err
		}
		defer func() { _ = mqtt.CloseMochi(g.up) }()
	}
	brCtx, stopBridge := context.WithCancel(context.Background())
	// One result per bridge: main's and every upstreams entry's.
	brDone := make(chan error, len(g.ups))
	go func() { brDone <- g.br.Run(brCtx) }()
	for _, u := range g.ups[1:] {
		go func() {
			if err := u.br.Run(brCtx); err != nil && !errors.Is(err, context.Canceled) {
				brDone <- fmt.Errorf("upstream %s: %w", u.name, err)
				return
			}
			brDone <- nil
		}()
	}
	go g.watchLink(brCtx)
	// The sampler behind the status page's rates, history and outages; it
	// stops before the bridge, so that the shutdown is not an outage.
	smpCtx, stopSampler := context.WithCancel(context.Background())
	smpDone := make(chan struct{})
	go func() { defer close(smpDone); g.metrics.Run(smpCtx) }()
	stopBr := func() error {
		stopSampler()
		<-smpDone
		stopBridge()
		var first error
		for range g.ups {
			if err := <-brDone; err != nil && !errors.Is(err, context.Canceled) && first == nil {
				first = err
			}
		}
		return first
	}

	if err := g.startListeners(); err != nil {
		g.stopListeners()
		_ = stopBr()
		return err
	}
	if err := g.startHTTP(); err != nil {
		g.stopListeners()
		_ = stopBr()
		return err
	}
	stopDown := func() {}
	if g.down != nil {
		dctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); g.down.run(dctx) }()
		stopDown = func() { cancel(); <-done }
	}
	g.ready.Store(true)
	g.log.Info("gateway started", "gateway_id", g.cfg.GatewayID, "version", Version, "spool", g.cfg.Spool.Path)
	g.printBanner()

	select {
	case <-ctx.Done():
	case err := <-brDone:
		brDone <- err // for stopBr
		g.log.Error("bridge stopped", "err", err)
	}
	g.ready.Store(false)
	stopDown() // before the listeners it delivers to
	g.log.Info("stopping listeners")
	g.stopListeners()
	g.log.Info("stopping bridge")
	berr := stopBr()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if g.httpSrv != nil {
		_ = g.httpSrv.Shutdown(sctx)
	}
	g.log.Info("gateway stopped")
	return berr
}

func (g *Gateway) startListeners() error {
	if g.mq != nil {
		if err := g.mq.Start(); err != nil {
			return addrInUseHint(err)
		}
	}
	if g.st != nil {
		for _, name := range []string{"stomp", "stomp_tls", "stomp_websocket"} {
			if err := g.startSTOMP(name); err != nil {
				return err
			}
		}
	}
	return nil
}

// startSTOMP starts one STOMP listener (TCP, or WebSocket on its path),
// with TLS when its tls block says so.
func (g *Gateway) startSTOMP(name string) error {
	addr, tc, lo, err := g.cfg.STOMPListener(name)
	if err != nil || addr == "" {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listeners.%s: %w", name, err)
	}
	kind := "tcp"
	if tc != nil {
		ln = tls.NewListener(ln, tc)
		kind = "tls"
	}
	if name == "stomp_websocket" {
		path := g.cfg.Listeners.STOMPWebSocket.Path
		mux := http.NewServeMux()
		mux.Handle(path, g.st.WebSocketHandlerWith(lo))
		g.stWS = &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: g.cfg.Limits.STOMP.ConnectTimeout.D(),
			MaxHeaderBytes:    int(g.cfg.Limits.STOMP.MaxConnectSize) + 4096,
			ErrorLog:          slog.NewLogLogger(g.log.With("component", "stomp", "listener", name).Handler(), slog.LevelDebug),
		}
		g.stWSLn = ln
		kind = map[string]string{"tcp": "ws", "tls": "wss"}[kind]
		g.log.Info("stomp listening", "component", "stomp", "listener", name, "kind", kind, "addr", ln.Addr().String(), "path", path)
		go func() {
			if err := g.stWS.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				g.log.Error("stomp listener stopped", "listener", name, "err", err)
			}
		}()
		return nil
	}
	g.stLns = append(g.stLns, ln)
	g.log.Info("stomp listening", "component", "stomp", "listener", name, "kind", kind, "addr", ln.Addr().String())
	go func() {
		if err := g.st.ServeWith(ln, lo); err != nil && !errors.Is(err, stomp.ErrServerClosed) {
			g.log.Error("stomp listener stopped", "listener", name, "err", err)
		}
	}()
	return nil
}

// addrInUseHint says what usually holds an MQTT port on a fresh Debian
// machine: the mosquitto service that installing the package starts. Only
// for the MQTT listeners: mosquitto does not take the others.
func addrInUseHint(err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w (another program listens there, often the Debian mosquitto service: "+
			"stop it with 'systemctl disable --now mosquitto' or change the address in the configuration)", err)
	}
	return err
}

func (g *Gateway) stopListeners() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g.core.Close() // pending and later messages: "shutting down"
	if g.mq != nil {
		if err := g.mq.Close(ctx); err != nil {
			g.log.Warn("mqtt close", "err", err)
		}
	}
	if g.stWS != nil {
		// Stops the upgrades; the STOMP connections it handed over are
		// the server's to close, receipts first.
		_ = g.stWS.Close()
	}
	if g.st != nil {
		if err := g.st.Close(ctx); err != nil {
			g.log.Warn("stomp close", "err", err)
		}
	}
}

func (g *Gateway) startHTTP() error {
	addr := g.cfg.Listeners.HTTP.Address
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listeners.http: %w", err)
	}
	if t := g.cfg.ListenerTLS("http"); t != nil {
		tc, err := t.Config()
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("listeners.http: %w", err)
		}
		ln = tls.NewListener(ln, tc)
	}
	g.httpLn = ln
	ups := map[string]*spool.Spool{}
	for _, u := range g.ups[1:] {
		ups[u.name] = u.sp
	}
	h := NewHTTPHandler(HTTPOptions{Metrics: g.metrics, Ready: g.readyErr, Spool: g.sp, Upstreams: ups, Listener: g.cfg.Listeners.HTTP, Logger: g.log})
	g.httpSrv = NewHTTPServer(addr, h, g.log)
	g.log.Info("http listening", "component", "http", "listener", "http", "addr", ln.Addr().String(), "auth", cmp.Or(g.cfg.Listeners.HTTP.Auth.Scheme(), "none"))
	go func() {
		if err := g.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("http listener stopped", "err", err)
		}
	}()
	return nil
}

func (g *Gateway) readyErr() error {
	if !g.ready.Load() {
		return errors.New("starting or stopping")
	}
	if err := g.sp.Err(); err != nil {
		return err
	}
	if g.sp.Stats().DiskFull {
		return errors.New("spool: the disk is full")
	}
	return nil
}

// HTTPAddr returns the HTTP listener's bound address ("" when off).
func (g *Gateway) HTTPAddr() string {
	if g.httpLn == nil {
		return ""
	}
	return g.httpLn.Addr().String()
}

// MQTTAddr returns the bound address of an MQTT listener by name.
func (g *Gateway) MQTTAddr(name string) string {
	if g.mq == nil {
		return ""
	}
	return g.mq.Addr(name)
}

// STOMPAddr returns the bound address of the i-th STOMP listener.
func (g *Gateway) STOMPAddr(i int) string {
	if i >= len(g.stLns) {
		return ""
	}
	return g.stLns[i].Addr().String()
}

// STOMPWebSocketAddr returns the bound address of the stomp_websocket
// listener ("" when off).
func (g *Gateway) STOMPWebSocketAddr() string {
	if g.stWSLn == nil {
		return ""
	}
	return g.stWSLn.Addr().String()
}

// Ready reports whether the gateway is serving.
func (g *Gateway) Ready() bool { return g.ready.Load() }

// DownstreamStats returns the downstream lane's counters (zero without
// bridge.downstream).
func (g *Gateway) DownstreamStats() DownstreamStats {
	if g.down == nil {
		return DownstreamStats{}
	}
	return g.down.stats()
}

// Spool exposes the spool (tests, tools).
func (g *Gateway) Spool() *spool.Spool { return g.sp }

// Reload re-reads the configuration file and applies what can change
// without a restart: users, ACLs and routes. It logs the keys that changed
// but need a restart.
func (g *Gateway) Reload(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	// gateway_id needs a restart (client id, downstream filters); until
	// then routes keep resolving {gateway_id} to the running one.
	newID := cfg.GatewayID
	cfg.GatewayID = g.cfg.GatewayID
	if err := checkUpstreams(cfg, g.upstreamNames()); err != nil {
		return err
	}
	if err := g.auth.Reload(cfg); err != nil {
		return err
	}
	if err := g.router.Reload(cfg); err != nil {
		return err
	}
	cfg.GatewayID = newID
	g.reloadLogLevel(cfg.Log)
	if keys := config.RestartRequired(g.cfg, cfg); len(keys) > 0 {
		g.log.Warn("configuration reloaded; these keys changed and need a restart", "keys", strings.Join(keys, ","))
	} else {
		g.log.Info("configuration reloaded")
	}
	return nil
}

// reloadLogLevel applies log.level. The line that says so is written at
// Info while the more verbose of the two levels is in force.
func (g *Gateway) reloadLogLevel(l config.LogConfig) {
	want := l.SlogLevel()
	switch {
	case g.level == nil || want == g.level.Level():
	case g.pinned:
		g.log.Info("log.level not applied: the level given at start stays until a restart",
			"log_level", g.level.Level().String(), "configured", want.String())
	case want < g.level.Level():
		from := g.level.Level()
		g.level.Set(want)
		g.log.Info("log level changed", "from", from.String(), "to", want.String())
	default:
		g.log.Info("log level changed", "from", g.level.Level().String(), "to", want.String())
		g.level.Set(want)
	}
}

// watchLink keeps every upstream's link state current for the QoS 0
// policy.
func (g *Gateway) watchLink(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		for _, u := range g.ups {
			u.up.Store(u.br.State() == bridge.StateUp)
		}
		select {
		case <-ctx.Done():
			for _, u := range g.ups {
				u.up.Store(false)
			}
			return
		case <-t.C:
		}
	}
}

// routeLinkUp reports whether the link of an upstream topic's route sends
// to is up (qos0_when_offline: drop spools QoS 0 only then).
func (g *Gateway) routeLinkUp(topic string) bool {
	names, _ := g.router.Upstreams(topic)
	for _, u := range g.ups {
		if u.up.Load() && slices.Contains(names, u.name) {
			return true
		}
	}
	return false
}

func (g *Gateway) ingressStats() []IngressStats {
	var out []IngressStats
	if g.mq != nil {
		s := g.mq.Stats()
		rej := map[string]uint64{}
		for r, n := range s.Rejected {
			rej[ingest.Reason(r).String()] += n
		}
		for r, n := range s.Refused {
			rej[ingest.Reason(r).String()] += n
		}
		out = append(out, IngressStats{Protocol: "mqtt", Connected: int(s.ClientsConnected), Rejected: rej,
			LocalDropped: s.SubscriberDrops, SlowConsumers: s.SlowConsumers, PendingClosed: s.PendingClosed})
	}
	if g.st != nil {
		s := g.st.Stats()
		rej := map[string]uint64{}
		for r, n := range s.Errors {
			rej[ingest.Reason(r).String()] += n
		}
		out = append(out, IngressStats{Protocol: "stomp", Connected: int(s.ConnectionsCurrent), Rejected: rej,
			LocalDropped: s.LocalDrops, SlowConsumers: s.SlowConsumers, PendingClosed: s.PendingClosed})
	}
	return out
}

func (g *Gateway) bridgeStats() BridgeStats {
	s := g.br.Stats()
	out := BridgeStats{
		Reconnects:   s.Reconnects,
		Published:    s.Published,
		Acked:        s.Acked,
		Resent:       s.Resent,
		Stalls:       s.Stalls,
		DeadLettered: s.DeadLettered,
		Downstream:   s.DownstreamReceived,
		Errors:       map[string]uint64{},
	}
	upstream := strings.Join(g.cfg.Bridge.Upstream, ", ")
	if g.cfg.Bridge.IsEmbedded() {
		upstream = "embedded " + g.cfg.Bridge.EmbeddedAddress
	}
	for _, p := range s.Partitions {
		out.Links = append(out.Links, LinkStats{Partition: p.Partition, State: p.State.String(), Since: p.Since, InFlight: p.InFlight, Upstream: upstream,
			LastError: p.LastError, LastErrorAt: p.LastErrorAt})
		if p.Failures > 0 {
			out.Errors["connect_failed"] += p.Failures
		}
		if p.Stalls > 0 {
			out.Errors["stalled"] += p.Stalls
		}
	}
	if s.SpoolAckErrors > 0 {
		out.Errors["spool_ack"] = s.SpoolAckErrors
	}
	return out
}
