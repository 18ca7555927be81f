package bridge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
)

// Format is the upstream payload format (docs/design.md §5).
type Format uint8

const (
	// FormatRaw publishes the payload unchanged. The message id cannot
	// travel in MQTT 3.1.1, so the cloud cannot de-duplicate.
	FormatRaw Format = iota
	// FormatEnvelope publishes a JSON envelope carrying the stable message
	// id (see Envelope).
	FormatEnvelope
)

func (f Format) String() string {
	if f == FormatEnvelope {
		return "envelope"
	}
	return "raw"
}

// ParseFormat parses "raw" or "envelope" ("" means raw).
func ParseFormat(s string) (Format, error) {
	switch s {
	case "", "raw":
		return FormatRaw, nil
	case "envelope":
		return FormatEnvelope, nil
	}
	return 0, fmt.Errorf("bridge: unknown format %q: want raw or envelope", s)
}

// Options configure a Bridge. Zero fields take the default written next to
// them.
type Options struct {
	// Brokers are tried in order on each connection attempt:
	// tcp://host:1883, ssl:// (or tls://, mqtts://) host:8883, ws://, wss://.
	// Required unless Upstream is set.
	Brokers []string
	// TLS is used for ssl/tls/mqtts/wss brokers; see LoadTLS.
	TLS      *tls.Config
	Username string
	Password string
	// Protocol is the MQTT version spoken to Brokers: 4 (MQTT 3.1.1,
	// through paho.mqtt.golang; the default) or 5 (MQTT 5, through
	// paho.golang: see MQTT5).
	Protocol int
	// JetStream configures a NATS JetStream upstream: Brokers are then
	// nats:// URLs (see JetStream).
	JetStream JetStreamOptions
	// ClientID may contain {gateway_id}; default "ferry-{gateway_id}".
	// Partition p > 0, or any partition when Partitions > 1, gets "-p<p>"
	// appended.
	ClientID  string
	GatewayID string

	KeepAlive      time.Duration // default 30s
	ConnectTimeout time.Duration // default 10s

	Window     int // messages in flight per connection; default 64, max 65535
	Partitions int // parallel upstream connections; default 1

	BackoffBase time.Duration // first reconnect delay cap; default 1s
	BackoffMax  time.Duration // delay cap; default 60s
	// StableAfter is how long a connection must stay up before the backoff
	// starts from BackoffBase again; default 10s.
	StableAfter time.Duration
	// StallTimeout: messages in flight and no PUBACK for this long, or a
	// PINGREQ unanswered for this long, means the link is stalled (e.g. a
	// blackholed TCP connection) and is reconnected. Default 10s. Keep it
	// well below the spool's LeaseTimeout.
	StallTimeout time.Duration
	// IdlePing: a connection with nothing in flight and no PUBACK or
	// PINGRESP for this long is sent a PINGREQ (answered within
	// StallTimeout, or the link is stalled), so that a link that went dark
	// while idle is found before the next message waits behind it. Default
	// 10s; negative: off (then only paho's keepalive notices). Each ping is
	// 2 bytes each way plus TCP/IP headers, a few hundred bytes a minute.
	IdlePing time.Duration
	// MaxAttempts bounds the evidence against one message before it is
	// dead-lettered: losses of the connection while it was the only message
	// in flight, late enough after its publish that the broker could have
	// answered. A broker that answers the PINGREQ sent just before it and
	// then drops the connection has refused it: two such refusals
	// dead-letter it at once. Link failures with messages in flight count
	// against no message (the spool's Attempts still counts them). Default
	// 10, minimum 4 (see doc.go, Poison).
	MaxAttempts int

	// Retain decides, per message, whether it is published upstream with
	// the retain flag it came with (Message.Retain): the gateway asks the
	// message's route (upstream_retain), at drain time. nil: never
	// retained. JetStream has no retain.
	Retain func(m *message.Message) bool

	// QoS0: publish messages whose route says upstream_qos 0
	// (Message.UpstreamQoS 0) at QoS 0 and ack them in the spool once
	// queued on the connection: deleted once sent, lost if the link drops
	// before they leave. false: every message at QoS 1. JetStream
	// upstreams always wait for the PubAck.
	QoS0 bool

	// FailbackAfter: a connection to any broker but the first of Brokers
	// (a failover list) is ended after this long once the first accepts
	// TCP connections again, so that the next connection goes back to it;
	// what was in flight is resent there (at least once: nothing is lost
	// across the switch). Checked every FailbackAfter. 0: stay until the
	// connection drops (paho's behaviour).
	FailbackAfter time.Duration

	MaxRate     float64 // messages per second; 0: unlimited
	MaxByteRate float64 // payload bytes per second; 0: unlimited

	// OnDelivered, if set, is called with the accept→upstream-ack age
	// (spool.Item.EnqueuedAt to the PUBACK) of every message the broker
	// acknowledged, from the connection's receive path: it must be quick.
	OnDelivered func(age time.Duration)

	Format Format

	// Downstream are the routes of upstream commands ({gateway_id} is
	// resolved in both topics): their remote filters are subscribed at QoS
	// 1 on partition 0's connection, which then uses a persistent session
	// (clean session off, a stable client id), so that the broker keeps
	// what arrives while the gateway is away. Each command gets its local
	// topic and TTL from the first route that matches, and is handed to
	// DownstreamSink; it is PUBACKed upstream only after Accept returned
	// nil. A command no route matches (a subscription left in the
	// persistent session by an older configuration) is acknowledged and
	// counted in Stats.DownstreamUnrouted.
	Downstream     []DownstreamRoute
	DownstreamSink message.Sink

	// Upstream opens connections; nil: paho with the fields above.
	Upstream Upstream

	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now; used for timestamps, not timers
}

