// Package freeport picks free loopback ports for listeners that a child
// process binds itself (the demo, the benchmarks, the tests).
package freeport

import (
	"errors"
	"net"
	"sync"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Loopback returns a port that was free on 127.0.0.1 a moment ago and that
// this process was not given before. The kernel hands a port that was just
// closed out again, so a caller asking for several ports before anything
// binds them could get one twice (seen: "listeners.http.address: already
// used by listeners.stomp").
func Loopback() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		mu.Lock()
		dup := given[port]
		given[port] = true
		mu.Unlock()
		if !dup {
			return port, nil
		}
	}
	return 0, errors.New("freeport: every free port offered was given out before")
}
