package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/protocols/message"
)

// JetStream is the Upstream of a NATS JetStream stream, through nats.go.
//
// Each message is published to the subject Subject(SubjectPrefix, topic)
// with the header Nats-Msg-Id set to its id, so that the stream's duplicate
// window drops the copies at-least-once delivery causes (a message in
// flight at a cut is published again under the same id). A publish counts
// as delivered only once the stream's PubAck arrived (asynchronous
// publishes, at most Options.Window awaiting theirs); an error PubAck (no
// stream answering, a timeout, a cluster without a leader) ends the
// connection, and what was in flight goes back to the spool and is
// published again on the next one. A message too large for the server
// (its max_payload, or the stream's max_msg_size) goes to the DLQ.
// Content-Type and the message's headers travel as NATS headers.
//
// The connection is nats.go's with its own reconnect off (the bridge
// reconnects, with its backoff, through the servers in order) and
// discovered cluster servers ignored (only the listed ones are used). No
// downstream subscriptions.
type JetStream struct {
	// Servers are nats:// URLs, tried in order.
	Servers        []string
	TLS            *tls.Config
	Username       string
	Password       string
	KeepAlive      time.Duration // NATS ping interval; default 30s
	ConnectTimeout time.Duration
	// SubjectPrefix is prepended to every subject (with a dot); "" none.
	SubjectPrefix string
	// Stream, if set, must exist when connecting, and every publish
	// expects it (Nats-Expected-Stream): a subject no stream or another
	// stream takes is an error, not a silent loss.
	Stream string
	// AckTimeout bounds the wait for one PubAck; default 10s. The bridge's
	// stall timeout bounds it too.
	AckTimeout time.Duration
}

// Connect opens one NATS connection and checks the stream.
func (u *JetStream) Connect(ctx context.Context, cfg ConnConfig) (Conn, error) {
	if len(cfg.Subscriptions) > 0 {
		return nil, errors.New("downstream subscriptions are not supported on a JetStream upstream")
	}
	timeout := u.ConnectTimeout
	if timeout <= 0 {
		timeout = defaultConnTimeout
	}
	ka := u.KeepAlive
	if ka <= 0 {
		ka = defaultKeepAlive
	}
	c := &jsConn{u: u, lossSignal: lossSignal{lost: make(chan struct{})}, sig: make(chan struct{}, 1), onAck: cfg.OnAck, onReject: cfg.OnReject}
	opts := []nats.Option{
		nats.Name(cfg.ClientID),
		nats.NoReconnect(),
		nats.DontRandomize(),
		nats.IgnoreDiscoveredServers(),
		nats.Timeout(timeout),
		nats.PingInterval(ka),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { c.setLost(err) }),
		nats.ClosedHandler(func(*nats.Conn) { c.setLost(nats.ErrConnectionClosed) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { c.setLost(err) }),
	}
	if u.Username != "" || u.Password != "" {
		opts = append(opts, nats.UserInfo(u.Username, u.Password))
	}
	if u.TLS != nil {
		opts = append(opts, nats.Secure(u.TLS))
	}
	nc, err := nats.Connect(strings.Join(u.Servers, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("connect %v: %w", u.Servers, err)
	}
	c.nc = nc
	ackTimeout := u.AckTimeout
	if ackTimeout <= 0 {
		ackTimeout = 10 * time.Second
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(65535), jetstream.WithPublishAsyncTimeout(ackTimeout))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.js = js
	if u.Stream != "" {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		_, err := js.Stream(sctx, u.Stream)
		cancel()
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("stream %q: %w", u.Stream, err)
		}
	}
	c.done = make(chan struct{})
	go c.acks()
	return c, nil
}

type jsConn struct {
	u        *JetStream
	nc       *nats.Conn
	js       jetstream.JetStream
	onAck    func([]uint16)
	onReject func(uint16, string)

	mu    sync.Mutex
	queue []jsPending // publishes awaiting their PubAck, in publish order
	sig   chan struct{}
	done  chan struct{}

	lossSignal
}

type jsPending struct {
	pid    uint16
	f      jetstream.PubAckFuture
	reject string // refused before it was sent: settle as refused
}

// RefusesExplicitly: JetStream refuses a message with an error PubAck, never
// by closing the connection, so a lost connection is no evidence against
// the messages in flight (see explicitRefusals).
func (c *jsConn) RefusesExplicitly() bool { return true }

func (c *jsConn) Publish(pid uint16, topic string, payload []byte) error {
	return c.PublishMessage(pid, topic, payload, nil)
}

func (c *jsConn) PublishMessage(pid uint16, topic string, payload []byte, m *message.Message) error {
	select {
	case <-c.lost:
		return lostErr(c)
	default:
	}
	msg := &nats.Msg{Subject: Subject(c.u.SubjectPrefix, topic), Data: payload, Header: nats.Header{}}
	var opts []jetstream.PublishOpt
	if m != nil {
		opts = append(opts, jetstream.WithMsgID(m.ID))
		if m.ContentType != "" && validHeader(m.ContentType) {
			msg.Header.Set("Content-Type", m.ContentType)
		}
		for _, h := range m.Headers {
			if validHeaderKey(h.Key) && validHeader(h.Value) {
				msg.Header.Add(h.Key, h.Value)
			}
		}
	}
	if c.u.Stream != "" {
		opts = append(opts, jetstream.WithExpectStream(c.u.Stream))
	}
	p := jsPending{pid: pid}
	if max := c.nc.MaxPayload(); int64(len(payload)+len(msg.Subject)) > max {
		p.reject = fmt.Sprintf("too large for the NATS server: %d bytes, max_payload %d", len(payload), max)
	} else {
		// nats.go copies the message into its write buffer before it
		// returns: payload may be reused.
		f, err := c.js.PublishMsgAsync(msg, opts...)
		if err != nil {
			c.setLost(fmt.Errorf("publish: %w", err))
			return err
		}
		p.f = f
	}
	c.mu.Lock()
	c.queue = append(c.queue, p)
	c.mu.Unlock()
	signal(c.sig)
	return nil
}

