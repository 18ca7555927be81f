package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/protocols/message"
)

// Upstream opens connections to the upstream broker. The bridge calls
// Connect once per connection attempt and never reuses a Conn after it was
// lost: a fresh connection (and, for paho, a fresh client with an empty
// memory store) each time, so that nothing but the spool remembers what was
// sent.
type Upstream interface {
	Connect(ctx context.Context, cfg ConnConfig) (Conn, error)
}

// ConnConfig is what one connection needs.
type ConnConfig struct {
	Partition int
	ClientID  string
	// Subscriptions are filters to subscribe at QoS 1 once connected; what
	// arrives goes to OnMessage. Connect fails when a subscription is refused.
	Subscriptions []string
	// OnMessage is called in the connection's receive path, in arrival
	// order; it must not block. With PersistentSession it also receives
	// what the broker queued for the session, which may arrive before the
	// subscriptions are acknowledged.
	OnMessage func(Incoming)
	// PersistentSession asks the broker to keep the session (MQTT clean
	// session off / clean start off with a long session expiry): its
	// subscriptions, and the QoS 1 messages that arrive for them while the
	// client is away or were sent but not acknowledged, which the broker
	// sends again after the next connect. Only the downstream connection
	// sets it.
	PersistentSession bool
	// OnAck is called in the connection's receive path with the packet ids
	// of PUBACKs, in arrival order; the slice is reused after it returns. It
	// may take a lock, but must not wait for anything else.
	OnAck func(pids []uint16)
	// OnReject is called in the connection's receive path when the
	// upstream refused one message for what it is, not for the state of
	// the link (an MQTT 5 PUBACK with a reason code >= 0x80): that message
	// goes to the DLQ with reason, and the connection stays up. Same rules
	// as OnAck. Connections that cannot tell never call it.
	OnReject func(pid uint16, reason string)
}

// Incoming is a message received from upstream.
type Incoming struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool
	// Dup and PacketID identify a redelivery: the broker sends an
	// unacknowledged QoS 1 message again, with the DUP flag and the same
	// packet id, after a reconnect (persistent session). PacketID is 0 for
	// QoS 0.
	Dup      bool
	PacketID uint16
	// Ack sends the PUBACK (QoS 1) upstream; call it once, after the message
	// is safe.
	Ack func()
}

// Conn is one live upstream connection. The bridge publishes through it
// with its own packet ids and hears the PUBACKs through ConnConfig.OnAck: no
// token, store entry or goroutine hand-off per message.
type Conn interface {
	// Publish queues a QoS 1 PUBLISH with packet id pid, which is unique
	// among this connection's unacknowledged publishes; payload may be
	// reused once it returned. Queued packets reach the broker in call
	// order, once flushed. An error means the connection
	// is gone and the packet was not sent; the caller must not publish on it
	// again, since a later packet might still go out and overtake this one.
	Publish(pid uint16, topic string, payload []byte) error
	// Flush starts sending what is queued, without waiting for it.
	Flush()
	// Ping queues a PINGREQ behind what is queued (Flush sends it) and
	// returns its Pong, answered when the broker's PINGRESP to it arrived;
	// never if the connection dies first.
	Ping() *Pong
	// Lost is closed when the connection is gone (by error or Close).
	Lost() <-chan struct{}
	// Err tells why the connection was lost; nil after Close.
	Err() error
	// LostAt is when the connection was lost, as seen by its receive path;
	// zero while it is not.
	LostAt() time.Time
	// Close drops the connection without waiting for anything. It must not
	// be called from OnAck or OnMessage.
	Close()
}

// MessageConn is a Conn that carries more of a message than its topic and
// payload (MQTT 5 properties, a JetStream Nats-Msg-Id): the bridge calls
// PublishMessage instead of Publish, with the same contract; m is the
// decoded spooled message, read-only, valid until it returns.
type MessageConn interface {
	Conn
	PublishMessage(pid uint16, topic string, payload []byte, m *message.Message) error
}

// WindowConn is a Conn whose server limits how many publishes may await
// their acknowledgement (MQTT 5 Receive Maximum): the partition's window on
// it is min(Options.Window, InFlightMax()).
type WindowConn interface {
	Conn
	InFlightMax() int
}

// BrokerConn is a Conn that tells which of its upstream's brokers it is
// connected to (the URL as configured, or as the client library writes
// it), for Options.FailbackAfter.
type BrokerConn interface {
	Conn
	Broker() string
}

