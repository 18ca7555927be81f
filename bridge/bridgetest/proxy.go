package bridgetest

import (
	"testing"

	"github.com/ferrymq/ferry/internal/faultproxy"
)

// Proxy is the fault-injecting TCP proxy (internal/faultproxy) (the one `ferry
// demo` and the chaos campaign use) on a free 127.0.0.1 port in front of one
// target: Cut, Refuse, Blackhole (bytes held until Heal, as a route that
// heals), Heal, SetLatency, SetBandwidth, CutAfterConnect. All methods are
// safe for concurrent use.
type Proxy struct {
	*faultproxy.Proxy
}

// NewProxy listens on a free 127.0.0.1 port and forwards to target.
// Cleanup closes it and every connection.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := faultproxy.New("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return &Proxy{p}
}
