package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/protocols/mqtt"
	"github.com/ferrymq/ferry/protocols/stomp"
	"github.com/ferrymq/ferry/spool"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// Options are the runtime parts of a Gateway that are not configuration.
type Options struct {
	Logger *slog.Logger // nil: discard
	// Banner receives the start banner (how to publish, where to watch);
	// nil: none.
	Banner io.Writer
}

// Gateway is one running Ferry: spool, bridge, listeners and HTTP, wired
// as DESIGN.md §2 draws them.
type Gateway struct {
	cfg    *Config
	log    *slog.Logger
	banner io.Writer

	sp      *spool.Spool
	auth    *Auth
	router  *Router
	metrics *Metrics
	mq      *mqtt.Server
	st      *stomp.Server
	stLns   []net.Listener
	br      *bridge.Bridge
	up      *mochi.Server // the embedded development upstream, or nil
	httpSrv *http.Server
	httpLn  net.Listener

	ready   atomic.Bool
	linkUp  atomic.Bool
	leaseMu sync.Mutex
	leased  map[uint64]time.Time // in flight upstream: id → accepted at, for ferry_message_age_seconds
}

// New opens the spool and builds every part; nothing listens until Run.
// It fails with spool.ErrLocked when another gateway holds the spool.
func New(cfg *Config, o Options) (*Gateway, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, log: log, banner: o.Banner, leased: make(map[uint64]time.Time)}
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
	if g.sp, err = spool.Open(cfg.Spool.Path, cfg.SpoolOptions(log.With("component", "spool"))); err != nil {
		return nil, err
	}
	if rep := g.sp.Salvaged(); rep != nil {
		log.Warn("spool was damaged and has been salvaged", "kept", rep.Kept, "lost", rep.Lost, "damaged_file", rep.Damaged)
	}
	if err := g.build(); err != nil {
		_ = g.sp.Close()
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
	router := linkAwareRouter{r: g.router, up: &g.linkUp}
	relayToSTOMP, relayToMQTT := &relay{}, &relay{}

	var lns []mqtt.Listener
	if a := cfg.Listeners.MQTT.Address; a != "" {
		lns = append(lns, mqtt.Listener{Name: "mqtt", Kind: mqtt.KindTCP, Address: a})
	}
	if l := cfg.Listeners.MQTTTLS; l.Address != "" {
		tc, err := serverTLS(l.TLS)
		if err != nil {
			return fmt.Errorf("listeners.mqtt_tls: %w", err)
		}
		lns = append(lns, mqtt.Listener{Name: "mqtt_tls", Kind: mqtt.KindTLS, Address: l.Address, TLS: tc})
	}
	if a := cfg.Listeners.WebSocket.Address; a != "" {
		lns = append(lns, mqtt.Listener{Name: "websocket", Kind: mqtt.KindWS, Address: a})
	}
	lim := cfg.Limits.MQTT
	var err error
	if len(lns) > 0 {
		g.mq, err = mqtt.New(mqtt.Options{
			Listeners:      lns,
			Sink:           g.sink(message.ProtoMQTT),
			Router:         router,
			Auth:           g.auth,
			Local:          relayToSTOMP,
			AcceptTimeout:  lim.AcceptTimeout.D(),
			ConnectTimeout: lim.ConnectTimeout.D(),
			MaxConnections: orNoLimit(lim.MaxConnections),
			MaxPacketSize:  int(lim.MaxPacketSize),
			MaxTopicLength: lim.MaxTopicLength,
			MaxTopicLevels: lim.MaxTopicLevels,
			PublishRate:    lim.PublishRate,
			PublishBurst:   lim.PublishBurst,
			Logger:         g.log.With("component", "mqtt"),
		})
		if err != nil {
			return err
		}
		relayToMQTT.to = g.mq
	}

	sl := cfg.Limits.STOMP
	if cfg.Listeners.STOMP.Address != "" || cfg.Listeners.STOMPTLS.Address != "" {
		hb := sl.Heartbeat.D()
		if hb == 0 {
			hb = -1 // off
		}
		g.st, err = stomp.NewServer(stomp.Options{
			Sink:           g.sink(message.ProtoSTOMP),
			Auth:           g.auth,
			Router:         router,
			Local:          relayToMQTT,
			AcceptTimeout:  sl.AcceptTimeout.D(),
			MaxFrameSize:   int(sl.MaxFrameSize),
			MaxHeaders:     sl.MaxHeaders,
			MaxHeaderLine:  int(sl.MaxHeaderLine),
			MaxConnections: sl.MaxConnections,
			ReadTimeout:    sl.ReadTimeout.D(),
			HeartBeat:      [2]time.Duration{hb, hb},
			Logger:         g.log.With("component", "stomp"),
		})
		if err != nil {
			return err
		}
		relayToSTOMP.to = g.st
	}

	bc := cfg.Bridge
	brokers := bc.Upstream
	if bc.IsEmbedded() {
		brokers = []string{"tcp://" + bc.EmbeddedAddress}
	}
	format, err := bridge.ParseFormat(bc.Format)
	if err != nil {
		return err
	}
	bo := bridge.Options{
		Brokers:        brokers,
		Username:       bc.Username,
		Password:       bc.Password,
		ClientID:       bc.ClientID,
		GatewayID:      cfg.GatewayID,
		KeepAlive:      bc.Keepalive.D(),
		ConnectTimeout: bc.ConnectTimeout.D(),
		Window:         bc.Window,
		Partitions:     bc.Partitions,
		BackoffBase:    bc.Backoff.Base.D(),
		BackoffMax:     bc.Backoff.Max.D(),
		StableAfter:    bc.StableAfter.D(),
		StallTimeout:   bc.StallTimeout.D(),
		MaxAttempts:    bc.MaxAttempts,
		MaxRate:        bc.MaxRate.Messages,
		MaxByteRate:    float64(bc.MaxRate.Bytes),
		Format:         format,
		Downstream:     bc.Downstream,
		DownstreamSink: message.SinkFunc(g.downstream),
		Logger:         g.log.With("component", "bridge"),
	}
	if needsTLS(brokers) || bc.TLS.CAFile != "" || bc.TLS.CertFile != "" {
		tc, err := bridge.LoadTLS(bridge.TLSFiles{CAFile: bc.TLS.CAFile, CertFile: bc.TLS.CertFile, KeyFile: bc.TLS.KeyFile, ServerName: bc.TLS.ServerName})
		if err != nil {
			return err
		}
		tc.InsecureSkipVerify = bc.TLS.InsecureSkipVerify
		bo.TLS = tc
	}
	if g.br, err = bridge.New(queueWithAge{g}, bo); err != nil {
		return err
	}

	g.metrics = NewMetrics(MetricsOptions{
		GatewayID: cfg.GatewayID,
		Version:   Version,
		Spool:     g.sp,
		Ingress:   g.ingressStats,
		Bridge:    g.bridgeStats,
	})
	return nil
}

