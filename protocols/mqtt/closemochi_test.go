package mqtt

import (
	"errors"
	"log/slog"
	"net"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/internal/testkit"
)

// closerListener is mochi's Net listener that records the name of every
// CloseFn it is handed.
type closerListener struct {
	*listeners.Net
	mu      sync.Mutex
	closers []string
}

func (l *closerListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	l.closers = append(l.closers, runtime.FuncForPC(reflect.ValueOf(closeClients).Pointer()).Name())
	l.mu.Unlock()
	l.Net.Close(closeClients)
}

// TestCloseMochiSkipsGetByListener: CloseMochi, for the mochi brokers
// Ferry runs with mochi's own listeners (the development upstream of
// `make run`, the demo's upstream), never hands a listener mochi's
// closeListenerClients, whose Clients.GetByListener takes the clients'
// read lock twice and deadlocks when a client connects or leaves in
// between (mochi-mqtt/server#488: TestDemoGatewayDoesNotStart hung in the
// demo upstream's Close). The clients are still told DISCONNECT 0x8B.
func TestCloseMochiSkipsGetByListener(t *testing.T) {
	ms := mochi.New(&mochi.Options{InlineClient: false, Logger: slog.New(slog.DiscardHandler)})
	if err := ms.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &closerListener{Net: listeners.NewNet("up", nl)}
	if err := ms.AddListener(GuardListener(ln)); err != nil { // as the upstreams do
		t.Fatal(err)
	}
	go func() { _ = ms.Serve() }()
	c, code := dialRaw(t, nl.Addr().String(), "dev5", connectOpts{v5: true})
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	testkit.WaitUntil(t, testkit.DefaultWait, "the client registered", func() bool {
		_, ok := ms.Clients.Get("dev5")
		return ok
	})
	closed := make(chan error, 1)
	go func() { closed <- CloseMochi(ms) }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(guard()):
		t.Fatal("hang guard: CloseMochi did not return")
	}
	ln.mu.Lock()
	names := ln.closers
	ln.mu.Unlock()
	if len(names) == 0 {
		t.Fatal("the listener was never closed")
	}
	for _, n := range names {
		if strings.Contains(n, "closeListenerClients") {
			t.Fatalf("the listener was handed mochi's %s (closers: %v)", n, names)
		}
	}
	pk, err := c.read(guard())
	if err != nil {
		t.Fatalf("%v before a DISCONNECT", err)
	}
	if pk.typ != packets.Disconnect || len(pk.body) == 0 || pk.body[0] != packets.ErrServerShuttingDown.Code {
		t.Fatalf("got packet type %d body %x, want DISCONNECT 0x8B", pk.typ, pk.body)
	}
}

// serveOnly is a listener that hands mochi's establish function to the
// test (Serve) and calls the CloseFn it is given (Close).
type serveOnly struct {
	listeners.Listener // not called
	establish          chan listeners.EstablishFn
}

func (l *serveOnly) ID() string                           { return "fake" }
func (l *serveOnly) Serve(est listeners.EstablishFn)      { l.establish <- est }
func (l *serveOnly) Close(closeClients listeners.CloseFn) { closeClients("fake") }

// TestGuardListenerLetsNothingInWhileClosing: a GuardListener's Close
// waits for the connections it handed to mochi, and hands none once it is
// closing, so that nothing adds to mochi's Listeners.ClientsWg while
// mochi's Close waits on it (the "WaitGroup is reused" panic).
func TestGuardListenerLetsNothingInWhileClosing(t *testing.T) {
	inner := &serveOnly{establish: make(chan listeners.EstablishFn, 1)}
	g := GuardListener(inner)
	var mu sync.Mutex
	var events []string
	event := func(e string) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}
	var reached atomic.Int32
	inMochi := make(chan struct{})
	leave := make(chan struct{})
	go g.Serve(func(string, net.Conn) error {
		if reached.Add(1) > 1 {
			return nil // a second one: the test fails on it below
		}
		close(inMochi)
		<-leave // a client's life in mochi
		event("left")
		return nil
	})
	est := <-inner.establish
	c1, c2 := net.Pipe()
	defer func() { _ = c2.Close() }()
	first := make(chan error, 1)
	go func() { first <- est("fake", c1) }()
	<-inMochi
	closing := make(chan struct{})
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		g.Close(func(string) { close(closing) })
		event("closed")
	}()
	<-closing
	d1, d2 := net.Pipe()
	defer func() { _ = d2.Close() }()
	if err := est("fake", d1); !errors.Is(err, errListenerClosed) {
		t.Fatalf("a connection while closing: %v, want errListenerClosed", err)
	}
	close(leave)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(guard()):
		t.Fatal("hang guard: Close did not return after the last connection left")
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("%d connections reached mochi, want 1 (the one before Close)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(events, []string{"left", "closed"}) {
		t.Fatalf("events %v: Close returned before the connection in mochi left", events)
	}
}