// acks settles the publishes in order as their PubAcks arrive, batching
// those already answered. It is the connection's receive path for OnAck
// and OnReject.
func (c *jsConn) acks() {
	defer close(c.done)
	var pids []uint16
	for {
		c.mu.Lock()
		q := c.queue
		c.queue = nil
		c.mu.Unlock()
		if len(q) == 0 {
			select {
			case <-c.sig:
				continue
			case <-c.lost:
				return
			}
		}
		for i := 0; i < len(q); i++ {
			p := q[i]
			if p.reject != "" {
				c.flushAcks(&pids)
				c.onReject(p.pid, p.reject)
				continue
			}
			var ok bool
			var err error
			select {
			case <-p.f.Ok():
				ok = true
			case err = <-p.f.Err():
			default:
				// Not answered yet: settle what was, then wait.
				c.flushAcks(&pids)
				select {
				case <-p.f.Ok():
					ok = true
				case err = <-p.f.Err():
				case <-c.lost:
					return
				}
			}
			if ok {
				pids = append(pids, p.pid)
				continue
			}
			c.flushAcks(&pids)
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
				c.onReject(p.pid, "refused by JetStream: "+err.Error())
				continue
			}
			c.setLost(fmt.Errorf("JetStream publish to %q: %w", p.f.Msg().Subject, err))
			c.nc.Close()
			return
		}
		c.flushAcks(&pids)
	}
}

func (c *jsConn) flushAcks(pids *[]uint16) {
	if len(*pids) > 0 {
		c.onAck(*pids)
		*pids = (*pids)[:0]
	}
}

// Broker is the URL of the server this connection is to.
func (c *jsConn) Broker() string { return c.nc.ConnectedUrl() }

func (c *jsConn) Flush() {} // nats.go's flusher writes what is queued at once

// Ping answers once the server's PONG to a PING sent now arrived.
func (c *jsConn) Ping() *Pong {
	pong := NewPong()
	go func() {
		t := c.u.KeepAlive
		if t <= 0 {
			t = defaultKeepAlive
		}
		if c.nc.FlushTimeout(t) == nil {
			pong.Answer()
		}
	}()
	return pong
}

func (c *jsConn) Close() {
	c.closeLost()
	c.nc.Close()
	<-c.done
}

// validHeaderKey: a NATS header name is an HTTP-style token.
func validHeaderKey(k string) bool {
	if k == "" {
		return false
	}
	for i := range len(k) {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// validHeader: no CR or LF (they would end the header).
func validHeader(v string) bool { return !strings.ContainsAny(v, "\r\n") }

// Subject maps an MQTT topic to a NATS subject: each topic level becomes
// one subject token, levels joined by "." instead of "/". Inside a level
// the characters NATS gives a meaning to or does not allow are
// percent-escaped: "%" → %25, "." → %2E, "*" → %2A, ">" → %3E, space → %20,
// and every other ASCII control character and DEL as %XX (upper-case hex);
// an empty level (a leading, trailing or doubled "/") becomes the token "%".
// So "sites/gw1/a.b c" → "sites.gw1.a%2Eb%20c", and the mapping is
// reversible (TopicOf). prefix, when not empty, is prepended with a dot,
// unchanged.
func Subject(prefix, topic string) string {
	var b strings.Builder
	b.Grow(len(prefix) + 1 + len(topic) + 8)
	if prefix != "" {
		b.WriteString(prefix)
		b.WriteByte('.')
	}
	start := 0
	for i := 0; i <= len(topic); i++ {
		if i < len(topic) && topic[i] != '/' {
			continue
		}
		level := topic[start:i]
		if start > 0 {
			b.WriteByte('.')
		}
		if level == "" {
			b.WriteByte('%')
		}
		for j := range len(level) {
			c := level[j]
			if c == '%' || c == '.' || c == '*' || c == '>' || c <= ' ' || c == 0x7f {
				const hex = "0123456789ABCDEF"
				b.WriteByte('%')
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
				continue
			}
			b.WriteByte(c)
		}
		start = i + 1
	}
	return b.String()
}

// TopicOf is the inverse of Subject for a subject without prefix: what
// the cloud side uses to get the device's topic back.
func TopicOf(subject string) (string, error) {
	var b strings.Builder
	for i, tok := range strings.Split(subject, ".") {
		if i > 0 {
			b.WriteByte('/')
		}
		if tok == "%" {
			continue
		}
		for j := 0; j < len(tok); j++ {
			c := tok[j]
			if c != '%' {
				b.WriteByte(c)
				continue
			}
			if j+2 >= len(tok) {
				return "", fmt.Errorf("subject %q: %% without two hex digits", subject)
			}
			v, ok := unhex(tok[j+1], tok[j+2])
			if !ok {
				return "", fmt.Errorf("subject %q: bad escape %q", subject, tok[j:j+3])
			}
			b.WriteByte(v)
			j += 2
		}
	}
	return b.String(), nil
}

func unhex(a, b byte) (byte, bool) {
	h := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'A' && c <= 'F':
			return c - 'A' + 10, true
		}
		return 0, false
	}
	x, ok1 := h(a)
	y, ok2 := h(b)
	return x<<4 | y, ok1 && ok2
}
