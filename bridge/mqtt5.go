package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/protocols/message"
)

// IDProperty is the MQTT 5 user property that carries Message.ID upstream
// on an MQTT 5 upstream, first among the user properties, in both formats:
// with FormatRaw it is what lets the cloud drop the duplicates that
// at-least-once delivery causes.
const IDProperty = "ferry-msg-id"

// MQTT5 is the Upstream of an MQTT 5 broker, through paho.golang (the
// maintained Eclipse MQTT 5 client; paho.mqtt.golang speaks 3.1.1 only).
//
// As with Paho, paho.golang owns the connection (CONNECT, keepalive,
// subscriptions and downstream messages) and the bridge's publishes bypass
// it: they are encoded with paho.golang's packets package straight into the
// send buffer under the bridge's packet ids, and their PUBACKs are taken out
// of the received stream (see bufConn). What MQTT 5 adds:
//   - every message carries its id as the user property IDProperty, then
//     the device's user properties (MQTT 5 devices; STOMP headers), its
//     content type, payload format indicator, response topic and
//     correlation data where the spool kept them, and its expiry as the
//     remaining lifetime (Message Expiry Interval, rounded up to a second);
//   - a PUBACK with a reason code of 0x80 or more refuses that one message
//     (not authorized, topic name invalid, quota exceeded, payload format
//     invalid …): it goes to the DLQ with the code, the link stays up;
//   - the server's Receive Maximum bounds the window;
//   - topic aliases, when the server offers them (Topic Alias Maximum): the
//     first that many topics of a connection get one, and later publishes
//     on them send the alias instead of the topic;
//   - retain is sent as the message has it when the server supports it
//     (Retain Available), when Retain says so.
type MQTT5 struct {
	// Brokers are tried in order on each connection attempt, as paho's
	// server list: tcp:// (mqtt://), ssl:// (tls://, mqtts://), ws://, wss://.
	Brokers        []string
	TLS            *tls.Config
	Username       string
	Password       string
	KeepAlive      time.Duration
	ConnectTimeout time.Duration
	// Retain: publish a message with the retain flag it came with
	// (Message.Retain), when the server supports retained messages. It is a
	// function so that the gateway can decide per route; nil: never
	// retained.
	Retain func(m *message.Message) bool
	// Envelope: the bridge publishes FormatEnvelope payloads (then the
	// content type is application/json, with payload format indicator 1;
	// else the message's own).
	Envelope bool
	// Now is the clock for the expiry's remaining time; nil: time.Now.
	Now func() time.Time
}

// Connect opens one connection: CleanStart, no session expiry, manual acks
// for subscriptions, paho.golang's default pinger.
func (u *MQTT5) Connect(ctx context.Context, cfg ConnConfig) (Conn, error) {
	var errs []error
	for _, b := range u.Brokers {
		c, err := u.connect(ctx, b, cfg)
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("connect: no broker")
	}
	return nil, fmt.Errorf("connect (MQTT 5): %w", errors.Join(errs...))
}

