package stomp

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// WebSocket subprotocols of STOMP over WebSocket (RabbitMQ's Web-STOMP,
// @stomp/stompjs), best first.
var wsSubprotocols = []string{"v12.stomp", "v11.stomp", "v10.stomp"}

// WebSocketHandler returns an http.Handler that serves STOMP over WebSocket
// on every path it is mounted on: it upgrades the request (subprotocols
// v12.stomp, v11.stomp, v10.stomp; a client that offers none is served
// too) and runs the connection exactly as a TCP one — the same CONNECT,
// logins, ACLs, limits, receipts and connection cap. Frames may arrive
// split across WebSocket messages or several in one; every frame the
// server sends is one WebSocket message (text when it is valid UTF-8,
// binary otherwise), heart-beats included.
//
// Browsers send their cookies to any origin, but a STOMP session is
// authenticated by the CONNECT frame's login and passcode, not by cookies,
// so a page from another origin can do nothing over it that it could not
// do directly: every origin is accepted.
func (s *Server) WebSocketHandler() http.Handler { return s.WebSocketHandlerWith(ListenerOptions{}) }

// WebSocketHandlerWith is WebSocketHandler with options for this listener
// (certificate usernames over wss).
func (s *Server) WebSocketHandlerWith(lo ListenerOptions) http.Handler {
	// A frame may be split across messages but a message never holds more
	// than a frame can: a client cannot make us buffer more than that.
	limit := int64(s.opts.MaxFrameSize) + int64(s.opts.MaxHeaders+2)*int64(s.opts.MaxHeaderLine) + 1024
	up := websocket.Upgrader{
		Subprotocols:     wsSubprotocols,
		HandshakeTimeout: s.opts.ReadTimeout,
		CheckOrigin:      func(*http.Request) bool { return true },
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.isClosed() {
			http.Error(w, "stomp: server closed", http.StatusServiceUnavailable)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered with an HTTP error
		}
		ws.SetReadLimit(limit)
		s.startConn(&wsConn{Conn: ws.NetConn(), ws: ws}, lo)
	})
}

// wsConn is a STOMP byte stream over WebSocket messages, for conn: reads
// join the messages, each write is one message.
type wsConn struct {
	net.Conn // the socket below, for addresses and deadlines
	ws       *websocket.Conn
	r        io.Reader // the current message, nil between messages
}

// tlsConnOf returns the TLS connection under nc: nc itself, or the socket
// under a WebSocket served over TLS (wss), whose certificate names users
// just as over TCP.
func tlsConnOf(nc net.Conn) (*tls.Conn, bool) {
	if w, ok := nc.(*wsConn); ok {
		nc = w.Conn
	}
	tc, ok := nc.(*tls.Conn)
	return tc, ok
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.ws.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					return 0, io.EOF
				}
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue // an empty or finished message: the next one
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	typ := websocket.BinaryMessage
	if utf8.Valid(p) {
		typ = websocket.TextMessage
	}
	if err := c.ws.WriteMessage(typ, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.ws.SetReadDeadline(t); err != nil {
		return err
	}
	return c.ws.SetWriteDeadline(t)
}

func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *wsConn) Close() error                       { return c.ws.Close() }