func orNoLimit(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

func needsTLS(urls []string) bool {
	for _, u := range urls {
		for _, p := range []string{"ssl://", "tls://", "mqtts://", "wss://"} {
			if strings.HasPrefix(u, p) {
				return true
			}
		}
	}
	return false
}

func serverTLS(c ServerTLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: load certificate: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if c.ClientCAFile != "" {
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: client_ca_file %s: no certificate", c.ClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		if c.RequireClientCert {
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return tc, nil
}

// Run starts the parts in order (embedded upstream, bridge, listeners,
// HTTP) and serves until ctx is done, then shuts down in reverse: stop the
// listeners (devices whose ack was pending resend), stop the bridge (its in
// flight messages go back to the spool), stop HTTP, close the spool.
// Nothing acknowledged is lost.
func (g *Gateway) Run(ctx context.Context) (err error) {
	defer func() {
		if cerr := g.sp.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	if g.cfg.Bridge.IsEmbedded() {
		if err := g.startEmbedded(); err != nil {
			return err
		}
		defer func() { _ = g.up.Close() }()
	}
	brCtx, stopBridge := context.WithCancel(context.Background())
	brDone := make(chan error, 1)
	go func() { brDone <- g.br.Run(brCtx) }()
	go g.watchLink(brCtx)
	stopBr := func() error {
		stopBridge()
		if err := <-brDone; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
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
		for _, l := range []struct {
			name string
			addr string
			tls  *ServerTLS
		}{{"stomp", g.cfg.Listeners.STOMP.Address, nil}, {"stomp_tls", g.cfg.Listeners.STOMPTLS.Address, &g.cfg.Listeners.STOMPTLS.TLS}} {
			if l.addr == "" {
				continue
			}
			ln, err := net.Listen("tcp", l.addr)
			if err != nil {
				return fmt.Errorf("listeners.%s: %w", l.name, err)
			}
			if l.tls != nil {
				tc, err := serverTLS(*l.tls)
				if err != nil {
					_ = ln.Close()
					return fmt.Errorf("listeners.%s: %w", l.name, err)
				}
				ln = tls.NewListener(ln, tc)
			}
			g.stLns = append(g.stLns, ln)
			go func() {
				if err := g.st.Serve(ln); err != nil && !errors.Is(err, stomp.ErrServerClosed) {
					g.log.Error("stomp listener stopped", "listener", l.name, "err", err)
				}
			}()
		}
	}
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
	if g.mq != nil {
		if err := g.mq.Close(ctx); err != nil {
			g.log.Warn("mqtt close", "err", err)
		}
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
	g.httpLn = ln
	mux := http.NewServeMux()
	mux.Handle("/api/spool/", spoolAPI(g.sp))
	mux.Handle("/", NewHTTPHandler(HTTPOptions{Metrics: g.metrics, Ready: g.readyErr, Logger: g.log}))
	g.httpSrv = NewHTTPServer(addr, mux, g.log)
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

// Ready reports whether the gateway is serving.
func (g *Gateway) Ready() bool { return g.ready.Load() }

// Spool exposes the spool (tests, tools).
func (g *Gateway) Spool() *spool.Spool { return g.sp }

// Reload re-reads the configuration file and applies what can change
// without a restart: users, ACLs and routes. It logs the keys that changed
// but need a restart.
func (g *Gateway) Reload(path string) error {
	cfg, err := Load(path)
	if err != nil {
		return err
	}
	// gateway_id needs a restart (client id, downstream filters); until
	// then routes keep resolving {gateway_id} to the running one.
	newID := cfg.GatewayID
	cfg.GatewayID = g.cfg.GatewayID
	if err := g.auth.Reload(cfg); err != nil {
		return err
	}
	if err := g.router.Reload(cfg); err != nil {
		return err
	}
	cfg.GatewayID = newID
	if keys := RestartRequired(g.cfg, cfg); len(keys) > 0 {
		g.log.Warn("configuration reloaded; these keys changed and need a restart", "keys", strings.Join(keys, ","))
	} else {
		g.log.Info("configuration reloaded")
	}
	return nil
}

// watchLink keeps linkUp current for the QoS 0 policy.
func (g *Gateway) watchLink(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		g.linkUp.Store(g.br.State() == bridge.StateUp)
		select {
		case <-ctx.Done():
			g.linkUp.Store(false)
			return
		case <-t.C:
		}
	}
}

// sink turns accepted messages into spool entries and maps the spool's
// errors to the ones ingress answers devices with. It is a
// message.OrderedSink: a pipelining STOMP connection submits its SENDs in
// frame order and the spool stores them in that order.
func (g *Gateway) sink(proto message.Protocol) message.OrderedSink {
	return &spoolSink{g: g, proto: proto.String()}
}

type spoolSink struct {
	g     *Gateway
	proto string
}

func (k *spoolSink) Accept(ctx context.Context, m *message.Message) error {
	return k.Submit(ctx, m)()
}

func (k *spoolSink) Submit(ctx context.Context, m *message.Message) func() error {
	wait := k.g.sp.PutAsync(ctx, spool.Entry{
		Priority:  m.Priority,
		ExpiresAt: m.ExpiresAt,
		DedupeKey: m.DedupeKey,
		Data:      message.Encode(nil, m),
	})
	return func() error {
		_, err := wait()
		switch {
		case err == nil:
			k.g.metrics.ObserveAccepted(k.proto, m.Priority)
			return nil
		case errors.Is(err, spool.ErrFull):
			return fmt.Errorf("%w: %w", message.ErrFull, err)
		case errors.Is(err, spool.ErrTooLarge):
			return fmt.Errorf("%w: %w", message.ErrTooLarge, err)
		case errors.Is(err, spool.ErrExpired):
			return fmt.Errorf("%w: %w", message.ErrExpired, err)
		case errors.Is(err, spool.ErrClosed):
			return fmt.Errorf("%w: %w", message.ErrShuttingDown, err)
		case errors.Is(err, context.DeadlineExceeded) && k.g.sp.Stats().Full:
			// The wait for room (overflow: block) outlasted the ingress
			// accept timeout: the device is told "full", not "timeout".
			return fmt.Errorf("%w: no room within the accept timeout: %w", message.ErrFull, err)
		}
		return err
	}
}

// downstream hands a command from the upstream to local subscribers of
// both protocols. Local delivery has no acknowledgement (mochi's fan-out
// does not report one), so a command is accepted once handed over.
func (g *Gateway) downstream(_ context.Context, m *message.Message) error {
	if g.mq != nil {
		g.mq.PublishLocal(m)
	}
	if g.st != nil {
		g.st.PublishLocal(m)
	}
	return nil
}

// queueWithAge is the bridge's view of the spool; it observes each
// message's accept→upstream-ack latency on Ack.
type queueWithAge struct{ g *Gateway }

func (q queueWithAge) Lease(ctx context.Context, max int) ([]spool.Item, error) {
	items, err := q.g.sp.Lease(ctx, max)
	if len(items) > 0 {
		q.g.leaseMu.Lock()
		for _, it := range items {
			q.g.leased[it.ID] = it.EnqueuedAt
		}
		q.g.leaseMu.Unlock()
	}
	return items, err
}

func (q queueWithAge) Ack(ctx context.Context, ids ...uint64) error {
	now := time.Now()
	q.g.leaseMu.Lock()
	for _, id := range ids {
		if t, ok := q.g.leased[id]; ok {
			q.g.metrics.ObserveMessageAge(now.Sub(t))
			delete(q.g.leased, id)
		}
	}
	q.g.leaseMu.Unlock()
	return q.g.sp.Ack(ctx, ids...)
}

func (q queueWithAge) Nack(ctx context.Context, ids ...uint64) error {
	q.g.forget(ids)
	return q.g.sp.Nack(ctx, ids...)
}

func (q queueWithAge) DeadLetter(ctx context.Context, id uint64, reason string) error {
	q.g.forget([]uint64{id})
	return q.g.sp.DeadLetter(ctx, id, reason)
}

func (g *Gateway) forget(ids []uint64) {
	g.leaseMu.Lock()
	for _, id := range ids {
		delete(g.leased, id)
	}
	g.leaseMu.Unlock()
}

// linkAwareRouter applies qos0_when_offline: "drop" drops QoS 0 messages
// only while the upstream link is not up; while it is up they are spooled
// and forwarded like the others.
type linkAwareRouter struct {
	r  message.Router
	up *atomic.Bool
}

func (l linkAwareRouter) Route(topic string) message.Route {
	r := l.r.Route(topic)
	if r.QoS0 == message.QoS0Drop && l.up.Load() {
		r.QoS0 = message.QoS0Spool
	}
	return r
}

// relay forwards local fan-out to the other protocol, which may be absent.
type relay struct{ to message.LocalPublisher }

func (r *relay) PublishLocal(m *message.Message) {
	if r.to != nil {
		r.to.PublishLocal(m)
	}
}

func (g *Gateway) ingressStats() []IngressStats {
	var out []IngressStats
	if g.mq != nil {
		s := g.mq.Stats()
		rej := map[string]uint64{}
		for r, n := range s.Rejected {
			rej[mqtt.Reason(r).String()] += n
		}
		for r, n := range s.Refused {
			rej[mqtt.Reason(r).String()] += n
		}
		out = append(out, IngressStats{Protocol: "mqtt", Connected: int(s.ClientsConnected), Rejected: rej})
	}
	if g.st != nil {
		s := g.st.Stats()
		rej := map[string]uint64{}
		for r, n := range s.Errors {
			rej[stomp.ReasonNames[r]] += n
		}
		out = append(out, IngressStats{Protocol: "stomp", Connected: int(s.ConnectionsCurrent), Rejected: rej})
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
		out.Links = append(out.Links, LinkStats{Partition: p.Partition, State: p.State.String(), Since: p.Since, InFlight: p.InFlight, Upstream: upstream})
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

// startEmbedded runs the development upstream: a plain MQTT broker on
// loopback that accepts anyone, so `make run` has somewhere to bridge to.
// Config validation refuses it together with non-loopback listeners.
func (g *Gateway) startEmbedded() error {
	up := mochi.New(&mochi.Options{InlineClient: false, Logger: slog.New(slog.DiscardHandler)})
	if err := up.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "embedded-upstream", Address: g.cfg.Bridge.EmbeddedAddress})
	if err := up.AddListener(tcp); err != nil {
		return fmt.Errorf("bridge.embedded_address %s: %w", g.cfg.Bridge.EmbeddedAddress, err)
	}
	go func() {
		if err := up.Serve(); err != nil {
			g.log.Error("embedded upstream stopped", "err", err)
		}
	}()
	g.up = up
	return nil
}

func (g *Gateway) printBanner() {
	if g.banner == nil {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nFerry %s is running (gateway_id %s).\n", Version, g.cfg.GatewayID)
	if a := g.MQTTAddr("mqtt"); a != "" {
		h, p, _ := net.SplitHostPort(a)
		fmt.Fprintf(&b, "  publish over MQTT:   mosquitto_pub -h %s -p %s -q 1 -t sensors/room1/temp -m 21.5\n", h, p)
	}
	if a := g.STOMPAddr(0); a != "" {
		fmt.Fprintf(&b, "  publish over STOMP:  SEND to /topic/sensors.room1.temp on %s\n", a)
	}
	if g.cfg.Bridge.IsEmbedded() {
		h, p, _ := net.SplitHostPort(g.cfg.Bridge.EmbeddedAddress)
		fmt.Fprintf(&b, "  watch upstream:      mosquitto_sub -h %s -p %s -t 'sites/#' -v   (embedded development broker)\n", h, p)
	} else {
		fmt.Fprintf(&b, "  upstream:            %s\n", strings.Join(g.cfg.Bridge.Upstream, ", "))
	}
	if a := g.HTTPAddr(); a != "" {
		fmt.Fprintf(&b, "  status page:         http://%s/   metrics: http://%s/metrics\n", a, a)
	}
	fmt.Fprintf(&b, "  spool:               %s\n", g.cfg.Spool.Path)
	b.WriteString("Stop with Ctrl-C (a second Ctrl-C forces exit).\n\n")
	_, _ = io.WriteString(g.banner, b.String())
}