func (u *MQTT5) connect(ctx context.Context, broker string, cfg ConnConfig) (*mqtt5Conn, error) {
	uri, err := url.Parse(broker)
	if err != nil {
		return nil, err
	}
	c := &mqtt5Conn{u: u, broker: broker, lossSignal: lossSignal{lost: make(chan struct{})}, aliases: map[string]uint16{}}
	onReject := cfg.OnReject
	hooks := connHooks{
		dead:  c.setLost,
		onAck: cfg.OnAck,
		onReject: func(pid uint16, code byte) {
			if onReject != nil {
				onReject(pid, fmt.Sprintf("refused by the upstream broker: PUBACK reason code 0x%02x (%s)", code,
					(&packets.Puback{ReasonCode: code}).Reason()))
			}
		},
	}
	timeout := u.ConnectTimeout
	if timeout <= 0 {
		timeout = defaultConnTimeout
	}
	do := paho.NewClientOptions().SetConnectTimeout(timeout)
	if u.TLS != nil {
		do.SetTLSConfig(u.TLS)
	}
	nc, err := dial(uri, *do, hooks)
	if err != nil {
		return nil, err
	}
	c.nc = nc
	lc := &lockedConn{bufConn: nc}
	var on func(Incoming)
	if len(cfg.Subscriptions) > 0 {
		on = cfg.OnMessage
	}
	var client *paho5.Client
	client = paho5.NewClient(paho5.ClientConfig{
		ClientID:                   cfg.ClientID,
		Conn:                       lc,
		PacketTimeout:              timeout,
		EnableManualAcknowledgment: true,
		OnClientError:              c.setLost,
		OnServerDisconnect: func(d *paho5.Disconnect) {
			reason := ""
			if d.Properties != nil && d.Properties.ReasonString != "" {
				reason = ": " + d.Properties.ReasonString
			}
			c.setLost(fmt.Errorf("the broker sent DISCONNECT, reason code 0x%02x (%s)%s", d.ReasonCode,
				(&packets.Disconnect{ReasonCode: d.ReasonCode}).Reason(), reason))
		},
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			if on == nil {
				return false, nil
			}
			pb := pr.Packet
			on(Incoming{Topic: pb.Topic, Payload: pb.Payload, QoS: pb.QoS, Retained: pb.Retain,
				Ack: func() { _ = client.Ack(pb) }})
			return true, nil
		}},
	})
	c.client = client
	ka := u.KeepAlive
	if ka <= 0 {
		ka = defaultKeepAlive
	}
	cp := &paho5.Connect{
		ClientID:     cfg.ClientID,
		KeepAlive:    uint16(min(ka/time.Second, 65535)),
		CleanStart:   true,
		Username:     u.Username,
		UsernameFlag: u.Username != "",
		Password:     []byte(u.Password),
		PasswordFlag: u.Password != "",
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	ca, err := client.Connect(cctx, cp)
	cancel()
	if err != nil {
		_ = nc.Close()
		if cause := c.Err(); cause != nil && !errors.Is(cause, err) {
			err = fmt.Errorf("%w (first failure on the connection: %w)", err, cause)
		}
		return nil, err
	}
	c.inFlightMax, c.retainOK = 65535, true
	if p := ca.Properties; p != nil {
		if p.ReceiveMaximum != nil && *p.ReceiveMaximum > 0 {
			c.inFlightMax = int(*p.ReceiveMaximum)
		}
		if p.TopicAliasMaximum != nil {
			c.aliasMax = *p.TopicAliasMaximum
		}
		if p.MaximumQoS != nil && *p.MaximumQoS == 0 {
			c.Close()
			return nil, errors.New("the broker accepts QoS 0 only (Maximum QoS 0): at-least-once delivery needs QoS 1")
		}
		c.retainOK = p.RetainAvailable
	}
	if len(cfg.Subscriptions) > 0 {
		s := &paho5.Subscribe{}
		for _, f := range cfg.Subscriptions {
			s.Subscriptions = append(s.Subscriptions, paho5.SubscribeOptions{Topic: f, QoS: 1})
		}
		sctx, cancel := context.WithTimeout(ctx, timeout)
		sa, err := client.Subscribe(sctx, s)
		cancel()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("subscribe %v: %w", cfg.Subscriptions, err)
		}
		for i, r := range sa.Reasons {
			if r >= 0x80 && i < len(cfg.Subscriptions) {
				c.Close()
				return nil, fmt.Errorf("subscribe %q: refused by the broker, reason code 0x%02x (%s)", cfg.Subscriptions[i], r,
					(&packets.Suback{Reasons: []byte{r}}).Reason(0))
			}
		}
	}
	return c, nil
}

// lockedConn is the bufConn as paho.golang sees it. paho.golang writes a
// packet in several Write calls (fixed header, length, body) while it holds
// the connection's sync.Locker; lockedConn collects them and queues the
// packet with one bufConn.Write at Unlock, so that the bridge's publishes
// never land inside one of paho's packets and bufConn still sees a PINGREQ
// as one two-byte write. paho.golang writes only through
// packets.ControlPacket.WriteTo, which takes the lock.
type lockedConn struct {
	*bufConn
	mu   sync.Mutex
	pend []byte
	err  error
}

func (l *lockedConn) Lock() {
	l.mu.Lock()
	l.pend, l.err = l.pend[:0], nil
}

func (l *lockedConn) Unlock() {
	if len(l.pend) > 0 && l.err == nil {
		_, _ = l.bufConn.Write(l.pend) // an error also reaches dead
	}
	l.mu.Unlock()
}

