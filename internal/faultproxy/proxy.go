// Package faultproxy is the fault-injecting TCP proxy of Ferry's demo, its
// chaos campaign and its bridge tests: what stands between a client (a
// device, the gateway's bridge) and its server to cut, refuse or blackhole
// the link, or slow it down.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Proxy is a fault-injecting TCP proxy in front of one target: what a
// demo or a test puts between a client (a device, the gateway's bridge) and
// its server to cut the link, blackhole it or refuse connections, and to
// add latency or a bandwidth limit. Every method is safe for concurrent
// use; the connection list is guarded by the proxy's mutex.
//
// The faults:
//
//   - Cut closes every open connection, both sides, at once.
//   - Refuse answers every new connection with a reset (existing ones
//     stay) — a link that is down.
//   - Blackhole stops forwarding in both directions while keeping
//     connections open: no FIN, no RST, silence, like a dead route. The
//     endpoints must notice by themselves (keepalive, ack timeouts). Bytes
//     are held, not dropped, so a connection that outlives the blackhole
//     resumes intact, as TCP does when a route heals; a side that closes
//     while blackholed takes the whole connection down, held bytes
//     discarded. New connections are accepted and held the same way.
//   - Heal ends Refuse and Blackhole (latency and bandwidth stay).
//   - CutAfterConnect makes the next connections flap: each comes up and
//     is closed a moment later.
type Proxy struct {
	target string
	ln     net.Listener // nil for a proxy fed by handle (unit tests)
	dial   func(ctx context.Context) (net.Conn, error)
	ctx    context.Context // cancelled by Close: ends dials in progress
	cancel context.CancelFunc

	mu         sync.Mutex
	conns      map[*proxyConn]struct{}
	gate       chan struct{} // closed while forwarding; open while blackholed
	blackholed bool
	refuse     bool
	latency    time.Duration
	bandwidth  int // bytes per second per direction; 0: unlimited
	cutAfter   time.Duration
	cutLeft    int // connections still to flap (CutAfterConnect)
	accepted   int
	closed     bool
	wg         sync.WaitGroup // the accept loop and every connection's goroutines
}

// proxyDialTimeout bounds the proxy's connection to its target.
const proxyDialTimeout = 5 * time.Second

// New listens on listen (host:port; "127.0.0.1:0" picks a free port)
// and forwards every connection to target. Close stops it.
func New(listen, target string) (*Proxy, error) {
	if target == "" {
		return nil, errors.New("faultproxy: target is required")
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen %s: %w", listen, err)
	}
	var d net.Dialer
	p := newProxy(target, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) })
	p.ln = ln
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func newProxy(target string, dial func(ctx context.Context) (net.Conn, error)) *Proxy {
	gate := make(chan struct{})
	close(gate)
	ctx, cancel := context.WithCancel(context.Background())
	return &Proxy{target: target, dial: dial, ctx: ctx, cancel: cancel, conns: map[*proxyConn]struct{}{}, gate: gate}
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string {
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

// URL is tcp://Addr, for an MQTT client.
func (p *Proxy) URL() string { return "tcp://" + p.Addr() }

// Target is the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Accepted counts the client connections accepted so far (refused ones
// included).
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Open is the number of connections currently forwarded.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			p.mu.Lock()
			closed := p.closed
			p.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // out of file descriptors or the like: try again
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.handle(c)
	}
}

// proxyConn is one forwarded connection: the client's side and the
// proxy's connection to the target.
type proxyConn struct {
	client, server net.Conn
	done           chan struct{} // closed by close
	once           sync.Once
	cutAfter       time.Duration // > 0: close this long after the target's first bytes reached the client
	cutOnce        sync.Once
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		close(c.done)
		_ = c.client.Close()
		_ = c.server.Close()
	})
}

