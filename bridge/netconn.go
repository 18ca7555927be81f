package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// dial opens the network connection for paho (its CustomOpenConnectionFn)
// and wraps it in a bufConn; dead is called once with the cause when the
// connection fails or is closed. paho itself stays silent about a read that
// fails with "use of closed network connection" (it assumes a deliberate
// close), which is what its reader sees after our flusher hit a write error
// and closed the socket: without dead a cut could go unnoticed until the
// stall timeout. paho writes every packet with its own write
// call and reads a packet in several small reads: at tens of thousands of
// messages per second the syscalls, not the broker, were the limit.
func dial(uri *url.URL, o paho.ClientOptions, dead func(error)) (net.Conn, error) {
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
	return newBufConn(c, dead), nil
}

// bufConn buffers reads and coalesces writes: Write copies into a buffer
// that one flusher goroutine writes out as soon as it can, so packets
// written while a previous write is in progress share one syscall. Latency
// is unchanged (nothing waits for a timer). A write error is returned by the
// next Write and closes the connection.
//
// Write never blocks on the network. paho's Publish blocks while its writer
// is busy, and when the connection dies under a blocked Publish it only
// returns after WriteTimeout; with a writer that never blocks that can only
// happen in the short teardown window. The buffer is bounded by the bridge's
// window (at most Window publishes are outstanding) plus small control
// packets.
type bufConn struct {
	net.Conn
	r    *bufio.Reader
	dead func(error)
	once sync.Once

	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	err     error
	closed  bool
	done    chan struct{}
}

func newBufConn(c net.Conn, dead func(error)) *bufConn {
	if dead == nil {
		dead = func(error) {}
	}
	b := &bufConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10), dead: dead, done: make(chan struct{})}
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

func (b *bufConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.closed {
		return 0, net.ErrClosed
	}
	b.pending = append(b.pending, p...)
	b.cond.Broadcast()
	return len(p), nil
}

func (b *bufConn) flush() {
	defer close(b.done)
	var out []byte
	for {
		b.mu.Lock()
		for len(b.pending) == 0 && !b.closed {
			b.cond.Wait()
		}
		if b.closed {
			b.mu.Unlock()
			return
		}
		out, b.pending = b.pending, out[:0]
		b.cond.Broadcast()
		b.mu.Unlock()
		if _, err := b.Conn.Write(out); err != nil {
			b.mu.Lock()
			b.err = err
			b.cond.Broadcast()
			b.mu.Unlock()
			b.died(fmt.Errorf("write: %w", err))
			_ = b.Conn.Close()
			return
		}
	}
}

// SetWriteDeadline is ignored: writes do not block on the network; a dead
// link is found by the bridge's stall detection, which
// closes the connection.
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
