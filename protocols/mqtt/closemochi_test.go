package mqtt

import (
	"log/slog"
	"net"
	"reflect"
	"runtime"
	"strings"
	"sync"
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
	if err := ms.AddListener(ln); err != nil {
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
