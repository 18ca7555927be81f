package firmwaresim

import "github.com/ferrymq/ferry/internal/faultproxy"

// Proxy is the fault-injecting TCP proxy (internal/faultproxy) that the demo
// and the chaos campaign put between devices or the bridge and their server.
type Proxy = faultproxy.Proxy

// NewProxy listens on listen (host:port; "127.0.0.1:0" picks a free port)
// and forwards every connection to target. Close stops it.
func NewProxy(listen, target string) (*Proxy, error) { return faultproxy.New(listen, target) }
