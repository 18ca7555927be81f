package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/ferrymq/ferry/protocols/ingest"
)

// listener implements mochi's listeners.Listener for TCP, TLS and WebSocket.
// Unlike mochi's own listeners it binds in Init (so Start reports a busy port
// and Addr knows the port picked for ":0"), sets a deadline for the CONNECT
// packet (mochi reads it without one), bounds what a client can make it
// allocate and hold before it has logged in (preAuth, inConn), and on Close
// also closes connections that never completed CONNECT and waits for their
// goroutines.
type listener struct {
	id, kind, address string
	tls               *tls.Config
	certUsername      func(*x509.Certificate) (string, error)
	opts              *Options
	pre               *preAuth
	stats             *counters
	log               *slog.Logger

	mu     sync.Mutex
	ln     net.Listener
	srv    *http.Server          // KindWS only
	conns  map[net.Conn]*outConn // by raw connection; nil until run wraps it
	closed bool
	wg     sync.WaitGroup

	establish listeners.EstablishFn // KindWS: set by Serve before the server starts
	// disconnect sends mochi's clients on this listener a DISCONNECT
	// (server shutting down) at Close, instead of mochi's own CloseFn
	// (see Server.disconnectListener).
	disconnect func(listenerID string)
}

var _ listeners.Listener = (*listener)(nil)

func newListener(l Listener, opts *Options, pre *preAuth, stats *counters) *listener {
	return &listener{id: l.Name, kind: l.Kind, address: l.Address, tls: l.TLS, certUsername: l.CertUsername,
		opts: opts, pre: pre, stats: stats, conns: map[net.Conn]*outConn{}, log: slog.New(slog.DiscardHandler)}
}

func (l *listener) ID() string { return l.id }

func (l *listener) Address() string {
	if a := l.boundAddr(); a != "" {
		return a
	}
	return l.address
}

func (l *listener) Protocol() string {
	if l.kind == KindWS && l.tls != nil {
		return "wss"
	}
	return l.kind
}

func (l *listener) boundAddr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == nil {
		return ""
	}
	return l.ln.Addr().String()
}

// Init binds the address. The logger mochi passes (its own, with the
// listener's id) is not used: the listener logs as the Server does
// (Server sets l.log), with the id under the same key once.
func (l *listener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	if l.kind == KindTLS {
		ln = tls.NewListener(ln, l.tls)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ln = ln
	if l.kind == KindWS {
		l.srv = &http.Server{
			Handler:           http.HandlerFunc(l.serveWS),
			ReadHeaderTimeout: l.opts.ConnectTimeout,
			MaxHeaderBytes:    l.opts.MaxConnectSize + 4096,
			TLSConfig:         l.tls,
			ErrorLog:          slog.NewLogLogger(l.log.With("listener", l.id).Handler(), slog.LevelDebug),
		}
	}
	return nil
}

// Serve accepts connections until Close.
func (l *listener) Serve(establish listeners.EstablishFn) {
	if l.kind == KindWS {
		l.establish = establish
		var err error
		if l.tls != nil {
			err = l.srv.ServeTLS(l.ln, "", "")
		} else {
			err = l.srv.Serve(l.ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			l.log.Error("mqtt listener stopped", "listener", l.id, "err", err)
		}
		return
	}
	var backoff time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.isClosed() {
				return
			}
			// Out of file descriptors and the like: back off, like net/http.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				l.log.Warn("mqtt accept failed", "listener", l.id, "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			l.log.Error("mqtt listener stopped", "listener", l.id, "err", err)
			return
		}
		backoff = 0
		if !l.track(conn) {
			_ = conn.Close()
			return
		}
		// Counted before login from here, in accept order, so that the
		// oldest is the one closed when the set is full.
		pc := l.pre.Add(func() { _ = conn.Close() })
		go func() {
			defer l.untrack(conn)
			l.run(conn, conn, pc, establish)
		}()
	}
}

