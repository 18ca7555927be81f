package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// Listener kinds.
const (
	KindTCP = "tcp" // plain MQTT over TCP
	KindTLS = "tls" // MQTT over TLS; Listener.TLS is required
	KindWS  = "ws"  // MQTT over WebSocket; over TLS (wss) when Listener.TLS is set
)

// Defaults of Options.
const (
	DefaultAcceptTimeout   = 5 * time.Second
	DefaultConnectTimeout  = 5 * time.Second
	DefaultMaxPending      = 128
	DefaultMaxConnectSize  = 16 << 10
	DefaultReadTimeout     = 30 * time.Second
	DefaultMaxConnections  = 1000
	DefaultMaxPacketSize   = 256 << 10
	DefaultMaxTopicLength  = 1024
	DefaultMaxTopicLevels  = 32
	DefaultSubscriberQueue = 1024
	DefaultMaxInflight     = 128
	DefaultWriteTimeout    = 10 * time.Second
	DefaultWriteBuffer     = 1 << 20
)

// Listener is one network endpoint.
type Listener struct {
	Name    string      // unique; used in logs and in Addr
	Kind    string      // KindTCP, KindTLS or KindWS
	Address string      // host:port; port 0 picks a free port (see Server.Addr)
	TLS     *tls.Config // required for KindTLS, optional for KindWS, must be nil for KindTCP
	// CertUsername, when set, names the user of a client that presented a
	// verified certificate (TLS must verify client certificates): the
	// client logs in as that user without a password, and a username in
	// its CONNECT must be empty or the same. An error refuses the client.
	// Clients without a certificate log in with username and password.
	CertUsername func(*x509.Certificate) (string, error)
}

// Options configure a Server. Zero values take the defaults written next to
// them.
type Options struct {
	Listeners []Listener

	// Ingest is the ingest core (required): routing, the Sink, the QoS 0
	// link rule and the fan-out to local subscribers of every protocol
	// (the server adds itself to it with AddLocal).
	Ingest *ingest.Core
	// Auth authenticates and authorises (required; message.AllowAll for an
	// open development broker).
	Auth message.Authorizer

	// AcceptTimeout bounds the wait for Sink.Accept (default 5s). It must
	// stay well below 1.5 × the clients' keepalive; the wait is further
	// capped per client at 3/4 of its keepalive.
	AcceptTimeout time.Duration
	// ConnectTimeout bounds the time from TCP accept to a complete CONNECT
	// and its login (default 5s), so that idle sockets cannot pile up.
	ConnectTimeout time.Duration
	// MaxPending caps the connections of all listeners that have not
	// completed CONNECT and its login (default 128; <0: no cap). A new
	// connection beyond it closes the oldest of them
	// (Stats.PendingClosed), so that idle sockets cannot lock logins out.
	MaxPending int
	// MaxConnectSize caps the CONNECT packet (default 16 KiB): it is read
	// before the client has logged in, so it is refused from its fixed
	// header, before its body is allocated.
	MaxConnectSize int
	// ReadTimeout bounds the time from the first byte of a packet to its
	// last (default 30s), whatever the client's keepalive (0: none).
	ReadTimeout time.Duration
	// MaxConnections caps connected clients (default 1000; <0: no cap).
	MaxConnections int
	// MaxPacketSize caps an MQTT packet in bytes (default 256 KiB; <0: no
	// cap, which lets a client make the broker allocate up to 256 MiB). Keep
	// it below the spool's MaxMessageBytes.
	MaxPacketSize int
	// MaxTopicLength caps a topic name in bytes (default 1024; <0: MQTT's
	// own 65535).
	MaxTopicLength int
	// MaxTopicLevels caps the number of levels of a topic name (default 32;
	// <0: no cap).
	MaxTopicLevels int
	// PublishRate is the per-client token bucket rate in messages per
	// second (0: unlimited); PublishBurst its size (default: the rate,
	// rounded up, at least 1).
	PublishRate  float64
	PublishBurst int
	// SubscriberQueue is the number of messages queued for one local
	// subscriber before mochi drops (counted in Stats.SubscriberDrops; a
	// subscriber that cannot take its QoS 1/2 messages is disconnected,
	// Stats.SlowConsumers); default 1024.
	SubscriberQueue int
	// MaxInflight bounds a client's messages waiting for their commit
	// (default 128). MQTT 5 clients are told it as Receive Maximum and are
	// disconnected with 0x93 when they exceed it; an MQTT 3.1.1 client is
	// not read while it has that many pending.
	MaxInflight int
	// MaxKeepalive caps the keepalive (seconds) a client may ask for, as
	// Mosquitto's max_keepalive (0: no cap). An MQTT 5 client asking for
	// more, or for 0, is told the cap as Server Keep Alive in CONNACK; an
	// MQTT 3.1.1 client is refused with return code 0x02.
	MaxKeepalive uint16
	// WriteTimeout bounds one socket write to a client (default 10s);
	// WriteBuffer the bytes waiting to be written to it (default 1 MiB plus
	// MaxPacketSize). Writes never block the writer (a publisher's
	// acknowledgement, a fan-out): a client that does not read for
	// WriteTimeout, or lets WriteBuffer fill, is disconnected
	// (Stats.SlowConsumers).
	WriteTimeout time.Duration
	WriteBuffer  int

	// Store keeps retained messages and persistent sessions across
	// restarts, within its bounds (store.go); no State: memory only.
	Store StoreOptions

	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now
}

