package faultproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

// tcpEcho is a real echo server on a free loopback port.
func tcpEcho(t *testing.T) string {
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
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().String()
}

// echoOnce writes msg and reads it back; the read deadline is a hang guard.
func echoOnce(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(testkit.Timeout(10 * time.Second)))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

// TestProxyCutRefuseHeal runs the proxy over real TCP: it forwards, Cut
// ends open connections (both sides), Refuse resets new ones while open
// ones keep working, Heal lets them in again, Close ends everything.
func TestProxyCutRefuseHeal(t *testing.T) {
	p, err := New("127.0.0.1:0", tcpEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c1 := dial()
	if err := echoOnce(c1, "hello"); err != nil {
		t.Fatalf("forward: %v", err)
	}
	if n := p.Open(); n != 1 {
		t.Fatalf("open connections %d, want 1", n)
	}

	p.Cut()
	if err := echoOnce(c1, "after cut"); err == nil {
		t.Fatal("a cut connection still forwards")
	}
	testkit.Wait(t, "the cut connection to be forgotten", func() bool { return p.Open() == 0 })

	c2 := dial()
	if err := echoOnce(c2, "new"); err != nil {
		t.Fatalf("a new connection after the cut: %v", err)
	}
	p.Refuse()
	// The reset may reach the dial itself (loopback is that fast) or the
	// first read: either way nothing gets through.
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		err = echoOnce(c, "refused")
		_ = c.Close()
		if err == nil {
			t.Fatal("Refuse let a new connection through")
		}
	}
	if err := echoOnce(c2, "still open"); err != nil {
		t.Fatalf("Refuse broke an open connection: %v", err)
	}
	p.Heal()
	if err := echoOnce(dial(), "healed"); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
	if p.Accepted() != 4 {
		t.Errorf("accepted %d, want 4", p.Accepted())
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(c2, "closed"); err == nil {
		t.Fatal("Close left a connection forwarding")
	}
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		_ = c.Close()
		t.Fatal("Close left the listener open")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// pipeProxy is a proxy without a listener inside a synctest bubble: its
// target is an echo server on net.Pipe, and connect hands it one client
// connection, so that fake time measures latency and bandwidth exactly.
func pipeProxy(t *testing.T) (p *Proxy, connect func() net.Conn) {
	p = newProxy("pipe", func(context.Context) (net.Conn, error) {
		srv, cli := net.Pipe()
		go func() { _, _ = io.Copy(srv, srv); _ = srv.Close() }()
		return cli, nil
	})
	t.Cleanup(func() { _ = p.Close() })
	return p, func() net.Conn {
		ours, theirs := net.Pipe()
		p.wg.Add(1)
		go p.handle(theirs)
		t.Cleanup(func() { _ = ours.Close() })
		return ours
	}
}

// reader collects what arrives on c.
func reader(c net.Conn) <-chan string {
	out := make(chan string, 16)
	go func() {
		defer close(out)
		buf := make([]byte, 1024)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				out <- string(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// TestProxyBlackholeHolds: a blackhole forwards nothing and closes
// nothing; after Heal the held bytes arrive intact. A side that gives up
// during a blackhole takes the connection down.
func TestProxyBlackholeHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, connect := pipeProxy(t)
		c := connect()
		got := reader(c)
		if _, err := c.Write([]byte("one")); err != nil {
			t.Fatal(err)
		}
		if s := <-got; s != "one" {
			t.Fatalf("got %q", s)
		}

		p.Blackhole()
		if _, err := c.Write([]byte("held")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Hour) // fake time: everything that could move has
		synctest.Wait()
		select {
		case s := <-got:
			t.Fatalf("blackhole forwarded %q", s)
		default:
		}
		if p.Open() != 1 {
			t.Fatalf("blackhole closed the connection: open %d", p.Open())
		}
		p.Heal()
		var b strings.Builder
		for b.Len() < len("held") {
			b.WriteString(<-got)
		}
		if b.String() != "held" {
			t.Fatalf("after Heal got %q, want the held bytes", b.String())
		}

		p.Blackhole()
		if _, err := c.Write([]byte("dropped")); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		_ = c.Close()
		synctest.Wait()
		if p.Open() != 0 {
			t.Fatalf("a connection closed during the blackhole is still open (%d)", p.Open())
		}
		p.Heal()
	})
}

// TestProxyLatencyAndBandwidth measures, in fake time, the delay a round
// trip through the proxy gets from SetLatency and SetBandwidth.
func TestProxyLatencyAndBandwidth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, connect := pipeProxy(t)
		c := connect()
		got := reader(c)
		roundTrip := func(msg string) time.Duration {
			start := time.Now()
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			n := 0
			for n < len(msg) {
				n += len(<-got)
			}
			return time.Since(start)
		}
		if d := roundTrip("x"); d != 0 {
			t.Fatalf("no faults: round trip took %v of fake time", d)
		}
		p.SetLatency(50 * time.Millisecond)
		if d := roundTrip("x"); d != 100*time.Millisecond {
			t.Fatalf("latency 50ms: round trip %v, want 100ms", d)
		}
		p.SetLatency(0)
		p.SetBandwidth(1000)
		if d := roundTrip(strings.Repeat("b", 500)); d != time.Second {
			t.Fatalf("1000 B/s, 500 bytes: round trip %v, want 1s", d)
		}
	})
}

// TestProxyCutAfterConnect: the next n connections come up, answer, and are
// closed a moment later; the one after that stays.
func TestProxyCutAfterConnect(t *testing.T) {
	p, err := New("127.0.0.1:0", tcpEcho(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	p.CutAfterConnect(100*time.Millisecond, 2)
	for i := range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if err := echoOnce(c, "up"); err != nil {
			t.Fatalf("connection %d: no round trip before the cut: %v", i, err)
		}
		// The first two are cut (the read fails; the deadline is a hang
		// guard); the third is still up five times the cut delay later.
		wait := testkit.Timeout(10 * time.Second)
		if i == 2 {
			wait = 500 * time.Millisecond
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		timedOut := errors.As(err, &ne) && ne.Timeout()
		if i < 2 && timedOut {
			t.Fatalf("connection %d was not cut", i)
		}
		if i == 2 && !timedOut {
			t.Fatalf("connection %d was cut (%v); only 2 should be", i, err)
		}
		_ = c.Close()
	}
}