// run hands one connection to mochi, its reads bounded (inConn) and its
// writes made non-blocking (outConn), and blocks until it ends and what was
// written is flushed.
func (l *listener) run(raw, conn net.Conn, pc *pendingConn, establish listeners.EstablishFn) {
	defer func() { _ = raw.Close() }()
	defer pc.Done()
	deadline := time.Now().Add(l.opts.ConnectTimeout)
	_ = raw.SetDeadline(deadline) // the TLS handshake and CONNECT; mochi replaces the read deadline after CONNECT
	remote := raw.RemoteAddr().String()
	ic := newInConn(conn, l.opts.MaxConnectSize, l.opts.ReadTimeout)
	_ = ic.SetReadDeadline(deadline)
	oc := newOutConn(ic, l.opts.WriteTimeout, l.opts.WriteBuffer, func(why string) {
		l.stats.slowConsumers.Add(1)
		l.log.Info("mqtt client disconnected: not reading what is written to it", "listener", l.id, "remote", remote, "reason", why)
	})
	oc.login = &loginState{pending: pc, deadline: deadline, certUsername: l.certUsername}
	l.mu.Lock()
	closed := l.closed
	if !closed {
		l.conns[raw] = oc
	}
	l.mu.Unlock()
	if closed {
		_ = oc.Close() // Close went past it: ends before CONNECT
	}
	err := establish(l.id, oc)
	if err != nil {
		l.log.Debug("mqtt connection ended", "listener", l.id, "remote", remote, "err", err)
	}
	if !oc.login.established.Load() && err != nil {
		// Refused before a session existed: mochi calls no hook for
		// these.
		var ne net.Error
		switch {
		case errors.Is(err, errConnectTooLarge):
			l.stats.refused[ingest.ReasonTooLarge].Add(1)
			l.log.Info("mqtt connection refused", "listener", l.id, "remote", remote, "reason", ingest.ReasonTooLarge.String(), "err", err)
		case pc.Context().Err() == nil && errors.As(err, &ne) && ne.Timeout():
			l.stats.refused[ingest.ReasonReadTimeout].Add(1)
			l.log.Info("mqtt connection refused", "listener", l.id, "remote", remote, "reason", ingest.ReasonReadTimeout.String(), "err", err)
		}
	}
	_ = oc.Close()
	<-oc.done
}

func (l *listener) serveWS(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{
		Subprotocols: []string{"mqtt"},
		// MQTT over WebSocket carries its own credentials, not the browser's
		// cookies, so a foreign origin gains nothing it could not do directly.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	c, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered with an HTTP error
	}
	raw := c.NetConn()
	if !l.track(raw) {
		_ = c.Close()
		return
	}
	defer l.untrack(raw)
	l.run(raw, &wsConn{Conn: raw, c: c}, l.pre.Add(func() { _ = raw.Close() }), l.establish)
}

func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = nil
	l.wg.Add(1)
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.wg.Done()
}

func (l *listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// shutdownFlush bounds how long Close waits for the last writes (the
// DISCONNECTs) to reach the clients.
const shutdownFlush = time.Second

// Close stops accepting, disconnects the clients on this listener (with
// l.disconnect, else mochi's closeClients), lets their DISCONNECT go out
// (within shutdownFlush), closes whatever is left (connections still before
// CONNECT) and waits for the connection goroutines.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	ln, srv := l.ln, l.srv
	l.mu.Unlock()
	switch {
	case srv != nil:
		_ = srv.Close()
	case ln != nil:
		_ = ln.Close()
	}
	if l.disconnect != nil {
		l.disconnect(l.id)
	} else {
		closeClients(l.id)
	}
	// What is left: connections before CONNECT, and the ones just told
	// DISCONNECT 0x8B. Closing their outConn lets its flusher write what
	// is buffered (that DISCONNECT) and then close the socket; closing the
	// socket at once would lose it. A client that does not take it within
	// shutdownFlush (one that stopped reading) has its socket closed.
	l.mu.Lock()
	left := maps.Clone(l.conns)
	l.mu.Unlock()
	grace := time.NewTimer(shutdownFlush)
	defer grace.Stop()
	expired := false
	for c, oc := range left {
		if oc == nil {
			_ = c.Close()
			continue
		}
		_ = oc.Close()
		if !expired {
			select {
			case <-oc.done:
			case <-grace.C:
				expired = true
			}
		}
		if expired {
			_ = c.Close()
		}
	}
	l.wg.Wait()
}

// wsConn is an MQTT byte stream over binary WebSocket messages.
type wsConn struct {
	net.Conn
	c *websocket.Conn
	r io.Reader // the current message, nil between messages
}

var errTextFrame = errors.New("mqtt over websocket: text message (want binary)")

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n == 0 {
				continue // empty or finished message: read the next one
			}
			err = nil
		}
		return n, err
	}
}

func (ws *wsConn) Write(p []byte) (int, error) {
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (ws *wsConn) Close() error { return ws.c.Close() }