// Server is the MQTT ingress. Create it with New, then Start, then Close.
type Server struct {
	opts    Options
	log     *slog.Logger
	ms      *mochi.Server
	hook    *hook
	store   *store        // nil without Options.Store.State
	inline  *mochi.Client // source of PublishLocal messages from other protocols
	origins sync.Pool     // *mochi.Client: inline clients that stand in for an MQTT publisher (see PublishLocal)

	lns []*listener
	pre *preAuth

	startOnce sync.Once
	closeOnce sync.Once
	closed    chan struct{} // closed when mochi's Close returned
	started   atomic.Bool
}

// New checks opts and builds a Server. Nothing listens until Start.
func New(opts Options) (*Server, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	log := opts.Logger
	ms := mochi.New(&mochi.Options{
		Capabilities: capabilities(&opts),
		// The Server's logger carries the caller's component (the gateway:
		// component=mqtt); a second component key would repeat it.
		Logger: slog.New(mochiLogHandler{opts.Logger.Handler()}).With("lib", "mochi"),
		// $SYS updates call runtime.ReadMemStats (a stop-the-world pause);
		// once a second is wasteful on a gateway.
		SysTopicResendInterval: 10,
	})
	s := &Server{opts: opts, log: log, ms: ms, closed: make(chan struct{})}
	s.hook = newHook(s)
	if err := ms.AddHook(s.hook, nil); err != nil {
		return nil, fmt.Errorf("mqtt: add hook: %w", err)
	}
	if opts.Store.State != nil {
		s.store = newStore(s, opts.Store)
		if err := ms.AddHook(s.store, nil); err != nil {
			return nil, fmt.Errorf("mqtt: add store hook: %w", err)
		}
	}
	// Our own inline clients rather than mochi's: their publishes carry
	// user properties (mochi's Server.Publish cannot), and the hook
	// recognises them by Net.Inline and never sends them to the Sink.
	s.inline = ms.NewClient(nil, mochi.LocalListener, "ferry-local", true)
	s.inline.Properties.ProtocolVersion = 5
	s.origins.New = func() any {
		cl := ms.NewClient(nil, mochi.LocalListener, "", true)
		cl.Properties.ProtocolVersion = 5
		return cl
	}
	s.pre = newPreAuth(s.opts.MaxPending, func() { s.hook.stats.pendingClosed.Add(1) })
	for _, l := range s.opts.Listeners {
		ln := newListener(l, &s.opts, s.pre, &s.hook.stats)
		ln.log = log
		ln.disconnect = s.disconnectListener
		s.lns = append(s.lns, ln)
	}
	opts.Ingest.AddLocal(s)
	return s, nil
}

