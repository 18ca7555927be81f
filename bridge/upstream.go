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
	// order; it must not block.
	OnMessage func(Incoming)
}

// Incoming is a message received from upstream.
type Incoming struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool
	// Ack sends the PUBACK (QoS 1) upstream; call it once, after the message
	// is safe.
	Ack func()
}

// Conn is one live upstream connection.
type Conn interface {
	// Publish sends a QoS 1 message. Publishes reach the broker in call
	// order. The token completes when the broker acknowledged it, or with an
	// error.
	Publish(topic string, payload []byte) Token
	// Lost is closed when the connection is gone (by error or Close).
	Lost() <-chan struct{}
	// Err tells why the connection was lost; nil after Close.
	Err() error
	// Close drops the connection without waiting for anything.
	Close()
}

// Token tracks one publish. *paho.PublishToken satisfies it.
type Token interface {
	Done() <-chan struct{}
	Error() error
}

// Paho is the Upstream of paho.mqtt.golang (MQTT 3.1.1).
type Paho struct {
	Brokers        []string
	TLS            *tls.Config
	Username       string
	Password       string
	KeepAlive      time.Duration
	ConnectTimeout time.Duration
	// WriteTimeout bounds how long Publish may block handing a packet to
	// paho's writer; 0: 1s. The writer never blocks on the network (see
	// bufConn), so only a Publish racing with a dying connection waits.
	WriteTimeout time.Duration
}

// Connect opens one connection: auto-reconnect off, CleanSession, a memory
// store, manual acks for subscriptions.
func (u *Paho) Connect(ctx context.Context, cfg ConnConfig) (Conn, error) {
	c := &pahoConn{lost: make(chan struct{})}
	wt := u.WriteTimeout
	if wt <= 0 {
		wt = time.Second
	}
	o := paho.NewClientOptions().
		SetClientID(cfg.ClientID).
		SetUsername(u.Username).
		SetPassword(u.Password).
		SetCleanSession(true).
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
			return dial(u, o, func(err error) {
				c.dead.Store(true)
				c.setLost(err)
			})
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) { c.setLost(err) })
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
	if len(cfg.Subscriptions) > 0 {
		filters := make(map[string]byte, len(cfg.Subscriptions))
		for _, f := range cfg.Subscriptions {
			filters[f] = 1
		}
		on := cfg.OnMessage
		st := c.client.SubscribeMultiple(filters, func(_ paho.Client, m paho.Message) {
			on(Incoming{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retained: m.Retained(), Ack: m.Ack})
		})
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
	client paho.Client
	dead   atomic.Bool // the network connection failed or closed
	once   sync.Once
	lost   chan struct{}
	err    error
}

func (c *pahoConn) setLost(err error) {
	c.once.Do(func() {
		if err == nil {
			err = errors.New("connection lost")
		}
		c.err = err
		close(c.lost)
	})
}

func (c *pahoConn) Publish(topic string, payload []byte) Token {
	if c.dead.Load() {
		return errToken{errors.New("connection lost")}
	}
	return c.client.Publish(topic, 1, false, payload)
}

type errToken struct{ err error }

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (t errToken) Done() <-chan struct{} { return closedChan }
func (t errToken) Error() error          { return t.err }

func (c *pahoConn) Lost() <-chan struct{} { return c.lost }

func (c *pahoConn) Err() error {
	select {
	case <-c.lost:
		return c.err
	default:
		return nil
	}
}

func (c *pahoConn) Close() {
	c.once.Do(func() { close(c.lost) })
	c.client.Disconnect(0)
}
