package stomp

import "github.com/ferrymq/ferry/protocols/ingest"

// preAuth is the set of connections, of all listeners, that have not
// completed CONNECT and its login (ingest.PreAuth, shared with MQTT).
type preAuth = ingest.PreAuth

// pendingConn is one connection before its login.
type pendingConn = ingest.Pending

func newPreAuth(max int, onEvict func()) *preAuth { return ingest.NewPreAuth(max, onEvict) }
