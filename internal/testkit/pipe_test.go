package testkit

import (
	"errors"
	"io"
	"net"
	"testing"
)

// TestPipeListener: Dial's client end talks to Accept's server end, and a
// closed listener's Accept returns net.ErrClosed.
func TestPipeListener(t *testing.T) {
	l := NewPipeListener()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	client := l.Dial()
	server := <-accepted
	go func() { _, _ = client.Write([]byte("ping")) }()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	_ = client.Close()
	_ = server.Close()
	_ = l.Close()
	_ = l.Close() // twice is fine
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