// QoS0Conn is a Conn that can publish at QoS 0 (see Options.QoS0).
type QoS0Conn interface {
	Conn
	PublishQoS0(topic string, payload []byte, m *message.Message) error
}

// explicitRefusals is a Conn whose upstream refuses a message only
// explicitly (OnReject), never by closing the connection, so that the
// poison heuristics (see judge) have nothing to find in a lost connection.
type explicitRefusals interface {
	RefusesExplicitly() bool
}

// Pong is the answer to one Ping. Conn implementations create it with
// NewPong and call Answer when the PINGRESP arrives.
type Pong struct {
	done chan struct{}
	once sync.Once
	at   time.Time
}

// NewPong returns an unanswered Pong.
func NewPong() *Pong { return &Pong{done: make(chan struct{})} }

// Answer records the arrival of the PINGRESP; later calls do nothing.
func (p *Pong) Answer() {
	p.once.Do(func() {
		p.at = time.Now()
		close(p.done)
	})
}

// Done is closed once answered; a nil Pong is never answered.
func (p *Pong) Done() <-chan struct{} {
	if p == nil {
		return nil
	}
	return p.done
}

// At returns when the PINGRESP arrived, and whether it did.
func (p *Pong) At() (time.Time, bool) {
	if p == nil {
		return time.Time{}, false
	}
	select {
	case <-p.done:
		return p.at, true
	default:
		return time.Time{}, false
	}
}

// Paho is the Upstream of paho.mqtt.golang (MQTT 3.1.1).
type Paho struct {
	Brokers        []string
	TLS            *tls.Config
	Username       string
	Password       string
	KeepAlive      time.Duration
	ConnectTimeout time.Duration
	// WriteTimeout bounds how long paho's own writes (subscriptions,
	// downstream PUBACKs) may wait for its writer; 0: 1s. The writer never
	// blocks on the network (see bufConn).
	WriteTimeout time.Duration
	// Retain: publish a message with its retain flag (Message.Retain)
	// when this says so; nil: never retained.
	Retain func(m *message.Message) bool
}

// Connect opens one connection: auto-reconnect off, CleanSession (unless
// cfg.PersistentSession), a memory store, manual acks for subscriptions. paho owns the connection (CONNECT,
// keepalive, subscriptions and downstream messages); the bridge's publishes
// and their PUBACKs bypass it (see bufConn).
func (u *Paho) Connect(ctx context.Context, cfg ConnConfig) (Conn, error) {
	c := &pahoConn{lossSignal: lossSignal{lost: make(chan struct{})}, retain: u.Retain}
	wt := u.WriteTimeout
	if wt <= 0 {
		wt = time.Second
	}
	hooks := connHooks{
		dead: func(err error) {
			c.setLost(err)
		},
		onAck: cfg.OnAck,
	}
	o := paho.NewClientOptions().
		SetClientID(cfg.ClientID).
		SetUsername(u.Username).
		SetPassword(u.Password).
		SetCleanSession(!cfg.PersistentSession).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetStore(paho.NewMemoryStore()).
		SetKeepAlive(u.KeepAlive).
		SetPingTimeout(u.KeepAlive).
		SetConnectTimeout(u.ConnectTimeout).
		SetWriteTimeout(wt).
		SetAutoAckDisabled(true).
		SetOrderMatters(true).
		SetCustomOpenConnectionFn(func(u *url.URL, o paho.ClientOptions) (net.Conn, error) {
			// paho may try several brokers; the last connection it opened
			// is the one it keeps.
			nc, err := dial(u, o, hooks)
			if err == nil {
				c.nc.Store(nc)
				c.broker.Store(u.String())
			}
			return nc, err
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) { c.setLost(err) })
	if cfg.OnMessage != nil {
		// One handler for every subscription, as paho's default handler and
		// not per filter: a persistent session's queued messages arrive
		// right after CONNACK, before any filter is registered, and paho
		// drops (never acknowledges) a message no handler takes; and a
		// message matching two filters must reach us once.
		on := cfg.OnMessage
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			on(Incoming{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retained: m.Retained(),
				Dup: m.Duplicate(), PacketID: m.MessageID(), Ack: m.Ack})
		})
	}
	if u.TLS != nil {
		o.SetTLSConfig(u.TLS)
	}
	for _, b := range u.Brokers {
		o.AddBroker(b)
	}
	c.client = paho.NewClient(o)
	tok := c.client.Connect()
	if err := waitToken(ctx, tok); err != nil {
		c.client.Disconnect(0)
		// paho reports what its reader saw last ("use of closed network
		// connection" once our flusher closed the socket); the first
		// failure on the connection (a TLS alert, say) is what an
		// operator needs.
		if cause := c.Err(); cause != nil && !strings.Contains(err.Error(), cause.Error()) {
			err = fmt.Errorf("%w (first failure on the connection: %w)", err, cause)
		}
		return nil, fmt.Errorf("connect %v: %w", u.Brokers, err)
	}
	if c.nc.Load() == nil {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("connect %v: no network connection", u.Brokers)
	}
	if len(cfg.Subscriptions) > 0 {
		filters := make(map[string]byte, len(cfg.Subscriptions))
		for _, f := range cfg.Subscriptions {
			filters[f] = 1
		}
		st := c.client.SubscribeMultiple(filters, nil)
		if err := waitToken(ctx, st); err != nil {
			c.client.Disconnect(0)
			return nil, fmt.Errorf("subscribe %v: %w", cfg.Subscriptions, err)
		}
		for f, q := range st.(*paho.SubscribeToken).Result() {
			if q == 0x80 {
				c.client.Disconnect(0)
				return nil, fmt.Errorf("subscribe %q: refused by the broker", f)
			}
		}
	}
	return c, nil
}