// handle forwards one client connection until either side ends or the
// proxy cuts it. The caller has done p.wg.Add(1).
func (p *Proxy) handle(c net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	p.accepted++
	refuse := p.refuse || p.closed
	p.mu.Unlock()
	if refuse {
		reset(c)
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, proxyDialTimeout)
	s, err := p.dial(ctx)
	cancel()
	if err != nil {
		reset(c) // the target is down: so is the link
		return
	}
	pc := &proxyConn{client: c, server: s, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pc.close()
		return
	}
	if p.cutLeft > 0 {
		pc.cutAfter = p.cutAfter
		p.cutLeft--
	}
	p.conns[pc] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(pc, c, s, false) })
	wg.Go(func() { p.pipe(pc, s, c, true) })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// reset closes c with a TCP reset where it can (SO_LINGER 0), which is what
// a client sees from a host that refuses connections.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

type chunk struct {
	due  time.Time // when latency lets it go
	data []byte
}

// pipe copies src to dst through the faults until src ends or the
// connection is closed; then it closes the connection (both directions).
// toClient: this is the target → client direction.
func (p *Proxy) pipe(pc *proxyConn, src, dst net.Conn, toClient bool) {
	q := make(chan chunk, 64)
	go func() {
		defer close(q)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p.mu.Lock()
				lat := p.latency
				p.mu.Unlock()
				select {
				case q <- chunk{due: time.Now().Add(lat), data: append([]byte(nil), buf[:n]...)}:
				case <-pc.done:
					return
				}
			}
			if err != nil {
				p.mu.Lock()
				bh := p.blackholed
				p.mu.Unlock()
				if bh {
					pc.close() // gave up while blackholed: nothing held goes through
				}
				return
			}
		}
	}()
	defer func() {
		pc.close()
		for range q { // the reader ends once src is closed
		}
	}()
	for c := range q {
		if !p.sleepUntil(pc, c.due) {
			return
		}
		p.mu.Lock()
		bw := p.bandwidth
		p.mu.Unlock()
		if bw > 0 {
			// The chunk leaves when its last byte would have.
			if !p.sleepUntil(pc, time.Now().Add(time.Duration(len(c.data))*time.Second/time.Duration(bw))) {
				return
			}
		}
		if !p.hold(pc) {
			return
		}
		if _, err := dst.Write(c.data); err != nil {
			return
		}
		if toClient && pc.cutAfter > 0 {
			pc.cutOnce.Do(func() { time.AfterFunc(pc.cutAfter, pc.close) })
		}
	}
}

// hold waits while the proxy is blackholed; false: the connection closed.
func (p *Proxy) hold(pc *proxyConn) bool {
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
		return true
	case <-pc.done:
		return false
	}
}

func (p *Proxy) sleepUntil(pc *proxyConn, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-pc.done:
		return false
	}
}

// Cut closes every open connection, both sides, at once. New connections
// are forwarded as before (unless Refuse).
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Blackhole stops forwarding (see Proxy) until Heal.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.blackholed {
		p.blackholed = true
		p.gate = make(chan struct{})
	}
}

// Refuse resets new connections at once until Heal; open ones stay (Cut
// them too for a link that goes down).
func (p *Proxy) Refuse() {
	p.mu.Lock()
	p.refuse = true
	p.mu.Unlock()
}

// Heal ends Blackhole and Refuse. Latency and bandwidth stay.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuse = false
	if p.blackholed {
		p.blackholed = false
		close(p.gate)
	}
}

// CutAfterConnect makes the next n connections flap: each is closed d after
// the target's first bytes (for MQTT, the CONNACK) reached the client, so
// that every connection comes up and then dies, like a link that keeps
// dropping. Latency applies as usual.
func (p *Proxy) CutAfterConnect(d time.Duration, n int) {
	p.mu.Lock()
	p.cutAfter, p.cutLeft = d, n
	p.mu.Unlock()
}

// SetLatency delays every chunk of bytes by d, each direction.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = max(d, 0)
	p.mu.Unlock()
}

// SetBandwidth limits each direction of each connection to bytesPerSec
// (0: unlimited).
func (p *Proxy) SetBandwidth(bytesPerSec int) {
	p.mu.Lock()
	p.bandwidth = max(bytesPerSec, 0)
	p.mu.Unlock()
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines. It may be called more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	var err error
	if p.ln != nil {
		err = p.ln.Close()
	}
	p.Cut()
	p.wg.Wait()
	return err
}
