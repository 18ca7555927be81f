package main

import (
	"errors"
	"io"
	"net"
	"sync"
)

// uplink is the switch between an edge and the upstream broker in the
// offline scenarios: a TCP forwarder on loopback that is either down (every
// connection is accepted and reset at once: the upstream is unreachable) or
// up (connections are forwarded to the upstream). Going down resets the
// forwarded connections too. Counting the connection attempts lets the
// harness wait until an edge's bridge is running before it loads it, the
// same for both systems.
//
// Only the offline scenarios put it on the path; in the link-up scenarios
// the edges connect to the upstream directly.
type uplink struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	up       bool
	attempts int
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func newUplink(target string) (*uplink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &uplink{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	u.wg.Add(1)
	go u.accept()
	return u, nil
}

func (u *uplink) addr() string { return u.ln.Addr().String() }

func (u *uplink) accept() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.mu.Lock()
		u.attempts++
		up := u.up
		u.mu.Unlock()
		if !up {
			reset(c)
			continue
		}
		u.wg.Add(1)
		go u.forward(c)
	}
}

// reset closes c with an RST, as a host without the service would answer.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func (u *uplink) forward(c net.Conn) {
	defer u.wg.Done()
	s, err := net.Dial("tcp", u.target)
	if err != nil {
		reset(c)
		return
	}
	u.mu.Lock()
	if !u.up {
		u.mu.Unlock()
		reset(c)
		reset(s)
		return
	}
	u.conns[c], u.conns[s] = struct{}{}, struct{}{}
	u.mu.Unlock()
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			u.mu.Lock()
			delete(u.conns, c)
			delete(u.conns, s)
			u.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
		})
	}
	// io.Copy between two TCP connections splices in the kernel on Linux,
	// so the switch costs the harness little CPU during a drain.
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); _, _ = io.Copy(s, c); closeBoth() }()
	go func() { defer copies.Done(); _, _ = io.Copy(c, s); closeBoth() }()
	copies.Wait()
}

// setUp switches the uplink on or off; off resets every forwarded connection.
func (u *uplink) setUp(up bool) {
	u.mu.Lock()
	u.up = up
	var drop []net.Conn
	if !up {
		for c := range u.conns {
			drop = append(drop, c)
		}
		clear(u.conns)
	}
	u.mu.Unlock()
	for _, c := range drop {
		reset(c)
	}
}

// connectAttempts is how many connections the edge made to the uplink.
func (u *uplink) connectAttempts() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.attempts
}

func (u *uplink) close() error {
	err := u.ln.Close()
	u.setUp(false)
	u.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
