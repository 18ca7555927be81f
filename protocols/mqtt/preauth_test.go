package mqtt

import (
	"bufio"
	"errors"
	"net"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/ingest"
)

// TestConnectTooLargeAllocatesNothing (issue 11 item 7): a client that
// has not logged in sends a fixed header claiming a CONNECT of almost
// max_packet_size (256 KiB) and nothing more. mochi allocates the whole
// body as soon as it has decoded the length and then waits for it; the
// gateway must refuse it from the header, allocating next to nothing, and
// close the connection at once.
func TestConnectTooLargeAllocatesNothing(t *testing.T) {
	s, _ := startServer(t, testOptions{})
	const conns, claim = 20, 256<<10 - 8
	header := append([]byte{0x10}, varint(claim)...)
	header = append(header, 0, 4, 'M', 'Q', 'T') // 10 bytes in all
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", s.Addr("tcp"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		if _, err := c.Write(header); err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	for _, c := range cs {
		rc := &rawConn{t: t, c: c, br: bufio.NewReader(c)}
		if code := rc.expectClosed(); code != -1 {
			t.Errorf("got DISCONNECT %d", code)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / conns; per > 64<<10 {
		t.Errorf("%d bytes allocated per connection that sent a 10-byte header, want < 64 KiB", per)
	}
	waitFor(t, "the refusals counted", func() bool { return s.Stats().Refused[ingest.ReasonTooLarge] == conns })
}

// TestConnectWithinLimitLogsIn: a CONNECT up to max_connect_size (a will
// with a payload) still logs in.
func TestConnectWithinLimitLogsIn(t *testing.T) {
	s, sink := startServer(t, testOptions{Options: Options{MaxConnectSize: 4096}})
	rc, code := dialRaw(t, s.Addr("tcp"), "will", connectOpts{willTopic: "w/t", willMsg: string(make([]byte, 3000))})
	if code != 0 {
		t.Fatalf("CONNACK %#x", code)
	}
	rc.publish("a", []byte("x"), 1, 1)
	if got := rc.ack(4, 1); got != 0 {
		t.Fatalf("PUBACK %#x", got)
	}
	sink.WaitMessages(t, 1)
	big, _ := net.Dial("tcp", s.Addr("tcp"))
	defer func() { _ = big.Close() }()
	bc := &rawConn{t: t, c: big, br: bufio.NewReader(big)}
	body := append(mqttString("MQTT"), 4, 0x02|0x04|0x08, 0, 60)
	body = append(append(append(body, mqttString("big")...), mqttString("w/t")...), mqttString(string(make([]byte, 5000)))...)
	bc.write(packet(0x10, body))
	if code := bc.expectClosed(); code != -1 {
		t.Errorf("got DISCONNECT %d", code)
	}
}

// TestPendingConnectionsCapped (issue 11 item 7): sockets that never send
// CONNECT are capped by MaxPending, separately from MaxConnections: a new
// one closes the oldest, so that idle sockets can neither pile up nor
// lock a real login out.
func TestPendingConnectionsCapped(t *testing.T) {
	const pending = 3
	s, _ := startServer(t, testOptions{Options: Options{MaxPending: pending, MaxConnections: pending}})
	idle := make([]*rawConn, 3*pending)
	for i := range idle {
		c, err := net.Dial("tcp", s.Addr("tcp"))
		if err != nil {
			t.Fatal(err)
		}
		idle[i] = &rawConn{t: t, c: c, br: bufio.NewReader(c)}
		t.Cleanup(func() { _ = c.Close() })
		waitFor(t, "the connection to be tracked", func() bool { return s.pre.Len() == min(i+1, pending) })
	}
	for _, rc := range idle[:2*pending] {
		rc.expectClosed() // the oldest went, in order
	}
	waitFor(t, "the closed ones counted", func() bool { return s.Stats().PendingClosed == 2*pending })
	// A real client logs in while idle sockets keep coming.
	c, _ := pahoClient(t, s.Addr("tcp"), "real", nil)
	if tok := c.Publish("t", 1, false, "x"); !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	if n := s.pre.Len(); n > pending {
		t.Fatalf("%d connections before login, cap %d", n, pending)
	}
}

// TestConnectReservedFlag (issue 11 item 12): the reserved bit of the
// CONNECT flags is a malformed packet: MQTT 5 gets CONNACK 0x81, MQTT
// 3.1.1 (which has no such return code; mochi sent 0x82) the connection
// closed without a CONNACK.
func TestConnectReservedFlag(t *testing.T) {
	s, _ := startServer(t, testOptions{})
	for _, v5 := range []bool{false, true} {
		c, err := net.Dial("tcp", s.Addr("tcp"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		ver := byte(4)
		if v5 {
			ver = 5
		}
		body := append(mqttString("MQTT"), ver, 0x02|0x01, 0, 60)
		if v5 {
			body = append(body, 0)
		}
		body = append(body, mqttString("r")...)
		rc := &rawConn{t: t, c: c, br: bufio.NewReader(c)}
		rc.write(packet(0x10, body))
		p, err := rc.read(guard())
		switch {
		case v5 && (err != nil || p.typ != 2 || len(p.body) < 2 || p.body[1] != 0x81):
			t.Errorf("MQTT 5: want CONNACK 0x81, got type %d body %x err %v", p.typ, p.body, err)
		case !v5 && err == nil:
			t.Errorf("MQTT 3.1.1: want the connection closed, got type %d body %x", p.typ, p.body)
		case !v5:
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("MQTT 3.1.1: connection still open")
			}
		}
	}
	if got := s.Stats().Refused[ingest.ReasonMalformed]; got != 2 {
		t.Errorf("Refused[malformed] %d, want 2", got)
	}
}

// TestHalfPacketWithKeepaliveZero (issue 11 item 12): with keepalive 0
// mochi reads without a deadline, so a half-sent packet held a connection
// forever. A packet must be complete ReadTimeout after its first byte;
// between packets a keepalive-0 client may stay silent.
func TestHalfPacketWithKeepaliveZero(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const timeout = 9 * time.Second
		bubbleServer(t, testOptions{Options: Options{ReadTimeout: timeout}}, func(s *Server, ln *testkit.PipeListener) {
			rc, code := connectOn(t, ln.Dial(), "ka0", connectOpts{zeroKeepalive: true})
			if code != 0 {
				t.Fatalf("CONNACK %#x", code)
			}
			time.Sleep(time.Hour) // idle between packets: fine with keepalive 0
			rc.publish("a", []byte("x"), 1, 1)
			if got := rc.ack(4, 1); got != 0 {
				t.Fatalf("PUBACK %#x after an idle hour", got)
			}
			start := time.Now()
			pub := packet(0x32, append(append(mqttString("a"), 0, 2), "payload"...))
			rc.write(pub[:6])
			time.Sleep(timeout / 2)
			rc.write(pub[6:8]) // trickling does not extend it
			if code := rc.expectClosed(); code != -1 {
				t.Errorf("got DISCONNECT %d", code)
			}
			if d := time.Since(start); d != timeout {
				t.Errorf("closed %v after the packet's first byte, want ReadTimeout (%v)", d, timeout)
			}
			waitFor(t, "the timeout counted", func() bool { return s.Stats().Rejected[ingest.ReasonReadTimeout] == 1 })
		})
	})
}
