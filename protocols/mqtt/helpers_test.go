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
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/ferrymq/ferry/protocols/message"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runDurabilityChild() // never returns
	}
	goleak.VerifyTestMain(m)
}

// recSink records accepted messages. err, when set, decides the answer;
// block, when set, makes Accept wait for it to be closed (or ctx).
type recSink struct {
	mu      sync.Mutex
	msgs    []*message.Message
	calls   int
	err     func(m *message.Message) error
	block   chan struct{}
	entered chan struct{} // receives once per Accept call, if not nil
	ctxErr  chan error    // receives context.Cause when ctx ends a blocked Accept
}

func (s *recSink) Accept(ctx context.Context, m *message.Message) error {
	s.mu.Lock()
	s.calls++
	block, errf, entered := s.block, s.err, s.entered
	s.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			if s.ctxErr != nil {
				s.ctxErr <- context.Cause(ctx)
			}
			return ctx.Err()
		}
	}
	if errf != nil {
		if err := errf(m); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	return nil
}

func (s *recSink) messages() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.msgs...)
}

func (s *recSink) setErr(f func(*message.Message) error) {
	s.mu.Lock()
	s.err = f
	s.mu.Unlock()
}

func (s *recSink) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// waitMessages waits until the sink holds n messages and returns them.
func (s *recSink) waitMessages(t *testing.T, n int) []*message.Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		msgs := s.messages()
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink has %d messages, want %d", len(msgs), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// localRec is a LocalPublisher that records.
type localRec struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (l *localRec) PublishLocal(m *message.Message) {
	l.mu.Lock()
	l.msgs = append(l.msgs, m)
	l.mu.Unlock()
}

func (l *localRec) messages() []*message.Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*message.Message(nil), l.msgs...)
}

// testAuth: users with passwords, optional anonymous access, and topic
// prefixes nobody may publish to or subscribe to.
type testAuth struct {
	users     map[string]string
	anonymous bool
	denyPub   []string
	denySub   []string
}

func (a *testAuth) Authenticate(user, pass string, hasPass bool) error {
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

// startServer starts a server with one TCP listener named "tcp" on a free
// loopback port (unless opts has listeners); missing Sink and Auth default
// to a new recSink and AllowAll. It is closed in Cleanup.
func startServer(t testing.TB, opts Options) (*Server, *recSink) {
	t.Helper()
	sink, _ := opts.Sink.(*recSink)
	if opts.Sink == nil {
		sink = &recSink{}
		opts.Sink = sink
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
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
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
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).
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
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, nil, errors.New("connect timed out")
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
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return ch
}

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
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// --- a minimal hand-written MQTT client, for what paho (3.1.1 only) cannot
// do: MQTT 5 reason codes, raw bad packets, exact timing of acks.

type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
	v5 bool
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
}

// dialRaw connects and sends CONNECT; it returns the connection and the
// CONNACK reason code.
func dialRaw(t *testing.T, addr, id string, o connectOpts) (*rawConn, byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	rc := &rawConn{t: t, c: c, br: bufio.NewReader(c), v5: o.v5}
	var flags byte = 0x02 // clean session / clean start
	ver := byte(4)
	if o.v5 {
		ver = 5
	}
	if o.keepalive == 0 {
		o.keepalive = 30
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
	p, err := rc.read(5 * time.Second)
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if p.typ != 2 || len(p.body) < 2 {
		t.Fatalf("want CONNACK, got type %d body %x", p.typ, p.body)
	}
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

// read reads one packet, waiting at most d.
func (rc *rawConn) read(d time.Duration) (rawPacket, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(d))
	first, err := rc.br.ReadByte()
	if err != nil {
		return rawPacket{}, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := rc.br.ReadByte()
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
	if _, err := io.ReadFull(rc.br, body); err != nil {
		return rawPacket{}, err
	}
	return rawPacket{typ: first >> 4, flags: first & 0x0f, body: body}, nil
}

// ack reads the next packet and expects a PUBACK/PUBREC (typ) for id; it
// returns the reason code (0 when the packet has none).
func (rc *rawConn) ack(typ byte, id uint16) byte {
	rc.t.Helper()
	p, err := rc.read(5 * time.Second)
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
		p, err := rc.read(5 * time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				rc.t.Fatal("connection still open after 5s")
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
	p, err := rc.read(5 * time.Second)
	if err != nil {
		rc.t.Fatalf("read SUBACK: %v", err)
	}
	if p.typ != 9 {
		rc.t.Fatalf("want SUBACK, got type %d", p.typ)
	}
	return p.body[len(p.body)-1]
}
