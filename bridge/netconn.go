package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// connHooks are what the bridge hears from a network connection.
type connHooks struct {
	// dead is called once with the cause when the connection fails or is
	// closed.
	dead func(error)
	// onAck is called from the receive path with the packet ids of the
	// PUBACKs of one read, in arrival order.
	onAck func(pids []uint16)
	// onReject is called from the receive path, after onAck for the same
	// read, with the packet id and reason code of each MQTT 5 PUBACK whose
	// reason code is 0x80 or more (MQTT 3.1.1 PUBACKs have none).
	onReject func(pid uint16, code byte)
}

// dial opens the network connection for paho (its CustomOpenConnectionFn)
// and wraps it in a bufConn. paho itself stays silent about a read that
// fails with "use of closed network connection" (it assumes a deliberate
// close), which is what its reader sees after our flusher hit a write error
// and closed the socket: without hooks.dead a cut could go unnoticed until
// the stall timeout.
func dial(uri *url.URL, o paho.ClientOptions, h connHooks) (*bufConn, error) {
	var c net.Conn
	var err error
	timeout := o.ConnectTimeout
	switch uri.Scheme {
	case "tcp", "mqtt":
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial("tcp", uri.Host)
	case "ssl", "tls", "mqtts", "tcps", "mqtt+ssl":
		d := net.Dialer{Timeout: timeout}
		var raw net.Conn
		if raw, err = d.Dial("tcp", uri.Host); err != nil {
			break
		}
		cfg := o.TLSConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = uri.Hostname()
		}
		tc := tls.Client(raw, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err = tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			_ = raw.Close()
			break
		}
		c = tc
	case "ws", "wss":
		u := *uri
		u.User = nil
		var tc *tls.Config
		if uri.Scheme == "wss" {
			tc = o.TLSConfig
		}
		c, err = paho.NewWebsocket(u.String(), tc, timeout, o.HTTPHeaders, o.WebsocketOptions)
	default:
		return nil, fmt.Errorf("unsupported scheme %q (want tcp, ssl, tls, mqtts, ws or wss)", uri.Scheme)
	}
	if err != nil {
		return nil, err
	}
	return newBufConn(c, h), nil
}

// bufConn is the network connection under paho, and the bridge's own
// publish path.
//
// Writes: paho's packets (CONNECT, SUBSCRIBE, PUBACKs of downstream
// messages, its keepalive PINGREQs) and the bridge's PUBLISH packets, which
// publish encodes straight into the send buffer, go out in the order they
// were queued, whole packets never interleaved. One flusher goroutine writes
// the buffer out, so packets queued while a write is in progress share one
// syscall. paho's own writes are flushed at once; the bridge's publishes
// when it calls flush (at the end of a leased batch, or before it waits), so
// a batch costs one or two syscalls instead of one per message. A write error
// is returned by the next Write or publish and closes the connection. Writes
// never block on the network: a dead link is found by the bridge's stall
// detection, which closes the connection. The buffer is bounded by the
// bridge's window.
//
// Reads are buffered and pass through a scanner that follows the MQTT
// framing: it takes PUBACKs out of the stream (they answer the bridge's
// publishes, which paho does not know about) and hands their packet ids to
// hooks.onAck, and counts PINGRESPs (which paho still sees) so that ping can
// tell when its PINGREQ was answered.
type bufConn struct {
	net.Conn
	r    *bufio.Reader
	dead func(error)
	once sync.Once

	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	kick    bool // write pending out now
	err     error
	closed  bool
	done    chan struct{}
	// PINGREQs queued (ours and paho's), PINGRESPs seen, and the pings
	// waiting for theirs (in order: brokers answer pings in order).
	pingsOut, pongs uint64
	waiters         []pingWaiter
}

type pingWaiter struct {
	n    uint64
	pong *Pong
}

// flushAt is how many queued publish bytes make the flusher start without
// waiting for flush.
const flushAt = 64 << 10

func newBufConn(c net.Conn, h connHooks) *bufConn {
	if h.dead == nil {
		h.dead = func(error) {}
	}
	b := &bufConn{Conn: c, dead: h.dead, done: make(chan struct{})}
	b.r = bufio.NewReaderSize(&scanner{r: c, onAck: h.onAck, onReject: h.onReject, onPong: b.pong}, 64<<10)
	b.cond = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

func (b *bufConn) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil {
		b.died(fmt.Errorf("read: %w", err))
	}
	return n, err
}