const (
	defaultWindow       = 64
	defaultKeepAlive    = 30 * time.Second
	defaultConnTimeout  = 10 * time.Second
	defaultBackoffBase  = time.Second
	defaultBackoffMax   = 60 * time.Second
	defaultStableAfter  = 10 * time.Second
	defaultStallTimeout = 10 * time.Second
	defaultIdlePing     = 10 * time.Second
	defaultMaxAttempts  = 10
	// minMaxAttempts: a strike needs a loss after half a round trip, which
	// a flapping link can also produce now and then; a few of them must not
	// dead-letter an innocent message.
	minMaxAttempts = 4
	// refusalsToDLQ: a broker that read the PINGREQ just before a message
	// and then dropped the connection twice, each time with only that
	// message in flight, will not take it.
	refusalsToDLQ = 2
)

// JetStreamOptions are the keys of a JetStream upstream.
type JetStreamOptions struct {
	SubjectPrefix string // prepended to every subject, with a dot
	Stream        string // must exist, and take every publish; "": any stream that takes the subject
}

// IsJetStream reports whether brokers name NATS servers (nats://).
func IsJetStream(brokers []string) bool {
	return len(brokers) > 0 && strings.HasPrefix(brokers[0], "nats://")
}

// withDefaults returns a copy of o with defaults applied, or every problem
// found.
func (o Options) withDefaults() (Options, error) {
	var errs []error
	if o.Window == 0 {
		o.Window = defaultWindow
	}
	if o.Window < 1 || o.Window > 65535 {
		errs = append(errs, fmt.Errorf("window: must be 1..65535 (got %d)", o.Window))
	}
	if o.Partitions == 0 {
		o.Partitions = 1
	}
	if o.Partitions < 1 || o.Partitions > 64 {
		errs = append(errs, fmt.Errorf("partitions: must be 1..64 (got %d)", o.Partitions))
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = defaultKeepAlive
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = defaultConnTimeout
	}
	if o.BackoffBase == 0 {
		o.BackoffBase = defaultBackoffBase
	}
	if o.BackoffMax == 0 {
		o.BackoffMax = defaultBackoffMax
	}
	if o.BackoffBase < 0 || o.BackoffMax < o.BackoffBase {
		errs = append(errs, fmt.Errorf("backoff: need 0 < base <= max (got %v, %v)", o.BackoffBase, o.BackoffMax))
	}
	if o.StableAfter == 0 {
		o.StableAfter = defaultStableAfter
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = defaultStallTimeout
	}
	if o.IdlePing == 0 {
		o.IdlePing = defaultIdlePing
	}
	if o.StallTimeout < 0 || o.KeepAlive < 0 || o.ConnectTimeout < 0 || o.StableAfter < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = defaultMaxAttempts
	}
	if o.MaxAttempts < minMaxAttempts {
		errs = append(errs, fmt.Errorf("max_attempts: must be >= %d (got %d)", minMaxAttempts, o.MaxAttempts))
	}
	if o.FailbackAfter < 0 {
		errs = append(errs, fmt.Errorf("failback_after: must not be negative (got %v)", o.FailbackAfter))
	}
	if o.MaxRate < 0 || o.MaxByteRate < 0 {
		errs = append(errs, errors.New("max_rate: must not be negative"))
	}
	if o.Format > FormatEnvelope {
		errs = append(errs, fmt.Errorf("format: unknown %d", o.Format))
	}
	switch o.Protocol {
	case 0:
		o.Protocol = 4
	case 4, 5:
	default:
		errs = append(errs, fmt.Errorf("protocol: must be 4 (MQTT 3.1.1) or 5 (MQTT 5) (got %d)", o.Protocol))
	}
	if IsJetStream(o.Brokers) {
		for i, b := range o.Brokers {
			if !strings.HasPrefix(b, "nats://") {
				errs = append(errs, fmt.Errorf("brokers[%d]: %q: NATS and MQTT upstreams cannot be mixed", i, b))
			}
		}
		if len(o.Downstream) > 0 {
			errs = append(errs, errors.New("downstream: not supported on a JetStream upstream"))
		}
	}
	if o.Upstream == nil && len(o.Brokers) == 0 {
		errs = append(errs, errors.New("brokers: at least one is required"))
	}
	if o.ClientID == "" {
		o.ClientID = "ferry-{gateway_id}"
	}
	o.ClientID = Expand(o.ClientID, o.GatewayID)
	if strings.Contains(o.ClientID, "{") {
		errs = append(errs, fmt.Errorf("client_id: unresolved placeholder in %q", o.ClientID))
	}
	routes := make([]DownstreamRoute, len(o.Downstream))
	for i, r := range o.Downstream {
		r.Remote, r.Local = Expand(r.Remote, o.GatewayID), Expand(r.Local, o.GatewayID)
		routes[i] = r
		if field, err := CheckDownstreamRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("downstream[%d].%s: %w", i, field, err))
		}
	}
	o.Downstream = routes
	if len(o.Downstream) > 0 && o.DownstreamSink == nil {
		errs = append(errs, errors.New("downstream: a sink is required with filters"))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("bridge: invalid options: %w", errors.Join(errs...))
	}
	return o, nil
}

// Expand replaces {gateway_id} in s.
func Expand(s, gatewayID string) string {
	return strings.ReplaceAll(s, "{gateway_id}", gatewayID)
}

// clientID returns the client id of partition p.
func (o *Options) clientID(p int) string {
	if o.Partitions == 1 {
		return o.ClientID
	}
	return fmt.Sprintf("%s-p%d", o.ClientID, p)
}

// TLSFiles name the PEM files of an upstream TLS setup.
type TLSFiles struct {
	CAFile     string // trusted CAs; empty: the system pool
	CertFile   string // client certificate (mutual TLS, e.g. AWS IoT Core)
	KeyFile    string
	ServerName string // empty: taken from the broker URL
}

// LoadTLS builds a *tls.Config (TLS 1.2 or newer) from PEM files.
func LoadTLS(f TLSFiles) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bridge: tls: read ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bridge: tls: no certificate in ca file %s", f.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, errors.New("bridge: tls: cert file and key file go together")
	}
	if f.CertFile != "" {
		c, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("bridge: tls: load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}
