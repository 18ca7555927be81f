package testkit

import (
	"net"
	"sync"
)

// PipeListener is a net.Listener whose connections are net.Pipe pairs: a
// server that serves it runs without a socket, so a whole server fits in a
// testing/synctest bubble (every goroutine blocks durably, virtual time
// jumps to the next deadline) and a fuzzer can open a connection per input
// cheaply. Dial hands the server end to Accept and returns the client end.
// Safe for concurrent use.
type PipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

// NewPipeListener returns an open PipeListener. Inside a synctest bubble,
// create it inside the bubble.
func NewPipeListener() *PipeListener {
	return &PipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

// Accept waits for a Dial and returns the server end of its connection, or
// net.ErrClosed once the listener is closed.
func (l *PipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close makes Accept return net.ErrClosed; it may be called more than once.
// Connections already handed out stay open.
func (l *PipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr is the address "pipe" of network "pipe".
func (l *PipeListener) Addr() net.Addr { return pipeAddr{} }

// Dial returns the client end of a new connection, once the server end was
// accepted: it blocks until Accept is called.
func (l *PipeListener) Dial() net.Conn {
	a, b := net.Pipe()
	l.ch <- b
	return a
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }
