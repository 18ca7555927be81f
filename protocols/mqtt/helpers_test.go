package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// guard is the hang guard of every wait in these tests: testkit's default
// bound, scaled by FERRY_TEST_TIMEOUT_SCALE. Reaching it means a hang.
func guard() time.Duration { return testkit.Timeout(testkit.DefaultWait) }

// testKeepalive is the MQTT keepalive of the test clients (seconds): long
// enough that neither mochi's keepalive deadline (1.5 × it) nor the server's
// cap on an Accept wait (3/4 of it) can fall inside a hang guard, so that a
// loaded machine never ends a connection or an Accept that a test holds open.
func testKeepalive() uint16 { return uint16(min(40000, max(3600, 4*guard().Seconds()))) }

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runDurabilityChild() // never returns
	}
	if os.Getenv(stateChildEnv) != "" {
		runStateChild() // never returns
	}
	goleak.VerifyTestMain(m)
}

// testAuth: users with passwords, optional anonymous access, and topic
// prefixes nobody may publish to or subscribe to.
type testAuth struct {
	users     map[string]string
	anonymous bool
	denyPub   []string
	denySub   []string
}

func (a *testAuth) Authenticate(_ context.Context, l message.Login) error {
	user, pass, hasPass := l.Username, l.Password, l.HasPassword
	if l.Certified {
		if _, ok := a.users[user]; ok {
			return nil
		}
		return fmt.Errorf("%w: unknown certificate user", message.ErrNotAuthorized)
	}
	if user == "" && !hasPass {
		if a.anonymous {
			return nil
		}
		return fmt.Errorf("%w: anonymous access is off", message.ErrNotAuthorized)
	}
	if want, ok := a.users[user]; ok && hasPass && want == pass {
		return nil
	}
	return fmt.Errorf("%w: bad username or password", message.ErrNotAuthorized)
}

func (a *testAuth) CanPublish(_, _, topic string) bool { return !hasAnyPrefix(topic, a.denyPub) }

func (a *testAuth) CanSubscribe(_, _, filter string) bool { return !hasAnyPrefix(filter, a.denySub) }

func hasAnyPrefix(s string, ps []string) bool {
	for _, p := range ps {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// routerFunc adapts a function to message.Router.
type routerFunc func(topic string) message.Route

func (f routerFunc) Route(topic string) message.Route { return f(topic) }

func testLogger(testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// testOptions are the server's Options plus what a test wires into the
// ingest core the server gets (Options.Ingest is built from them).
type testOptions struct {
	Options
	Sink   message.Sink           // nil: a new recsink.Sink
	Router message.Router         // nil: every topic spooled
	Local  message.LocalPublisher // also receives the fan-out, besides the server itself
	LinkUp func(topic string) bool
}

// newCore builds the ingest core of a test around sink.
func newCore(t testing.TB, o testOptions) *ingest.Core {
	t.Helper()
	core, err := ingest.New(ingest.Options{Sink: o.Sink, Router: o.Router, LinkUp: o.LinkUp, Timeout: guard(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if o.Local != nil {
		core.AddLocal(o.Local)
	}
	t.Cleanup(core.Close)
	return core
}

// startServer starts a server with one TCP listener named "tcp" on a free
// loopback port (unless opts has listeners); missing Sink and Auth default
// to a new recsink.Sink and AllowAll, missing AcceptTimeout and ConnectTimeout to
// the hang guard (the defaults, 5s and 10s, are short enough for a loaded
// machine to reach while a test holds an Accept open or dials). It is closed
// in Cleanup.
func startServer(t testing.TB, to testOptions) (*Server, *recsink.Sink) {
	t.Helper()
	sink, _ := to.Sink.(*recsink.Sink)
	if to.Sink == nil {
		sink = &recsink.Sink{}
		to.Sink = sink
	}
	opts := to.Options
	if opts.Ingest == nil {
		opts.Ingest = newCore(t, to)
	}
	if opts.Auth == nil {
		opts.Auth = message.AllowAll{}
	}
	if len(opts.Listeners) == 0 {
		opts.Listeners = []Listener{{Name: "tcp", Kind: KindTCP, Address: "127.0.0.1:0"}}
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.AcceptTimeout == 0 {
		opts.AcceptTimeout = guard()
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = guard()
	}
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard())
		defer cancel()
		if err := s.Close(ctx); err != nil {
			// A hang: every goroutine's stack says who holds mochi's Close.
			buf := make([]byte, 4<<20)
			t.Errorf("Close: %v\ngoroutines:\n%s", err, buf[:runtime.Stack(buf, true)])
		}
	})
	return s, sink
}

// pahoClient connects a paho (MQTT 3.1.1) client to addr ("scheme://host:port"
// or "host:port" for TCP). lost receives the error when the connection is
// lost. Disconnected in Cleanup.
func pahoClient(t *testing.T, addr, id string, tweak func(*paho.ClientOptions)) (c paho.Client, lost chan error) {
	t.Helper()
	c, lost, err := pahoConnect(addr, id, tweak)
	if err != nil {
		t.Fatalf("paho connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, lost
}

func pahoConnect(addr, id string, tweak func(*paho.ClientOptions)) (paho.Client, chan error, error) {
	if !strings.Contains(addr, "://") {
		addr = "tcp://" + addr
	}
	lost := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker(addr).SetClientID(id).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).
		SetConnectTimeout(guard()).SetKeepAlive(time.Duration(testKeepalive()) * time.Second).
		SetProtocolVersion(4). // no silent fallback to 3.1 after a refusal

		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if tweak != nil {
		tweak(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(guard()) {
		return nil, nil, errors.New("hang guard: connect not answered")
	}
	if err := tok.Error(); err != nil {
		return nil, nil, err
	}
	return c, lost, nil
}

// subscribe subscribes c to filter and returns a channel of received
// messages.
func subscribe(t *testing.T, c paho.Client, filter string, qos byte) chan paho.Message {
	t.Helper()
	ch := make(chan paho.Message, 100)
	tok := c.Subscribe(filter, qos, func(_ paho.Client, m paho.Message) { ch <- m })
	if !tok.WaitTimeout(guard()) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return ch
}

// expectNone checks that nothing arrives on ch for d. d only lets a wrong
// delivery show up: a slow machine can make the check weaker, never fail it.
func expectNone(t *testing.T, ch chan paho.Message, d time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message on %s: %q", m.Topic(), m.Payload())
	case <-time.After(d):
	}
}

func expectMessage(t *testing.T, ch chan paho.Message) paho.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(guard()):
		t.Fatalf("hang guard: no message after %v", guard())
		return nil
	}
}

// expectLost waits (hang guard) for the connection-lost report of a paho
// client.
func expectLost(t *testing.T, lost chan error, what string) {
	t.Helper()
	select {
	case err := <-lost:
		t.Logf("disconnected: %v", err)
	case <-time.After(guard()):
		t.Fatalf("hang guard: %s after %v", what, guard())
	}
}

// expectNotAcked checks that tok, a QoS 1/2 publish whose connection is or
// is being lost, ended with an error rather than an ack. paho (clean
// session, no reconnect) fails every pending token when it notices the
// loss, before it reports the loss, so the wait is a hang guard only.
func expectNotAcked(t *testing.T, tok paho.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(guard()) {
		t.Fatalf("hang guard: %s: token neither acked nor failed after %v", what, guard())
	}
	if tok.Error() == nil {
		t.Fatalf("%s was acknowledged", what)
	}
}

// waitFor waits for cond with the hang guard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Wait(t, what, cond)
}

// --- a minimal hand-written MQTT client, for what paho (3.1.1 only) cannot
// do: MQTT 5 reason codes, raw bad packets, exact timing of acks.

type rawConn struct {
	t       *testing.T
	c       net.Conn
	br      *bufio.Reader
	v5      bool
	connack []byte // the CONNACK's body
}

type rawPacket struct {
	typ   byte // high nibble of the first byte
	flags byte
	body  []byte
}

func mqttString(s string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(s)))
	return append(b, s...)
}

func varint(n int) []byte {
	var b []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func packet(first byte, body []byte) []byte {
	return append(append([]byte{first}, varint(len(body))...), body...)
}

type connectOpts struct {
	v5                 bool
	user, pass         string
	willTopic, willMsg string
	keepalive          uint16
	zeroKeepalive      bool // keepalive 0 (keepalive 0 means testKeepalive)
}

// dialRaw connects and sends CONNECT; it returns the connection and the
// CONNACK reason code.
func dialRaw(t *testing.T, addr, id string, o connectOpts) (*rawConn, byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, guard())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return connectOn(t, c, id, o)
}

// connectOn sends CONNECT on c (a socket or a pipe) and returns the client
// and the CONNACK reason code. c is closed in Cleanup.
func connectOn(t *testing.T, c net.Conn, id string, o connectOpts) (*rawConn, byte) {
	t.Helper()
	t.Cleanup(func() { _ = c.Close() })
	rc := &rawConn{t: t, c: c, br: bufio.NewReader(c), v5: o.v5}
	var flags byte = 0x02 // clean session / clean start
	ver := byte(4)
	if o.v5 {
		ver = 5
	}
	if o.keepalive == 0 && !o.zeroKeepalive {
		o.keepalive = testKeepalive()
	}
	body := append(mqttString("MQTT"), ver, 0, 0, 0)
	payload := mqttString(id)
	if o.willTopic != "" {
		flags |= 0x04 | 0x08 // will, will QoS 1
		if o.v5 {
			payload = append(payload, 0) // will properties
		}
		payload = append(payload, mqttString(o.willTopic)...)
		payload = append(payload, mqttString(o.willMsg)...)
	}
	if o.user != "" {
		flags |= 0x80
		payload = append(payload, mqttString(o.user)...)
	}
	if o.pass != "" {
		flags |= 0x40
		payload = append(payload, mqttString(o.pass)...)
	}
	body[7] = flags
	binary.BigEndian.PutUint16(body[8:], o.keepalive)
	if o.v5 {
		body = append(body, 0) // no properties
	}
	rc.write(packet(0x10, append(body, payload...)))
	p, err := rc.read(guard())
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if p.typ != 2 || len(p.body) < 2 {
		t.Fatalf("want CONNACK, got type %d body %x", p.typ, p.body)
	}
	rc.connack = p.body
	return rc, p.body[1]
}

func (rc *rawConn) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// publish sends a PUBLISH; props are MQTT 5 user properties (key, value
// pairs).
func (rc *rawConn) publish(topic string, payload []byte, qos byte, id uint16, props ...string) {
	rc.t.Helper()
	body := mqttString(topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	if rc.v5 {
		var pr []byte
		for i := 0; i+1 < len(props); i += 2 {
			pr = append(pr, 0x26)
			pr = append(pr, mqttString(props[i])...)
			pr = append(pr, mqttString(props[i+1])...)
		}
		body = append(body, varint(len(pr))...)
		body = append(body, pr...)
	}
	rc.write(packet(0x30|qos<<1, append(body, payload...)))
}

// read reads one packet, waiting at most d (a hang guard, or the short wait
// of a check that nothing is sent).
func (rc *rawConn) read(d time.Duration) (rawPacket, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(d))
	return readPacket(rc.br)
}

// readPacket reads one MQTT packet.
func readPacket(br *bufio.Reader) (rawPacket, error) {
	first, err := br.ReadByte()
	if err != nil {
		return rawPacket{}, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := br.ReadByte()
		if err != nil {
			return rawPacket{}, err
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return rawPacket{}, errors.New("bad remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return rawPacket{}, err
	}
	return rawPacket{typ: first >> 4, flags: first & 0x0f, body: body}, nil
}

// ack reads the next packet and expects a PUBACK/PUBREC (typ) for id; it
// returns the reason code (0 when the packet has none).
func (rc *rawConn) ack(typ byte, id uint16) byte {
	rc.t.Helper()
	p, err := rc.read(guard())
	if err != nil {
		rc.t.Fatalf("read ack: %v", err)
	}
	if p.typ != typ || len(p.body) < 2 || binary.BigEndian.Uint16(p.body) != id {
		rc.t.Fatalf("want packet type %d for id %d, got type %d body %x", typ, id, p.typ, p.body)
	}
	if len(p.body) > 2 {
		return p.body[2]
	}
	return 0
}

// expectClosed expects the server to close the connection, after at most a
// DISCONNECT whose reason code it returns (-1: closed without DISCONNECT).
func (rc *rawConn) expectClosed() int {
	rc.t.Helper()
	code := -1
	for {
		p, err := rc.read(guard())
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				rc.t.Fatalf("hang guard: connection still open after %v", guard())
			}
			return code
		}
		switch p.typ {
		case 14: // DISCONNECT
			code = 0
			if len(p.body) > 0 {
				code = int(p.body[0])
			}
		default:
			rc.t.Fatalf("want the connection closed, got packet type %d body %x", p.typ, p.body)
		}
	}
}

// userProps extracts MQTT 5 user properties from a PUBLISH body (qos 0).
func userProps(body []byte) (topic string, props map[string]string, payload []byte) {
	tl := int(binary.BigEndian.Uint16(body))
	topic = string(body[2 : 2+tl])
	off := 2 + tl
	n, mul, i := 0, 1, off
	for ; ; i++ {
		n += int(body[i]&0x7f) * mul
		mul *= 128
		if body[i]&0x80 == 0 {
			break
		}
	}
	pr := body[i+1 : i+1+n]
	payload = body[i+1+n:]
	props = map[string]string{}
	for len(pr) > 0 {
		id := pr[0]
		pr = pr[1:]
		rd := func() string {
			l := int(binary.BigEndian.Uint16(pr))
			s := string(pr[2 : 2+l])
			pr = pr[2+l:]
			return s
		}
		switch id {
		case 0x26:
			k := rd()
			props[k] = rd()
		case 0x03:
			props["content-type"] = rd()
		case 0x02: // message expiry
			pr = pr[4:]
		default:
			return topic, props, payload
		}
	}
	return topic, props, bytes.Clone(payload)
}

// subscribe sends SUBSCRIBE and returns the SUBACK reason code.
func (rc *rawConn) subscribe(filter string, qos byte, id uint16) byte {
	rc.t.Helper()
	body := binary.BigEndian.AppendUint16(nil, id)
	if rc.v5 {
		body = append(body, 0)
	}
	body = append(body, mqttString(filter)...)
	body = append(body, qos)
	rc.write(packet(0x82, body))
	p, err := rc.read(guard())
	if err != nil {
		rc.t.Fatalf("read SUBACK: %v", err)
	}
	if p.typ != 9 {
		rc.t.Fatalf("want SUBACK, got type %d", p.typ)
	}
	return p.body[len(p.body)-1]
}
