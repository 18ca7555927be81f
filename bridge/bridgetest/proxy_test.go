package bridgetest

import (
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, msg string, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	if _, err := c.Write([]byte(msg)); err != nil {
		return 0, err
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return time.Since(start), err
}

func TestProxyFaults(t *testing.T) {
	p := NewProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(t, c, "hello", time.Second); err != nil {
		t.Fatalf("plain: %v", err)
	}
	p.SetLatency(50 * time.Millisecond)
	if d, err := roundTrip(t, c, "slow", time.Second); err != nil || d < 100*time.Millisecond {
		t.Fatalf("latency: %v after %v, want >= 100ms both ways", err, d)
	}
	p.SetLatency(0)
	p.SetBandwidth(10_000)
	if d, err := roundTrip(t, c, string(make([]byte, 2000)), 2*time.Second); err != nil || d < 300*time.Millisecond {
		t.Fatalf("bandwidth: %v after %v, want >= 2x200ms", err, d)
	}
	p.SetBandwidth(0)
	p.Blackhole()
	if _, err := roundTrip(t, c, "lost", 200*time.Millisecond); err == nil {
		t.Fatal("blackhole forwarded bytes")
	}
	p.Heal()
	p.Cut()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("cut connection still delivers")
	}
	p.Refuse()
	c2, err := net.Dial("tcp", p.Addr())
	if err == nil {
		_ = c2.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c2.Read(make([]byte, 1)); err == nil {
			t.Fatal("refused connection stays open")
		}
		c2.Close()
	}
	p.Heal()
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if _, err := roundTrip(t, c3, "again", time.Second); err != nil {
		t.Fatalf("after heal: %v", err)
	}
}

func TestMosquittoRestartSamePort(t *testing.T) {
	m := StartMosquitto(t, MosquittoOptions{})
	port, pid := m.Port, m.PID()
	m.Restart()
	if m.Port != port || m.PID() == pid || m.PID() == 0 {
		t.Fatalf("restart: port %d→%d pid %d→%d", port, m.Port, pid, m.PID())
	}
	c, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	m.Kill()
	if _, err := net.DialTimeout("tcp", m.Addr(), 200*time.Millisecond); err == nil {
		t.Fatal("still listening after Kill")
	}
}
