package stomp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/message"
)

// ErrServerClosed is returned by Serve and ListenAndServe after Close.
var ErrServerClosed = errors.New("stomp: server closed")

// Options configure a Server. Sink and Auth are required; every other zero
// field takes the default written next to it.
type Options struct {
	Sink   message.Sink       // where accepted SENDs go (required)
	Auth   message.Authorizer // logins and topic ACLs (required)
	Router message.Router     // nil: the zero Route for every topic
	// Local receives every message accepted over STOMP, after its RECEIPT
	// was sent, for fan-out to other protocols' subscribers. May be nil.
	Local message.LocalPublisher

	AcceptTimeout time.Duration // bound on one Sink.Accept; default 5s

	MaxFrameSize  int // body bytes of one frame; default 1 MiB
	MaxHeaders    int // header lines per frame; default 64
	MaxHeaderLine int // bytes per command or header line; default 8 KiB

	MaxConnections int // concurrent connections; 0: no limit; refused ones get an ERROR
	// ReadTimeout bounds the time from the first byte of a frame to its
	// NUL (slowloris) and the time from connecting to a complete CONNECT
	// frame. Default 30s.
	ReadTimeout time.Duration
	// WriteTimeout bounds one write to a client; a client that does not
	// read for this long is disconnected. Default 10s.
	WriteTimeout time.Duration
	// HeartBeat is the server's heart-beat offer (cx: how often the server
	// can send, cy: how often it wants to hear from the client). Default
	// 10s,10s; negative: 0 (none). A peer silent for twice the negotiated
	// interval is disconnected.
	HeartBeat [2]time.Duration

	// MaxPipelined bounds the frames of one connection waiting for their
	// turn to be answered (SENDs being accepted, receipts); when reached,
	// the connection is not read until the oldest is answered. Default 256.
	MaxPipelined     int
	MaxSubscriptions int // per connection; default 128
	// SubscriptionQueue bounds, per subscription, the messages waiting to
	// be written and (separately) those written but not yet acked. When a
	// subscription's queue is full, a new message for it is dropped and
	// counted in Stats.LocalDrops (for /queue groups another member is
	// tried first). Default 1000.
	SubscriptionQueue int
	// MaxRedeliveries bounds how often a NACKed message is delivered again;
	// after that it is dropped and counted in Stats.LocalDrops. Default 5.
	MaxRedeliveries int

	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now; used for AcceptedAt and message ids
}

