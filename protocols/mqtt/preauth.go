package mqtt

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ferrymq/ferry/protocols/ingest"
)

// Errors of the read side of a connection (inConn). Both end the
// connection; mochi passes them to OnDisconnect, which counts them.
var (
	// errConnectTooLarge: the first packet claims more than
	// Options.MaxConnectSize bytes. It is refused from its fixed header,
	// before mochi allocates its body: a client that has not logged in
	// must not make the broker allocate MaxPacketSize.
	errConnectTooLarge = errors.New("mqtt: CONNECT packet larger than max_connect_size")
	// errPacketTimeout: a packet was started and not completed within
	// Options.ReadTimeout (with any keepalive, 0 included).
	errPacketTimeout = packetTimeout{}
)

type packetTimeout struct{}

func (packetTimeout) Error() string   { return "mqtt: packet not completed within read_timeout" }
func (packetTimeout) Timeout() bool   { return true }
func (packetTimeout) Temporary() bool { return true }

var _ net.Error = packetTimeout{}

// inConn is the read side of a client connection as mochi sees it. It
// follows the MQTT framing of what it passes on (fixed header, remaining
// length, body) so that it can
//   - refuse a first packet (CONNECT) whose remaining length exceeds the
//     pre-login limit, before the bytes of its length reach mochi, which
//     allocates the whole body as soon as it has decoded the length;
//   - bound the time from a packet's first byte to its last by readTimeout,
//     whatever deadline mochi sets (none with keepalive 0), so that a
//     half-sent packet cannot hold a connection and its buffer forever.
//
// Only mochi's read goroutine calls Read; deadlines are set from it and,
// before CONNECT, by the listener.
type inConn struct {
	net.Conn
	connectLimit int           // max remaining length of the first packet
	readTimeout  time.Duration // first byte to last byte of a packet

	mu      sync.Mutex
	idle    time.Time // the read deadline mochi asked for (zero: none)
	applied time.Time // the deadline last set on Conn
	timer   bool      // applied is the packet deadline, not idle

	first   bool      // the first packet has not been read completely
	state   int       // 0: before a packet; 1: in its remaining length; 2: in its body
	remain  int       // state 1: length so far; state 2: body bytes left
	mul     int       // state 1: weight of the next length byte
	nlen    int       // state 1: length bytes read
	started time.Time // when the current packet's first byte came
}

func newInConn(c net.Conn, connectLimit int, readTimeout time.Duration) *inConn {
	return &inConn{Conn: c, connectLimit: connectLimit, readTimeout: readTimeout, first: true}
}

func (ic *inConn) Read(p []byte) (int, error) {
	ic.apply()
	n, err := ic.Conn.Read(p)
	if n > 0 {
		if terr := ic.track(p[:n], time.Now()); terr != nil {
			return 0, terr // nothing of this read reaches mochi
		}
	}
	if err != nil {
		ic.mu.Lock()
		timer := ic.timer
		ic.mu.Unlock()
		var ne net.Error
		if timer && errors.As(err, &ne) && ne.Timeout() {
			err = errPacketTimeout
		}
	}
	return n, err
}

// track follows the framing through b, read at now.
func (ic *inConn) track(b []byte, now time.Time) error {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	for len(b) > 0 {
		switch ic.state {
		case 0:
			ic.state, ic.remain, ic.mul, ic.nlen, ic.started = 1, 0, 1, 0, now
			b = b[1:]
		case 1:
			c := b[0]
			b = b[1:]
			ic.remain += int(c&0x7f) * ic.mul
			ic.mul *= 128
			ic.nlen++
			switch {
			case c&0x80 != 0 && ic.nlen == 4:
				ic.state = 3 // malformed length: mochi refuses it; stop following
				return nil
			case c&0x80 != 0:
			case ic.first && ic.remain > ic.connectLimit:
				return fmt.Errorf("%w (%d bytes, limit %d)", errConnectTooLarge, ic.remain, ic.connectLimit)
			case ic.remain == 0:
				ic.state, ic.first = 0, false
			default:
				ic.state = 2
			}
		case 2:
			k := min(len(b), ic.remain)
			b = b[k:]
			if ic.remain -= k; ic.remain == 0 {
				ic.state, ic.first = 0, false
			}
		default:
			return nil
		}
	}
	return nil
}

// apply sets the read deadline for the next read: mochi's, or the end of
// the current packet's readTimeout when that is earlier.
func (ic *inConn) apply() {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	dl, timer := ic.idle, false
	if ic.state == 1 || ic.state == 2 {
		if end := ic.started.Add(ic.readTimeout); dl.IsZero() || end.Before(dl) {
			dl, timer = end, true
		}
	}
	ic.timer = timer
	if !dl.Equal(ic.applied) {
		ic.applied = dl
		_ = ic.Conn.SetReadDeadline(dl)
	}
}

// SetReadDeadline records mochi's deadline; apply combines it with the
// packet deadline before each read.
func (ic *inConn) SetReadDeadline(t time.Time) error {
	ic.mu.Lock()
	ic.idle = t
	ic.mu.Unlock()
	ic.apply()
	return nil
}

// SetDeadline sets the read deadline (see outConn: writes have their own).
func (ic *inConn) SetDeadline(t time.Time) error { return ic.SetReadDeadline(t) }

// connState returns the TLS state of the connection, if it is TLS.
func connState(c net.Conn) (tls.ConnectionState, bool) {
	for {
		switch v := c.(type) {
		case *tls.Conn:
			return v.ConnectionState(), true
		case *outConn:
			c = v.Conn
		case *inConn:
			c = v.Conn
		case *wsConn:
			c = v.Conn
		default:
			return tls.ConnectionState{}, false
		}
	}
}

// preAuth is the set of connections, of all listeners, that have not
// completed CONNECT and its login (ingest.PreAuth, shared with STOMP).
type preAuth = ingest.PreAuth

// pendingConn is one connection before its login.
type pendingConn = ingest.Pending

func newPreAuth(max int, onEvict func()) *preAuth { return ingest.NewPreAuth(max, onEvict) }