// Write collects one part of a packet (the caller holds the lock).
func (l *lockedConn) Write(p []byte) (int, error) {
	l.bufConn.mu.Lock()
	err := l.usable()
	l.bufConn.mu.Unlock()
	if err != nil {
		l.err = err
		return 0, err
	}
	l.pend = append(l.pend, p...)
	return len(p), nil
}

type mqtt5Conn struct {
	u      *MQTT5
	broker string
	client *paho5.Client
	nc     *bufConn

	inFlightMax int
	retainOK    bool
	aliasMax    uint16
	amu         sync.Mutex
	aliases     map[string]uint16

	lossSignal
	closed atomic.Bool
}

// Broker is the URL of the broker this connection is to.
func (c *mqtt5Conn) Broker() string { return c.broker }

func (c *mqtt5Conn) InFlightMax() int { return c.inFlightMax }

func (c *mqtt5Conn) Publish(pid uint16, topic string, payload []byte) error {
	return c.PublishMessage(pid, topic, payload, nil)
}

// appendWriter is an io.Writer that appends to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// PublishQoS0 queues a QoS 0 PUBLISH (routes with upstream_qos 0).
func (c *mqtt5Conn) PublishQoS0(topic string, payload []byte, m *message.Message) error {
	return c.publish(&packets.Publish{QoS: 0, Topic: topic, Payload: payload, Properties: &packets.Properties{}}, m)
}

func (c *mqtt5Conn) PublishMessage(pid uint16, topic string, payload []byte, m *message.Message) error {
	return c.publish(&packets.Publish{QoS: 1, PacketID: pid, Topic: topic, Payload: payload, Properties: &packets.Properties{}}, m)
}

func (c *mqtt5Conn) publish(pb *packets.Publish, m *message.Message) error {
	topic := pb.Topic
	if m != nil {
		c.properties(pb, m)
	}
	if c.aliasMax > 0 {
		c.amu.Lock()
		a, ok := c.aliases[topic]
		if ok {
			pb.Topic = ""
		} else if len(c.aliases) < int(c.aliasMax) {
			a = uint16(len(c.aliases) + 1)
			c.aliases[topic] = a
			ok = true
		}
		c.amu.Unlock()
		if ok {
			pb.Properties.TopicAlias = &a
		}
	}
	return c.nc.queue(func(dst []byte) []byte {
		w := appendWriter{b: dst}
		_, _ = pb.WriteTo(&w) // appendWriter never fails
		return w.b
	})
}

// properties sets what MQTT 5 carries of m on pb.
func (c *mqtt5Conn) properties(pb *packets.Publish, m *message.Message) {
	p := pb.Properties
	p.User = make([]packets.User, 0, 1+len(m.Headers))
	p.User = append(p.User, packets.User{Key: IDProperty, Value: m.ID})
	for _, h := range m.Headers {
		p.User = append(p.User, packets.User{Key: h.Key, Value: h.Value})
	}
	if c.u.Envelope {
		// The payload is the envelope's JSON text, whatever the device sent.
		p.ContentType = "application/json"
		one := byte(1)
		p.PayloadFormat = &one
	} else {
		p.ContentType = m.ContentType
		if m.PayloadUTF8 {
			one := byte(1)
			p.PayloadFormat = &one
		}
	}
	p.ResponseTopic, p.CorrelationData = m.ResponseTopic, m.CorrelationData
	if !m.ExpiresAt.IsZero() {
		now := time.Now
		if c.u.Now != nil {
			now = c.u.Now
		}
		left := m.ExpiresAt.Sub(now())
		secs := uint32(1)
		if left > time.Second {
			secs = uint32(min((left+time.Second-1)/time.Second, 1<<32-1))
		}
		p.MessageExpiry = &secs
	}
	if m.Retain && c.retainOK && c.u.Retain != nil && c.u.Retain(m) {
		pb.Retain = true
	}
}

func (c *mqtt5Conn) Flush()      { c.nc.flushNow() }
func (c *mqtt5Conn) Ping() *Pong { return c.nc.ping() }

// Close closes the socket first (nothing queued may reach the broker once
// the bridge resends it on the next connection), then ends the client.
func (c *mqtt5Conn) Close() {
	if !c.closed.CompareAndSwap(false, true) {
		return
	}
	c.closeLost()
	_ = c.nc.Close()
	_ = c.client.Disconnect(&paho5.Disconnect{}) // waits for paho.golang's goroutines
}