func (b *bufConn) died(err error) { b.once.Do(func() { b.dead(err) }) }

// Write queues one of paho's packets (paho writes each packet with one
// call) and starts the flusher.
func (b *bufConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable(); err != nil {
		return 0, err
	}
	if len(p) == 2 && p[0] == pingreq && p[1] == 0 {
		b.pingsOut++ // paho's keepalive: its PINGRESP comes first
	}
	b.pending = append(b.pending, p...)
	b.kick = true
	b.cond.Broadcast()
	return len(p), nil
}

// MQTT 3.1.1 packet types (first byte, flags included, where fixed).
const (
	publishQoS1 = 0x32
	puback      = 4
	pingreq     = 0xc0
	pingresp    = 13
)

// publish queues a QoS 1 PUBLISH (no DUP, no retain: every connection is a
// clean session, so a resend is a new publish). It does not start the
// flusher unless the buffer is large; see flushNow.
func (b *bufConn) publish(pid uint16, topic string, payload []byte, retain bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable(); err != nil {
		return err
	}
	n := len(b.pending)
	b.pending = appendPublish(b.pending, pid, topic, payload)
	if retain {
		b.pending[n] |= 1
	}
	if len(b.pending) >= flushAt {
		b.kick = true
		b.cond.Broadcast()
	}
	return nil
}

// publishQoS0 queues a QoS 0 PUBLISH (MQTT 3.1.1 §3.3: no packet id).
func (b *bufConn) publishQoS0(topic string, payload []byte, retain bool) error {
	return b.queue(func(dst []byte) []byte {
		h := byte(0x30)
		if retain {
			h |= 1
		}
		n := 2 + len(topic) + len(payload)
		dst = append(dst, h)
		for {
			d := byte(n & 0x7f)
			n >>= 7
			if n > 0 {
				d |= 0x80
			}
			dst = append(dst, d)
			if n == 0 {
				break
			}
		}
		dst = append(dst, byte(len(topic)>>8), byte(len(topic)))
		dst = append(dst, topic...)
		return append(dst, payload...)
	})
}

// appendPublish appends a QoS 1 PUBLISH packet (MQTT 3.1.1 §3.3).
func appendPublish(dst []byte, pid uint16, topic string, payload []byte) []byte {
	n := 2 + len(topic) + 2 + len(payload)
	dst = append(dst, publishQoS1)
	for {
		d := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			d |= 0x80
		}
		dst = append(dst, d)
		if n == 0 {
			break
		}
	}
	dst = append(dst, byte(len(topic)>>8), byte(len(topic)))
	dst = append(dst, topic...)
	dst = append(dst, byte(pid>>8), byte(pid))
	return append(dst, payload...)
}

// queue appends one packet, encoded by enc onto the send buffer, like
// publish (the MQTT 5 path, whose packets paho.golang's encoder writes).
func (b *bufConn) queue(enc func(dst []byte) []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.usable(); err != nil {
		return err
	}
	b.pending = enc(b.pending)
	if len(b.pending) >= flushAt {
		b.kick = true
		b.cond.Broadcast()
	}
	return nil
}

// flushNow starts the flusher on whatever is queued.
func (b *bufConn) flushNow() {
	b.mu.Lock()
	if len(b.pending) > 0 {
		b.kick = true
		b.cond.Broadcast()
	}
	b.mu.Unlock()
}

// ping queues a PINGREQ behind everything queued (flushNow sends it) and
// returns its Pong, answered when the PINGRESP to it arrived. On a dead
// connection it is never answered.
func (b *bufConn) ping() *Pong {
	pong := NewPong()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.usable() != nil {
		return pong
	}
	b.pending = append(b.pending, pingreq, 0)
	b.pingsOut++
	b.waiters = append(b.waiters, pingWaiter{n: b.pingsOut, pong: pong})
	return pong
}

// pong runs in the receive path for every PINGRESP.
func (b *bufConn) pong() {
	b.mu.Lock()
	b.pongs++
	for len(b.waiters) > 0 && b.waiters[0].n <= b.pongs {
		b.waiters[0].pong.Answer()
		b.waiters = b.waiters[1:]
	}
	b.mu.Unlock()
}

func (b *bufConn) usable() error {
	if b.err != nil {
		return b.err
	}
	if b.closed {
		return net.ErrClosed
	}
	return nil
}

