package stomp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// ErrServerClosed is returned by Serve and ListenAndServe after Close.
var ErrServerClosed = errors.New("stomp: server closed")

// Options configure a Server. Ingest and Auth are required; every other
// zero field takes the default written next to it.
type Options struct {
	// Ingest is the ingest core (required): routing, the Sink and the
	// fan-out to local subscribers of every protocol (the server adds
	// itself to it with AddLocal).
	Ingest *ingest.Core
	Auth   message.Authorizer // logins and topic ACLs (required)

	AcceptTimeout time.Duration // bound on one SEND's commit; default 5s
	// MaxTopicLength and MaxTopicLevels cap the MQTT topic a destination
	// maps to, as for MQTT (defaults 1024 bytes, 32 levels; <0: MQTT's own
	// 65535 bytes, no level cap).
	MaxTopicLength int
	MaxTopicLevels int

	MaxFrameSize  int // body bytes of one frame; default 1 MiB
	MaxHeaders    int // header lines per frame; default 64
	MaxHeaderLine int // bytes per command or header line; default 8 KiB

	MaxConnections int // logged-in connections; 0: no limit; refused ones get an ERROR
	// MaxPending caps the connections that have not completed CONNECT and
	// its login (default 128; <0: no cap). A new connection beyond it
	// closes the oldest of them (Stats.PendingClosed), so that idle sockets
	// cannot lock logins out.
	MaxPending int
	// ConnectTimeout bounds the time from connecting to a complete CONNECT
	// frame and its login. Default 5s.
	ConnectTimeout time.Duration
	// MaxConnectSize bounds the CONNECT frame, command, headers and body
	// together (default 16 KiB): it is read before the login, so a
	// content-length cannot make the server allocate MaxFrameSize.
	MaxConnectSize int
	// ReadTimeout bounds the time from the first byte of a frame to its
	// NUL (slowloris). Default 30s.
	ReadTimeout time.Duration
	// PublishRate is the per-connection token bucket rate in SENDs per
	// second (0: unlimited); PublishBurst its size (default: the rate,
	// rounded up, at least 1). A SEND over it gets an ERROR (quota) and the
	// connection is closed, like any refused SEND.
	PublishRate  float64
	PublishBurst int
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
	// SubscriptionQueueBytes bounds, per subscription, the bytes (topic and
	// body) of the messages it holds, waiting or unacked, so that a slow
	// subscriber of large messages cannot fill memory within the count.
	// A message that would pass it is treated as a full queue (dropped for
	// QoS 0, a QoS 1/2 one disconnects the subscriber); one message is
	// always let in. Default 8 MiB.
	SubscriptionQueueBytes int64
	// MaxRedeliveries bounds how often a NACKed message is delivered again;
	// after that it is dropped and counted in Stats.LocalDrops. Default 5.
	MaxRedeliveries int

	// Transactions. A connection has at most MaxTransactions open (default
	// 16); one transaction buffers at most MaxTransactionMessages SENDs
	// (default 1000; the spool stores at most 4096 in one batch) and
	// MaxTransactionBytes body bytes (default 4 MiB); all the open
	// transactions of one connection together at most
	// MaxConnectionTransactionMessages (default 4000) and
	// MaxConnectionTransactionBytes (default 16 MiB). A frame over one of
	// them gets an ERROR naming the limit (as limits.stomp.* spells it).
	MaxTransactions                  int
	MaxTransactionMessages           int
	MaxTransactionBytes              int
	MaxConnectionTransactionMessages int
	MaxConnectionTransactionBytes    int

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
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	o.MaxPending = limitOr(o.MaxPending, 128, 0)
	if o.MaxConnectSize <= 0 {
		o.MaxConnectSize = 16 << 10
	}
	if o.PublishRate > 0 && o.PublishBurst <= 0 {
		o.PublishBurst = max(1, int(math.Ceil(o.PublishRate)))
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
	o.MaxTopicLength = limitOr(o.MaxTopicLength, 1024, message.MaxTopicLen)
	o.MaxTopicLevels = limitOr(o.MaxTopicLevels, 32, 0)
	if o.MaxPipelined <= 0 {
		o.MaxPipelined = 256
	}
	if o.MaxSubscriptions <= 0 {
		o.MaxSubscriptions = 128
	}
	if o.SubscriptionQueueBytes <= 0 {
		o.SubscriptionQueueBytes = 8 << 20
	}
	if o.SubscriptionQueue <= 0 {
		o.SubscriptionQueue = 1000
	}
	if o.MaxRedeliveries <= 0 {
		o.MaxRedeliveries = 5
	}
	for _, l := range []struct {
		v   *int
		def int
	}{
		{&o.MaxTransactions, 16}, {&o.MaxTransactionMessages, 1000}, {&o.MaxTransactionBytes, 4 << 20},
		{&o.MaxConnectionTransactionMessages, 4000}, {&o.MaxConnectionTransactionBytes, 16 << 20},
	} {
		if *l.v <= 0 {
			*l.v = l.def
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	ConnectionsCurrent int64
	ConnectionsTotal   uint64 // connections that completed CONNECT
	ConnectionsRefused uint64 // over MaxConnections
	PendingClosed      uint64 // closed before their login because MaxPending newer ones were waiting
	FramesAccepted     uint64 // SENDs the Sink stored (or LocalOnly)
	ReceiptsSent       uint64
	Errors             [ingest.NumReasons]uint64 // by ingest.Reason: why a connection got an ERROR frame
	SlowConsumers      uint64                    // subscribers disconnected for not keeping up with QoS 1/2 messages
	HeartBeatTimeouts  uint64                    // peers closed for silence
	LocalDeliveries    uint64                    // MESSAGE frames written
	LocalDrops         uint64                    // messages for a local subscriber dropped: queue full, redeliveries exhausted, subscriber gone
	Redeliveries       uint64                    // NACKed messages queued again
}

type counters struct {
	connCur                                     atomic.Int64
	connTotal, connRefused, accepted, receipts  atomic.Uint64
	errors                                      [ingest.NumReasons]atomic.Uint64
	hbTimeouts, deliveries, drops, redeliveries atomic.Uint64
	slowConsumers                               atomic.Uint64
	sessions                                    atomic.Int64 // logged in now, and logins past the MaxConnections check
	pendingClosed                               atomic.Uint64
}

// Server is a STOMP 1.0/1.1/1.2 server that hands SENDs to a message.Sink
// and delivers local messages to subscribers. Create it with NewServer.
type Server struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context // canceled by Close (cause message.ErrShuttingDown): fails pending SENDs
	cancel context.CancelCauseFunc
	reg    registry
	c      counters
	pre    *preAuth

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup
	sessionID atomic.Uint64

	lastDropLog atomic.Int64 // unix nanoseconds of the last drop warning
	// refusals rate-limits the Info lines about refused frames and
	// messages; the counters count every one.
	refusals ingest.RefusalLimiter
}

// NewServer checks opts and returns a server that is not yet listening.
func NewServer(opts Options) (*Server, error) {
	if opts.Ingest == nil {
		return nil, errors.New("stomp: Options.Ingest is required")
	}
	if opts.Auth == nil {
		return nil, errors.New("stomp: Options.Auth is required (message.AllowAll for none)")
	}
	if opts.PublishRate < 0 || math.IsNaN(opts.PublishRate) {
		return nil, fmt.Errorf("stomp: Options.PublishRate must be >= 0 (got %v)", opts.PublishRate)
	}
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
	s.reg.groups = map[string]*group{}
	s.pre = newPreAuth(opts.MaxPending, func() { s.c.pendingClosed.Add(1) })
	opts.Ingest.AddLocal(s)
	return s, nil
}

// limitOr maps 0 to def and a negative v to none (0 for "no cap").
func limitOr(v, def, none int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return none
	}
	return v
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

// ListenerOptions are the options of one listener (ServeWith).
type ListenerOptions struct {
	// CertUsername, when set, names the user of a client that presented a
	// verified TLS certificate (the tls.Listener must verify client
	// certificates): the client logs in as that user without a passcode,
	// and a login header must be absent or the same. An error refuses the
	// client. Clients without a certificate log in with login/passcode.
	CertUsername func(*x509.Certificate) (string, error)
}

// Serve accepts connections on ln until Close; it closes ln on return and
// returns ErrServerClosed after Close. TLS is the listener's business: pass
// a tls.Listener.
func (s *Server) Serve(ln net.Listener) error { return s.ServeWith(ln, ListenerOptions{}) }

// ServeWith is Serve with options for this listener.
func (s *Server) ServeWith(ln net.Listener, lo ListenerOptions) error {
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
		s.startConn(nc, lo)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) startConn(nc net.Conn, lo ListenerOptions) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	// wg.Add happens under mu, so that Close (which sets closed under mu
	// and then waits) never misses a connection.
	s.wg.Add(1)
	c := newConn(s, nc)
	c.certUsername = lo.CertUsername
	// Counted before login from here, in accept order, so that the oldest
	// is the one closed when the set is full.
	c.pending = s.pre.Add(func() { _ = nc.Close() })
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
	s.cancel(message.ErrShuttingDown)
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
		SlowConsumers:      s.c.slowConsumers.Load(),
		PendingClosed:      s.c.pendingClosed.Load(),
	}
	for i := range st.Errors {
		st.Errors[i] = s.c.errors[i].Load()
	}
	return st
}

func (s *Server) newSessionID() string {
	return "ferry-" + strconv.FormatUint(s.sessionID.Add(1), 10)
}