func (o Options) withDefaults() Options {
	if o.AcceptTimeout <= 0 {
		o.AcceptTimeout = 5 * time.Second
	}
	lim := Limits{MaxBody: o.MaxFrameSize, MaxHeaders: o.MaxHeaders, MaxLine: o.MaxHeaderLine}.withDefaults()
	o.MaxFrameSize, o.MaxHeaders, o.MaxHeaderLine = lim.MaxBody, lim.MaxHeaders, lim.MaxLine
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	for i, d := range o.HeartBeat {
		switch {
		case d == 0:
			o.HeartBeat[i] = 10 * time.Second
		case d < 0:
			o.HeartBeat[i] = 0
		}
	}
	if o.MaxPipelined <= 0 {
		o.MaxPipelined = 256
	}
	if o.MaxSubscriptions <= 0 {
		o.MaxSubscriptions = 128
	}
	if o.SubscriptionQueue <= 0 {
		o.SubscriptionQueue = 1000
	}
	if o.MaxRedeliveries <= 0 {
		o.MaxRedeliveries = 5
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Error reasons, indexes into Stats.Errors: why a connection got an ERROR
// frame (or, for heart-beat and I/O failures, was closed).
const (
	ReasonMalformed          = iota // unparsable frame
	ReasonTooLarge                  // frame, line or header count over a limit
	ReasonReadTimeout               // half-sent frame or missing CONNECT (slowloris)
	ReasonProtocol                  // valid frame in the wrong place, missing header, unsupported feature
	ReasonVersion                   // no common protocol version
	ReasonAuth                      // login refused
	ReasonNotAuthorized             // publish or subscribe refused by the ACL
	ReasonInvalidDestination        // not /topic/… or /queue/…, or an invalid topic
	ReasonSinkFull                  // message.ErrFull
	ReasonSinkQuota                 // message.ErrQuotaExceeded
	ReasonSinkTooLarge              // message.ErrTooLarge
	ReasonSinkExpired               // message.ErrExpired
	ReasonSinkTimeout               // Accept exceeded AcceptTimeout
	ReasonSinkError                 // any other Sink error
	ReasonShuttingDown              // server closing, or message.ErrShuttingDown
	reasons
)

// ReasonNames are the metric label values of the error reasons.
var ReasonNames = [reasons]string{
	"malformed", "too_large", "read_timeout", "protocol", "version", "auth", "not_authorized",
	"invalid_destination", "sink_full", "sink_quota", "sink_too_large", "sink_expired", "sink_timeout",
	"sink_error", "shutting_down",
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	ConnectionsCurrent int64
	ConnectionsTotal   uint64 // connections that completed CONNECT
	ConnectionsRefused uint64 // over MaxConnections
	FramesAccepted     uint64 // SENDs whose Accept returned nil (or LocalOnly)
	ReceiptsSent       uint64
	Errors             [reasons]uint64 // by Reason*
	HeartBeatTimeouts  uint64          // peers closed for silence
	LocalDeliveries    uint64          // MESSAGE frames written
	LocalDrops         uint64          // messages for a local subscriber dropped: queue full, redeliveries exhausted, subscriber gone
	Redeliveries       uint64          // NACKed messages queued again
}

type counters struct {
	connCur                                     atomic.Int64
	connTotal, connRefused, accepted, receipts  atomic.Uint64
	errors                                      [reasons]atomic.Uint64
	hbTimeouts, deliveries, drops, redeliveries atomic.Uint64
}

// Server is a STOMP 1.0/1.1/1.2 server that hands SENDs to a message.Sink
// and delivers local messages to subscribers. Create it with NewServer.
type Server struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context // canceled by Close: fails pending Accepts
	cancel context.CancelFunc
	reg    registry
	c      counters

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup
	sessionID atomic.Uint64

	lastDropLog atomic.Int64 // unix nanoseconds of the last drop warning
}

// NewServer checks opts and returns a server that is not yet listening.
func NewServer(opts Options) (*Server, error) {
	if opts.Sink == nil {
		return nil, errors.New("stomp: Options.Sink is required")
	}
	if opts.Auth == nil {
		return nil, errors.New("stomp: Options.Auth is required (message.AllowAll for none)")
	}
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
	s.reg.groups = map[string]*group{}
	return s, nil
}

// ListenAndServe listens on the TCP address addr (with TLS when tlsConf is
// not nil) and calls Serve.
func (s *Server) ListenAndServe(addr string, tlsConf *tls.Config) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("stomp: listen %s: %w", addr, err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	return s.Serve(ln)
}

// Serve accepts connections on ln until Close; it closes ln on return and
// returns ErrServerClosed after Close. TLS is the listener's business: pass
// a tls.Listener.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		_ = ln.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("stomp: accept on %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors and the like: back off and retry,
			// as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed, retrying", "listener", ln.Addr().String(), "err", err, "backoff", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.startConn(nc)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) startConn(nc net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	// wg.Add happens under mu, so that Close (which sets closed under mu
	// and then waits) never misses a connection.
	s.wg.Add(1)
	if s.opts.MaxConnections > 0 && len(s.conns) >= s.opts.MaxConnections {
		s.mu.Unlock()
		s.c.connRefused.Add(1)
		s.log.Warn("connection refused: too many connections", "remote", nc.RemoteAddr().String(), "max", s.opts.MaxConnections)
		go func() {
			defer s.wg.Done()
			_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
			f := frame.New(frame.ERROR, frame.Message, "too many connections")
			_, _ = nc.Write(AppendFrame(nil, f, V10))
			_ = nc.Close()
		}()
		return
	}
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	s.c.connCur.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			s.c.connCur.Add(-1)
		}()
		c.serve()
	}()
}

// Close stops accepting, fails pending Accepts (their clients get an ERROR
// "server shutting down" and no RECEIPT), sends receipts already earned,
// closes every connection and waits for their goroutines. When ctx ends
// first, connections are closed hard and Close returns ctx.Err().
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	lns := make([]net.Listener, 0, len(s.listeners))
	for ln := range s.listeners {
		lns = append(lns, ln)
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()
	for _, ln := range lns {
		_ = ln.Close()
	}
	if !already {
		for _, c := range conns {
			c.stop()
		}
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			_ = c.nc.Close()
		}
		return fmt.Errorf("stomp: close: %w", ctx.Err())
	}
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		ConnectionsCurrent: s.c.connCur.Load(),
		ConnectionsTotal:   s.c.connTotal.Load(),
		ConnectionsRefused: s.c.connRefused.Load(),
		FramesAccepted:     s.c.accepted.Load(),
		ReceiptsSent:       s.c.receipts.Load(),
		HeartBeatTimeouts:  s.c.hbTimeouts.Load(),
		LocalDeliveries:    s.c.deliveries.Load(),
		LocalDrops:         s.c.drops.Load(),
		Redeliveries:       s.c.redeliveries.Load(),
	}
	for i := range st.Errors {
		st.Errors[i] = s.c.errors[i].Load()
	}
	return st
}

func (s *Server) newSessionID() string {
	return "ferry-" + strconv.FormatUint(s.sessionID.Add(1), 10)
}