func (o *Options) setDefaults() error {
	var errs []error
	if o.Ingest == nil {
		errs = append(errs, errors.New("ingest core is required"))
	}
	if o.Auth == nil {
		errs = append(errs, errors.New("auth is required (use message.AllowAll for an open broker)"))
	}
	names := map[string]bool{}
	for i, l := range o.Listeners {
		switch {
		case l.Name == "":
			errs = append(errs, fmt.Errorf("listeners[%d]: name is required", i))
		case names[l.Name]:
			errs = append(errs, fmt.Errorf("listeners[%d]: duplicate name %q", i, l.Name))
		}
		names[l.Name] = true
		if l.Address == "" {
			errs = append(errs, fmt.Errorf("listeners[%d] %q: address is required", i, l.Name))
		}
		switch l.Kind {
		case KindTCP:
			if l.TLS != nil {
				errs = append(errs, fmt.Errorf("listeners[%d] %q: kind tcp with a TLS config (use kind tls)", i, l.Name))
			}
		case KindTLS:
			if l.TLS == nil {
				errs = append(errs, fmt.Errorf("listeners[%d] %q: kind tls needs a TLS config", i, l.Name))
			}
		case KindWS:
		default:
			errs = append(errs, fmt.Errorf("listeners[%d] %q: kind must be tcp, tls or ws (got %q)", i, l.Name, l.Kind))
		}
		if l.CertUsername != nil && (l.TLS == nil || l.TLS.ClientCAs == nil || l.TLS.ClientAuth < tls.VerifyClientCertIfGiven) {
			errs = append(errs, fmt.Errorf("listeners[%d] %q: usernames from certificates need a TLS config that verifies client certificates", i, l.Name))
		}
	}
	if o.PublishRate < 0 || math.IsNaN(o.PublishRate) {
		errs = append(errs, fmt.Errorf("publish rate must be >= 0 (got %v)", o.PublishRate))
	}
	if o.PublishBurst < 0 {
		errs = append(errs, fmt.Errorf("publish burst must be >= 0 (got %d)", o.PublishBurst))
	}
	if o.MaxPacketSize > message.MaxPayloadSize {
		errs = append(errs, fmt.Errorf("max packet size must be <= %d (got %d)", message.MaxPayloadSize, o.MaxPacketSize))
	}
	if len(errs) > 0 {
		return fmt.Errorf("mqtt: options: %w", errors.Join(errs...))
	}
	if o.AcceptTimeout <= 0 {
		o.AcceptTimeout = DefaultAcceptTimeout
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	o.MaxPending = orDefault(o.MaxPending, DefaultMaxPending)
	if o.MaxConnectSize <= 0 {
		o.MaxConnectSize = DefaultMaxConnectSize
	}
	o.MaxConnections = orDefault(o.MaxConnections, DefaultMaxConnections)
	o.MaxPacketSize = orDefault(o.MaxPacketSize, DefaultMaxPacketSize)
	if o.MaxPacketSize > 0 {
		o.MaxConnectSize = min(o.MaxConnectSize, o.MaxPacketSize)
	}
	o.MaxTopicLength = orDefault(o.MaxTopicLength, DefaultMaxTopicLength)
	if o.MaxTopicLength < 0 || o.MaxTopicLength > message.MaxTopicLen {
		o.MaxTopicLength = message.MaxTopicLen
	}
	o.MaxTopicLevels = orDefault(o.MaxTopicLevels, DefaultMaxTopicLevels)
	if o.SubscriberQueue <= 0 {
		o.SubscriberQueue = DefaultSubscriberQueue
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	o.MaxInflight = min(o.MaxInflight, math.MaxUint16)
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.WriteBuffer <= 0 {
		o.WriteBuffer = DefaultWriteBuffer + max(o.MaxPacketSize, 0)
	}
	if o.PublishRate > 0 && o.PublishBurst == 0 {
		o.PublishBurst = max(1, int(math.Ceil(o.PublishRate)))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// orDefault maps 0 to def and negative values to -1 (no limit).
func orDefault(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return -1
	}
	return v
}

func capabilities(o *Options) *mochi.Capabilities {
	c := mochi.NewDefaultServerCapabilities()
	// Connection limits are enforced by the hook, which answers and counts.
	c.MaximumClients = math.MaxInt64
	if o.MaxPacketSize > 0 {
		c.MaximumPacketSize = uint32(o.MaxPacketSize)
	}
	c.MaximumClientWritesPending = int32(o.SubscriberQueue)
	// The hook disconnects a subscriber at SubscriberQueue unacknowledged
	// deliveries (OnQosPublish); mochi's own bound, past which it drops
	// silently, sits above that and the inbound QoS 2 flows.
	c.MaximumInflight = uint16(min(math.MaxUint16, o.SubscriberQueue+o.MaxInflight+16))
	c.ReceiveMaximum = uint16(o.MaxInflight)
	// Sessions of clean=false clients live in memory only; forget them after
	// a day rather than never.
	c.MaximumSessionExpiryInterval = 24 * 60 * 60
	// A reason code on a PUBACK must not echo the publisher's properties.
	c.Compatibilities.NoInheritedPropertiesOnAck = true
	return c
}

// Start binds every listener and starts serving. It returns once all
// listeners are bound (or the first error, after releasing what was bound).
// Start may be called once.
func (s *Server) Start() error {
	err := errors.New("mqtt: already started")
	s.startOnce.Do(func() {
		err = s.start()
	})
	return err
}

func (s *Server) start() error {
	select {
	case <-s.closed:
		return errors.New("mqtt: start after close")
	default:
	}
	for _, l := range s.lns {
		if err := s.ms.AddListener(l); err != nil {
			s.closeMochi()
			return fmt.Errorf("mqtt: listener %s (%s %s): %w", l.id, l.kind, l.address, err)
		}
	}
	if s.store != nil {
		if err := s.store.restore(); err != nil {
			s.closeMochi()
			return err
		}
	}
	if err := s.ms.Serve(); err != nil {
		s.closeMochi()
		return fmt.Errorf("mqtt: serve: %w", err)
	}
	if s.store != nil {
		go s.store.expireLoop()
	}
	s.started.Store(true)
	for _, l := range s.lns {
		s.log.Info("mqtt listening", "listener", l.id, "kind", l.kind, "addr", l.Address())
	}
	return nil
}

// Addr returns the bound address of the named listener ("" before Start or
// for an unknown name).
func (s *Server) Addr(name string) string {
	for _, l := range s.lns {
		if l.id == name {
			return l.boundAddr()
		}
	}
	return ""
}

// Close stops the server: it refuses new connections and publishes, fails
// every pending Sink.Accept with message.ErrShuttingDown, then closes mochi
// (once), which disconnects the clients and waits for their goroutines. If
// ctx ends first Close returns ctx's error and the shutdown goes on in the
// background. Close may be called more than once.
func (s *Server) Close(ctx context.Context) error {
	s.hook.shutdown()
	go s.closeMochi()
	select {
	case <-s.closed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqtt: close: %w", ctx.Err())
	}
}

// closeMochi calls mochi's Close exactly once: a second call would panic on
// its closed done channel.
func (s *Server) closeMochi() {
	s.closeOnce.Do(func() {
		s.hook.shutdown()
		_ = s.ms.Close() // always nil
		if s.store != nil {
			s.store.shutdown()
			if s.started.Load() {
				<-s.store.done
			}
		}
		close(s.closed)
	})
	<-s.closed
}

// PublishLocal delivers m to the local MQTT subscribers of m.Topic (as
// retained when m.Retain), with m.Headers as MQTT 5 user properties and its
// MQTT 5 response topic, correlation data, payload format and remaining
// expiry. It is the fan-out of every accepted message, MQTT ones included
// (mochi is told not to deliver them itself, so that delivery follows the
// commit), and how STOMP messages and upstream commands reach MQTT devices.
// A message from an MQTT client is published in that client's name, so
// that a subscription with No Local does not get it back. Invalid topics and
// expired messages are dropped and logged. Safe for concurrent use; it never
// blocks on a slow subscriber (mochi queues per subscriber and drops when
// full, counted in Stats.SubscriberDrops; socket writes never block). The
// caller must not modify m afterwards: a retained message keeps its payload.
func (s *Server) PublishLocal(m *message.Message) {
	if s.hook.closing.Load() {
		return
	}
	if !m.Retain && atomic.LoadInt64(&s.ms.Info.Subscriptions) <= 0 {
		// No MQTT client subscribes to anything (mochi counts each client
		// and filter in its index, offline sessions included; the session
		// restore and the subscription pruning here keep the count): a
		// message that is not retained goes nowhere. Most edge devices only
		// publish, and the injection is ≈ 5 % of a message's CPU.
		return
	}
	if err := message.ValidateTopic(m.Topic); err != nil {
		s.log.Warn("mqtt publish local: invalid topic", "topic", m.Topic, "msg_id", m.ID, "err", err)
		return
	}
	pk, ok := localPacket(m, s.opts.Now())
	if !ok {
		s.log.Debug("mqtt publish local: expired", "topic", m.Topic, "msg_id", m.ID)
		return
	}
	if m.Retain && s.store != nil && !s.store.retain(m) {
		pk.FixedHeader.Retain = false // over max_retained_bytes: delivered, not retained
	}
	from := s.inline
	if m.Source.Protocol == message.ProtoMQTT && m.Source.ClientID != "" {
		// mochi stamps the publishing client's id as the packet's origin,
		// which No Local compares with the subscriber's.
		from = s.origins.Get().(*mochi.Client)
		from.ID = m.Source.ClientID
		defer s.origins.Put(from)
	}
	if err := s.ms.InjectPacket(from, pk); err != nil {
		s.log.Warn("mqtt publish local failed", "topic", m.Topic, "msg_id", m.ID, "err", err)
		return
	}
	s.hook.stats.injected.Add(1)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := s.hook.stats.snapshot()
	st.ClientsConnected = atomic.LoadInt64(&s.ms.Info.ClientsConnected)
	return st
}

// localPacket is the PUBLISH that delivers m locally (PublishLocal), and
// false when m has expired at now.
func localPacket(m *message.Message, now time.Time) (packets.Packet, bool) {
	qos := min(m.QoS, 2)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		PacketID:    uint16(qos), // any non-zero id for QoS > 0; inline publishes are not acknowledged
		Properties: packets.Properties{ContentType: m.ContentType, ResponseTopic: m.ResponseTopic,
			CorrelationData: m.CorrelationData},
	}
	if m.PayloadUTF8 {
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = 1, true
	}
	for _, h := range m.Headers {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: h.Key, Val: h.Value})
	}
	if !m.ExpiresAt.IsZero() {
		left := m.ExpiresAt.Sub(now)
		if left <= 0 {
			return pk, false
		}
		pk.Properties.MessageExpiryInterval = uint32(min(math.MaxUint32, max(1, math.Ceil(left.Seconds()))))
	}
	return pk, true
}

// StoreStats returns the vitals of the local state (zero without a Store).
func (s *Server) StoreStats() StoreStats {
	if s.store == nil {
		return StoreStats{}
	}
	return s.store.stats()
}

// disconnectListener is mochi's closeListenerClients (what Server.Close
// hands each listener's Close) without its Clients.GetByListener, which
// takes the clients' read lock twice: a client connecting or leaving
// between the two (its Add or Delete waiting for the write lock) blocks
// the second for good, and with it every later client and Close
// (mochi-mqtt/server#488, seen here as a shutdown that never finished).
// GetAll takes the lock once.
func (s *Server) disconnectListener(id string) { disconnectClients(s.ms, id) }

// disconnectClients disconnects the clients of ms on the listener id
// (DISCONNECT 0x8B to an MQTT 5 client), taking the clients' lock once.
func disconnectClients(ms *mochi.Server, id string) {
	for _, cl := range ms.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			_ = ms.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}
