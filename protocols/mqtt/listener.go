package mqtt

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener implements mochi's listeners.Listener for TCP, TLS and WebSocket.
// Unlike mochi's own listeners it binds in Init (so Start reports a busy port
// and Addr knows the port picked for ":0"), sets a deadline for the CONNECT
// packet (mochi reads it without one), and on Close also closes connections
// that never completed CONNECT and waits for their goroutines.
type listener struct {
	id, kind, address string
	tls               *tls.Config
	connectTimeout    time.Duration
	log               *slog.Logger

	mu     sync.Mutex
	ln     net.Listener
	srv    *http.Server // KindWS only
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup

	establish listeners.EstablishFn // KindWS: set by Serve before the server starts
}

var _ listeners.Listener = (*listener)(nil)

func newListener(l Listener, connectTimeout time.Duration) *listener {
	return &listener{id: l.Name, kind: l.Kind, address: l.Address, tls: l.TLS, connectTimeout: connectTimeout,
		conns: map[net.Conn]struct{}{}, log: slog.New(slog.DiscardHandler)}
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

// Init binds the address.
func (l *listener) Init(log *slog.Logger) error {
	l.log = log
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
			ReadHeaderTimeout: l.connectTimeout,
			TLSConfig:         l.tls,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
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
		go func() {
			defer l.untrack(conn)
			l.run(conn, conn, establish)
		}()
	}
}

// run hands one connection to mochi and blocks until it ends.
func (l *listener) run(raw, conn net.Conn, establish listeners.EstablishFn) {
	defer func() { _ = raw.Close() }()
	_ = raw.SetDeadline(time.Now().Add(l.connectTimeout)) // mochi replaces it after CONNECT
	if err := establish(l.id, conn); err != nil {
		l.log.Debug("mqtt connection ended", "listener", l.id, "remote", raw.RemoteAddr().String(), "err", err)
	}
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
	l.run(raw, &wsConn{Conn: raw, c: c}, l.establish)
}

func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
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

// Close stops accepting, lets mochi disconnect its clients on this listener,
// closes whatever is left (connections still before CONNECT) and waits for
// the connection goroutines.
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
	closeClients(l.id)
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
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
