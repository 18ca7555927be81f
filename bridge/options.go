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

// Format is the upstream payload format (DESIGN.md §5).
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
	// StallTimeout: messages in flight and no PUBACK for this long means the
	// link is stalled (e.g. a blackholed TCP connection) and is reconnected.
	// Default 10s. Keep it well below the spool's LeaseTimeout.
	StallTimeout time.Duration
	// MaxAttempts: a message leased with this many failed deliveries
	// (spool.Item.Attempts) is dead-lettered instead of published. Default
	// 10, minimum 4 (see doc.go, Poison).
	MaxAttempts int

	MaxRate     float64 // messages per second; 0: unlimited
	MaxByteRate float64 // payload bytes per second; 0: unlimited

	Format Format

	// Downstream are upstream topic filters ({gateway_id} is resolved)
	// subscribed on every connection of partition 0; what arrives is handed
	// to DownstreamSink and PUBACKed upstream only after Accept returned nil.
	Downstream     []string
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
	defaultMaxAttempts  = 10
	// isolateAttempts: a message leased with this many failed deliveries
	// is published stop-and-wait (as is the head of a cut, see
	// partition.heads). A broker that drops a client over a message may
	// also lose the PUBACKs of the messages just before it, so those look
	// as guilty as the poison for a round or two.
	isolateAttempts = 2
	// minMaxAttempts leaves innocent neighbours of a poison message (in
	// flight at up to two cuts, then nacked once more from the leased batch
	// while it is tried alone) below the limit.
	minMaxAttempts = isolateAttempts + 2
)

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
	if o.StallTimeout < 0 || o.KeepAlive < 0 || o.ConnectTimeout < 0 || o.StableAfter < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = defaultMaxAttempts
	}
	if o.MaxAttempts < minMaxAttempts {
		errs = append(errs, fmt.Errorf("max_attempts: must be >= %d (got %d)", minMaxAttempts, o.MaxAttempts))
	}
	if o.MaxRate < 0 || o.MaxByteRate < 0 {
		errs = append(errs, errors.New("max_rate: must not be negative"))
	}
	if o.Format > FormatEnvelope {
		errs = append(errs, fmt.Errorf("format: unknown %d", o.Format))
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
	filters := make([]string, len(o.Downstream))
	for i, f := range o.Downstream {
		filters[i] = Expand(f, o.GatewayID)
		if err := message.ValidateFilter(filters[i]); err != nil {
			errs = append(errs, fmt.Errorf("downstream[%d]: %w", i, err))
		}
	}
	o.Downstream = filters
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