func (b *bufConn) flush() {
	defer close(b.done)
	var out []byte
	for {
		b.mu.Lock()
		for (!b.kick || len(b.pending) == 0) && !b.closed {
			b.cond.Wait()
		}
		if b.closed {
			b.mu.Unlock()
			return
		}
		out, b.pending = b.pending, out[:0]
		b.kick = false
		b.mu.Unlock()
		if _, err := b.Conn.Write(out); err != nil {
			b.mu.Lock()
			b.err = err
			b.mu.Unlock()
			b.died(fmt.Errorf("write: %w", err))
			_ = b.Conn.Close()
			return
		}
	}
}

// SetWriteDeadline is ignored: writes do not block on the network; a dead
// link is found by the bridge's stall detection, which closes the
// connection.
func (b *bufConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets only the read deadline, see SetWriteDeadline.
func (b *bufConn) SetDeadline(t time.Time) error { return b.SetReadDeadline(t) }

func (b *bufConn) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	b.died(net.ErrClosed)
	err := b.Conn.Close()
	<-b.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// scanner follows the MQTT framing of the bytes the broker sends: it takes
// PUBACKs out (reporting their packet ids to onAck) and reports PINGRESPs
// to onPong, passing everything else through unchanged. A malformed stream
// is passed through for paho to reject.
type scanner struct {
	r        io.Reader
	onAck    func([]uint16)
	onReject func(pid uint16, code byte)
	onPong   func()

	state  uint8 // scanHeader, scanLength, scanBody
	drop   bool  // the current packet is a PUBACK
	typ    byte
	length int
	shift  uint
	nlen   int
	remain int
	pid    uint16
	code   byte // reason code of the current PUBACK (MQTT 5; 0 when absent)
	seen   int  // body bytes of the current PUBACK seen
	acks   []uint16
	fails  []reject
}

type reject struct {
	pid  uint16
	code byte
}

const (
	scanHeader = iota
	scanLength
	scanBody
)

func (s *scanner) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		n = s.filter(p[:n])
		if len(s.acks) > 0 {
			if s.onAck != nil {
				s.onAck(s.acks)
			}
			s.acks = s.acks[:0]
		}
		if len(s.fails) > 0 {
			if s.onReject != nil {
				for _, f := range s.fails {
					s.onReject(f.pid, f.code)
				}
			}
			s.fails = s.fails[:0]
		}
		// bufio treats (0, nil) as no progress: read on when everything
		// read was taken out.
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// filter scans b, removes PUBACK packets from it in place and returns the
// length of what is left.
func (s *scanner) filter(b []byte) int {
	w := 0
	for i := 0; i < len(b); {
		switch s.state {
		case scanHeader:
			s.typ = b[i] >> 4
			s.drop = s.typ == puback
			s.length, s.shift, s.nlen = 0, 0, 0
			if !s.drop {
				b[w] = b[i]
				w++
			}
			i++
			s.state = scanLength
		case scanLength:
			c := b[i]
			if !s.drop {
				b[w] = c
				w++
			}
			i++
			s.length |= int(c&0x7f) << s.shift
			s.shift += 7
			s.nlen++
			if c&0x80 != 0 && s.nlen < 4 {
				continue
			}
			s.remain, s.seen, s.pid, s.code = s.length, 0, 0, 0
			if s.typ == pingresp && s.length == 0 && s.onPong != nil {
				s.onPong()
			}
			s.state = scanBody
			if s.remain == 0 {
				s.end()
			}
		case scanBody:
			k := min(s.remain, len(b)-i)
			if s.drop {
				for j := 0; j < k && s.seen < 3; j++ {
					if s.seen < 2 {
						s.pid = s.pid<<8 | uint16(b[i+j])
					} else {
						s.code = b[i+j]
					}
					s.seen++
				}
			} else {
				copy(b[w:], b[i:i+k])
				w += k
			}
			i += k
			s.remain -= k
			if s.remain == 0 {
				s.end()
			}
		}
	}
	return w
}

func (s *scanner) end() {
	switch {
	case !s.drop || s.seen < 2:
	case s.code >= 0x80 && s.onReject != nil:
		s.fails = append(s.fails, reject{s.pid, s.code})
	default:
		// MQTT 5 codes below 0x80 are successes (0x10: no matching
		// subscribers).
		s.acks = append(s.acks, s.pid)
	}
	s.state = scanHeader
}
