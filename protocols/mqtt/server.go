package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

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
	DefaultConnectTimeout  = 10 * time.Second
	DefaultMaxConnections  = 1000
	DefaultMaxPacketSize   = 256 << 10
	DefaultMaxTopicLength  = 1024
	DefaultMaxTopicLevels  = 32
	DefaultSubscriberQueue = 1024
)

// Listener is one network endpoint.
type Listener struct {
	Name    string      // unique; used in logs and in Addr
	Kind    string      // KindTCP, KindTLS or KindWS
	Address string      // host:port; port 0 picks a free port (see Server.Addr)
	TLS     *tls.Config // required for KindTLS, optional for KindWS, must be nil for KindTCP
}

// Options configure a Server. Zero values take the defaults written next to
// them.
type Options struct {
	Listeners []Listener

	// Sink receives every message to be spooled (required).
	Sink message.Sink
	// Router chooses each message's route; nil routes everything with the
	// zero message.Route (spooled, priority 0, no TTL).
	Router message.Router
	// Auth authenticates and authorises (required; message.AllowAll for an
	// open development broker).
	Auth message.Authorizer
	// Local receives every message accepted from MQTT for cross-protocol
	// fan-out (STOMP subscribers). It must not block. May be nil.
	Local message.LocalPublisher

	// AcceptTimeout bounds the wait for Sink.Accept (default 5s). It must
	// stay well below 1.5 × the clients' keepalive; the wait is further
	// capped per client at 3/4 of its keepalive.
	AcceptTimeout time.Duration
	// ConnectTimeout bounds the time from TCP accept to a complete CONNECT
	// (default 10s), so that idle sockets cannot pile up.
	ConnectTimeout time.Duration
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
	// subscriber before mochi drops (counted in Stats.SubscriberDrops);
	// default 1024.
	SubscriberQueue int

	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now
}

// Server is the MQTT ingress. Create it with New, then Start, then Close.
type Server struct {
	opts   Options
	log    *slog.Logger
	ms     *mochi.Server
	hook   *hook
	inline *mochi.Client // source of PublishLocal messages

	lns []*listener

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
		Logger:       slog.New(mochiLogHandler{opts.Logger.Handler()}).With("component", "mochi"),
		// $SYS updates call runtime.ReadMemStats (a stop-the-world pause);
		// once a second is wasteful on a gateway.
		SysTopicResendInterval: 10,
	})
	s := &Server{opts: opts, log: log, ms: ms, closed: make(chan struct{})}
	s.hook = newHook(s)
	if err := ms.AddHook(s.hook, nil); err != nil {
		return nil, fmt.Errorf("mqtt: add hook: %w", err)
	}
	// Our own inline client rather than mochi's: its publishes carry user
	// properties (mochi's Server.Publish cannot), and the hook recognises
	// them by Net.Inline and never sends them to the Sink.
	s.inline = ms.NewClient(nil, mochi.LocalListener, "ferry-local", true)
	s.inline.Properties.ProtocolVersion = 5
	for _, l := range opts.Listeners {
		s.lns = append(s.lns, newListener(l, opts.ConnectTimeout))
	}
	return s, nil
}

func (o *Options) setDefaults() error {
	var errs []error
	if o.Sink == nil {
		errs = append(errs, errors.New("sink is required"))
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
	if o.Router == nil {
		o.Router = defaultRouter{}
	}
	if o.AcceptTimeout <= 0 {
		o.AcceptTimeout = DefaultAcceptTimeout
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	o.MaxConnections = orDefault(o.MaxConnections, DefaultMaxConnections)
	o.MaxPacketSize = orDefault(o.MaxPacketSize, DefaultMaxPacketSize)
	o.MaxTopicLength = orDefault(o.MaxTopicLength, DefaultMaxTopicLength)
	if o.MaxTopicLength < 0 || o.MaxTopicLength > message.MaxTopicLen {
		o.MaxTopicLength = message.MaxTopicLen
	}
	o.MaxTopicLevels = orDefault(o.MaxTopicLevels, DefaultMaxTopicLevels)
	if o.SubscriberQueue <= 0 {
		o.SubscriberQueue = DefaultSubscriberQueue
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
	// Sessions of clean=false clients live in memory only; forget them after
	// a day rather than never.
	c.MaximumSessionExpiryInterval = 24 * 60 * 60
	// A reason code on a PUBACK must not echo the publisher's properties.
	c.Compatibilities.NoInheritedPropertiesOnAck = true
	return c
}

type defaultRouter struct{}

func (defaultRouter) Route(string) message.Route { return message.Route{} }

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
	if err := s.ms.Serve(); err != nil {
		s.closeMochi()
		return fmt.Errorf("mqtt: serve: %w", err)
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
		close(s.closed)
	})
	<-s.closed
}

// PublishLocal delivers m to the local MQTT subscribers of m.Topic (as
// retained when m.Retain), with m.Headers as MQTT 5 user properties. It is
// how STOMP messages and upstream commands reach MQTT devices. The message
// never goes to the Sink or to Options.Local. Invalid topics and expired
// messages are dropped and logged. Safe for concurrent use; it does not
// block on slow subscribers (mochi drops for a full subscriber queue, counted
// in Stats.SubscriberDrops). The caller must not modify m afterwards: a
// retained message keeps its payload.
func (s *Server) PublishLocal(m *message.Message) {
	if s.hook.closing.Load() {
		return
	}
	if err := message.ValidateTopic(m.Topic); err != nil {
		s.log.Warn("mqtt publish local: invalid topic", "topic", m.Topic, "msg_id", m.ID, "err", err)
		return
	}
	qos := min(m.QoS, 2)
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: m.Retain},
		TopicName:   m.Topic,
		Payload:     m.Payload,
		PacketID:    uint16(qos), // any non-zero id for QoS > 0; inline publishes are not acknowledged
		Properties:  packets.Properties{ContentType: m.ContentType},
	}
	for _, h := range m.Headers {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: h.Key, Val: h.Value})
	}
	if !m.ExpiresAt.IsZero() {
		left := m.ExpiresAt.Sub(s.opts.Now())
		if left <= 0 {
			s.log.Debug("mqtt publish local: expired", "topic", m.Topic, "msg_id", m.ID)
			return
		}
		pk.Properties.MessageExpiryInterval = uint32(min(math.MaxUint32, max(1, math.Ceil(left.Seconds()))))
	}
	if err := s.ms.InjectPacket(s.inline, pk); err != nil {
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
