package mqtt

import (
	"errors"
	"net"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// A mochi broker that Ferry runs with mochi's own listeners (the
// development upstream of `make run`, the demo's upstream) meets two
// hazards of mochi v2.7.9's Server.Close that the gateway's listeners
// (listener.go) do not:
//
//   - Close hands each listener closeListenerClients, whose
//     Clients.GetByListener takes the clients' read lock twice: a client
//     connecting or leaving in between blocks the second for good, and
//     with it Close (mochi-mqtt/server#488). CloseMochi disconnects the
//     clients with one lock (disconnectClients) instead.
//   - A connection accepted just before its listener closed reaches
//     EstablishConnection, which adds to Listeners.ClientsWg, while Close
//     waits on it: "sync: WaitGroup is reused before previous Wait has
//     returned" (two of four runs of 300 closes beside four clients that
//     connect and leave). A GuardListener lets no connection reach mochi
//     once it is closing and waits for those that did.

// errListenerClosed: a connection came in while its listener closed.
var errListenerClosed = errors.New("mqtt: listener closed")

// GuardListener wraps one of mochi's listeners for a broker closed with
// CloseMochi.
func GuardListener(l listeners.Listener) listeners.Listener {
	return &guardedListener{Listener: l}
}

type guardedListener struct {
	listeners.Listener
	mu      sync.Mutex
	closing bool
	wg      sync.WaitGroup // connections handed to mochi
}

func (g *guardedListener) Serve(establish listeners.EstablishFn) {
	g.Listener.Serve(func(id string, c net.Conn) error {
		g.mu.Lock()
		if g.closing {
			g.mu.Unlock()
			_ = c.Close()
			return errListenerClosed
		}
		g.wg.Add(1)
		g.mu.Unlock()
		defer g.wg.Done()
		return establish(id, c)
	})
}

// Close lets no more connections through, closes the listener (its
// clients with closeClients) and waits for the connections mochi had.
func (g *guardedListener) Close(closeClients listeners.CloseFn) {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	g.Listener.Close(closeClients)
	g.wg.Wait()
}

// CloseMochi is ms.Close without the hazards above: it closes every
// listener, disconnecting its clients with disconnectClients, takes the
// listeners out, and then calls ms.Close, which finds none to close again.
// Add the listeners with GuardListener.
func CloseMochi(ms *mochi.Server) error {
	var ids []string
	ms.Listeners.CloseAll(func(id string) {
		ids = append(ids, id)
		disconnectClients(ms, id)
	})
	for _, id := range ids {
		ms.Listeners.Delete(id)
	}
	return ms.Close()
}