func waitToken(ctx context.Context, t paho.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

type pahoConn struct {
	retain func(m *message.Message) bool
	broker atomic.Value // string: URL of the broker paho connected to
	client paho.Client
	nc     atomic.Pointer[bufConn]
	lossSignal
}

func (c *pahoConn) Publish(pid uint16, topic string, payload []byte) error {
	return c.nc.Load().publish(pid, topic, payload, false)
}

// PublishMessage is Publish with the message's retain flag, when Retain
// says so.
func (c *pahoConn) PublishMessage(pid uint16, topic string, payload []byte, m *message.Message) error {
	return c.nc.Load().publish(pid, topic, payload, m.Retain && c.retain != nil && c.retain(m))
}

// PublishQoS0 queues a QoS 0 PUBLISH (routes with upstream_qos 0): no
// packet id, no PUBACK.
func (c *pahoConn) PublishQoS0(topic string, payload []byte, m *message.Message) error {
	return c.nc.Load().publishQoS0(topic, payload, m.Retain && c.retain != nil && c.retain(m))
}

// Broker is the URL of the broker this connection is to.
func (c *pahoConn) Broker() string {
	s, _ := c.broker.Load().(string)
	return s
}

func (c *pahoConn) Flush()      { c.nc.Load().flushNow() }
func (c *pahoConn) Ping() *Pong { return c.nc.Load().ping() }

func (c *pahoConn) Close() {
	c.closeLost()
	// Close the socket here: paho's Disconnect(0) may finish after it
	// returned, and nothing queued on this connection may reach the broker
	// once the bridge resends it on the next one.
	if nc := c.nc.Load(); nc != nil {
		_ = nc.Close()
	}
	c.client.Disconnect(0)
}

// lossSignal is how a connection ends, once: Lost is closed, Err says why
// (nil after Close), LostAt when (the receive path's view). Every
// connection kind embeds one; create it with lost made.
type lossSignal struct {
	once   sync.Once
	lost   chan struct{}
	err    error
	lostAt time.Time
}

// setLost ends the connection with err ("connection lost" if nil); only
// the first end counts.
func (l *lossSignal) setLost(err error) {
	l.once.Do(func() {
		if err == nil {
			err = errors.New("connection lost")
		}
		l.err, l.lostAt = err, time.Now()
		close(l.lost)
	})
}

// closeLost ends the connection by Close: Err stays nil.
func (l *lossSignal) closeLost() { l.once.Do(func() { l.lostAt = time.Now(); close(l.lost) }) }

func (l *lossSignal) Lost() <-chan struct{} { return l.lost }

func (l *lossSignal) LostAt() time.Time {
	select {
	case <-l.lost:
		return l.lostAt
	default:
		return time.Time{}
	}
}

func (l *lossSignal) Err() error {
	select {
	case <-l.lost:
		return l.err
	default:
		return nil
	}
}
