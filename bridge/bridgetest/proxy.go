package bridgetest

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a fault-injecting TCP proxy on 127.0.0.1 in front of one target.
// All methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	mu        sync.Mutex
	conns     map[*proxyConn]struct{}
	blackhole bool
	refuse    bool
	latency   time.Duration
	bandwidth int // bytes per second per direction; 0: unlimited
	accepted  int
	closed    bool
	wg        sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	once           sync.Once
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		_ = c.client.Close()
		_ = c.server.Close()
	})
}

// NewProxy listens on a free 127.0.0.1 port and forwards to target.
// Cleanup closes it and every connection.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{target: target, ln: ln, conns: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is tcp://Addr.
func (p *Proxy) URL() string { return "tcp://" + p.Addr() }

// Accepted counts accepted client connections.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.accepted++
		if p.refuse || p.closed {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.mu.Unlock()
		s, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxyConn{client: c, server: s}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pc.close()
			continue
		}
		p.conns[pc] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pump(pc, c, s)
		go p.pump(pc, s, c)
	}
}

type chunk struct {
	due  time.Time
	data []byte
}

// pump copies src to dst, applying blackhole, latency and bandwidth.
func (p *Proxy) pump(pc *proxyConn, src, dst net.Conn) {
	defer p.wg.Done()
	defer func() {
		pc.close()
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
	}()
	q := make(chan chunk, 1024)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			p.mu.Lock()
			bw := p.bandwidth
			p.mu.Unlock()
			if bw > 0 {
				// The chunk arrives when its last byte would have.
				time.Sleep(time.Duration(len(c.data)) * time.Second / time.Duration(bw))
			}
			if _, err := dst.Write(c.data); err != nil {
				pc.close()
				for range q {
				}
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			bh, lat := p.blackhole, p.latency
			p.mu.Unlock()
			if !bh {
				q <- chunk{due: time.Now().Add(lat), data: append([]byte(nil), buf[:n]...)}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				pc.close()
			}
			break
		}
	}
	close(q)
	<-writerDone
	pc.close()
}

// Cut closes every connection (both sides) at once.
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

// Blackhole keeps connections open (and accepts new ones) but drops every
// byte in both directions, like a dead route.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	p.blackhole = true
	p.mu.Unlock()
}

// Refuse closes new connections at once (link down); existing ones stay.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	p.refuse = true
	p.mu.Unlock()
}

// SetLatency delays every chunk by d.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// SetBandwidth limits each direction of each connection to bytesPerSec
// (0: unlimited).
func (p *Proxy) SetBandwidth(bytesPerSec int) {
	p.mu.Lock()
	p.bandwidth = bytesPerSec
	p.mu.Unlock()
}

// Heal ends Blackhole and Refuse (latency and bandwidth stay).
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.blackhole, p.refuse = false, false
	p.mu.Unlock()
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}
