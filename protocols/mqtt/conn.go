package mqtt

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// loginState is what the hook needs to know about a connection before its
// session is established.
type loginState struct {
	pending      *pendingConn // in the pre-login set until established
	deadline     time.Time    // the connect deadline: the login must be decided by then
	certUsername func(*x509.Certificate) (string, error)
	established  atomic.Bool
}

// errSlowConsumer is why a client that does not take what is written to it
// was disconnected.
var errSlowConsumer = errors.New("mqtt: client does not read what is written to it")

// outConn makes writes to a client never block the writer. mochi writes a
// client's packets holding that client's lock, with no write deadline (and
// none at all with keepalive 0); whoever delivers to the client (a
// publisher's fan-out, an acknowledgement) waits for that lock. So a client
// that stopped reading would hold up everyone who writes to it.
//
// Write copies into a buffer that one flusher goroutine writes out as soon
// as it can, each write with a deadline; packets written while a write is in
// progress share the next one (acknowledgements that complete together go
// out in one syscall). A client that lets the buffer grow past max bytes, or
// does not take a write within timeout, is a slow consumer: its connection
// is closed, which ends mochi's session for it.
//
// Close is asynchronous: it lets the flusher write what is buffered (the
// last CONNACK or DISCONNECT, bounded by timeout), then closes the socket.
// done is closed when the flusher has ended.
type outConn struct {
	net.Conn
	timeout time.Duration
	max     int
	slow    func(why string)
	login   *loginState // nil for connections that are not a listener's

	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	err     error
	closing bool
	done    chan struct{}
}

func newOutConn(c net.Conn, timeout time.Duration, max int, slow func(why string)) *outConn {
	o := &outConn{Conn: c, timeout: timeout, max: max, slow: slow, done: make(chan struct{})}
	o.cond = sync.NewCond(&o.mu)
	go o.flush()
	return o
}

func (o *outConn) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.err != nil:
		return 0, o.err
	case o.closing:
		return 0, net.ErrClosed
	case len(o.pending)+len(p) > o.max && len(o.pending) > 0:
		o.failLocked(errSlowConsumer, fmt.Sprintf("more than %d bytes waiting to be written", o.max))
		return 0, o.err
	}
	o.pending = append(o.pending, p...)
	o.cond.Broadcast()
	return len(p), nil
}

// failLocked ends the connection after a write failure; the socket is
// closed at once, so the reader (mochi) ends too.
func (o *outConn) failLocked(err error, slowWhy string) {
	if o.err != nil {
		return
	}
	o.err = err
	o.pending = nil
	o.cond.Broadcast()
	_ = o.Conn.Close()
	if slowWhy != "" && o.slow != nil {
		go o.slow(slowWhy) // not under o.mu
	}
}

func (o *outConn) flush() {
	defer close(o.done)
	var out []byte
	for {
		o.mu.Lock()
		for len(o.pending) == 0 && !o.closing && o.err == nil {
			o.cond.Wait()
		}
		if o.err != nil || (o.closing && len(o.pending) == 0) {
			o.mu.Unlock()
			_ = o.Conn.Close()
			return
		}
		out, o.pending = o.pending, out[:0]
		o.mu.Unlock()
		_ = o.Conn.SetWriteDeadline(time.Now().Add(o.timeout))
		if _, err := o.Conn.Write(out); err != nil {
			var ne net.Error
			why := ""
			if errors.As(err, &ne) && ne.Timeout() {
				why = fmt.Sprintf("a write did not complete within %v", o.timeout)
				err = errSlowConsumer
			}
			o.mu.Lock()
			o.failLocked(err, why)
			o.mu.Unlock()
		}
	}
}

// SetDeadline sets the read deadline only: mochi sets both from the
// keepalive, but writes have their own deadline (see flush).
func (o *outConn) SetDeadline(t time.Time) error { return o.SetReadDeadline(t) }

// SetWriteDeadline is ignored, see SetDeadline.
func (o *outConn) SetWriteDeadline(time.Time) error { return nil }

// Close lets the flusher write what is buffered, then close the socket; it
// does not wait (mochi closes from any goroutine, the fan-out included).
func (o *outConn) Close() error {
	o.mu.Lock()
	o.closing = true
	o.cond.Broadcast()
	o.mu.Unlock()
	return nil
}
