package ingest

import (
	"container/list"
	"context"
	"sync"
)

// PreAuth tracks the connections of all of a server's listeners that have
// not completed CONNECT and its login (both protocols use it). At most max
// of them exist: a new one closes the oldest, so that idle sockets can
// neither pile up nor lock real logins out (each one also has the
// protocol's connect deadline). Safe for concurrent use.
type PreAuth struct {
	max     int
	onEvict func()

	mu   sync.Mutex
	list list.List // of *Pending, oldest first
}

// Pending is one connection before its login.
type Pending struct {
	p      *PreAuth
	el     *list.Element // nil once done
	close  func()
	ctx    context.Context // ends when the connection is evicted or done
	cancel context.CancelFunc
}

// NewPreAuth returns a set of at most max connections (0: unbounded);
// onEvict, if set, is called for each connection closed to make room.
func NewPreAuth(max int, onEvict func()) *PreAuth {
	p := &PreAuth{max: max, onEvict: onEvict}
	p.list.Init()
	return p
}

// Add registers a new connection; closeConn closes it. It returns the
// entry to mark Done; when the set is full the oldest entry is evicted
// (its context ends and closeConn is called).
func (p *PreAuth) Add(closeConn func()) *Pending {
	pc := &Pending{p: p, close: closeConn}
	pc.ctx, pc.cancel = context.WithCancel(context.Background())
	var evict *Pending
	p.mu.Lock()
	if p.max > 0 && p.list.Len() >= p.max {
		evict = p.list.Remove(p.list.Front()).(*Pending)
		evict.el = nil
	}
	pc.el = p.list.PushBack(pc)
	p.mu.Unlock()
	if evict != nil {
		evict.cancel()
		evict.close()
		if p.onEvict != nil {
			p.onEvict()
		}
	}
	return pc
}

// Context ends when the connection is evicted or Done.
func (pc *Pending) Context() context.Context { return pc.ctx }

// Done takes the connection out of the set: it logged in, or it ended.
// Safe to call more than once.
func (pc *Pending) Done() {
	pc.p.mu.Lock()
	if pc.el != nil {
		pc.p.list.Remove(pc.el)
		pc.el = nil
	}
	pc.p.mu.Unlock()
	pc.cancel()
}

// Len is the number of connections in the set.
func (p *PreAuth) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.list.Len()
}
