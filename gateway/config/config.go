package config

import (
	"io"
	"log/slog"
)

// Config is the whole gateway configuration: one YAML file with snake_case
// keys. Load reads it, applies the defaults of Default to every key the file
// leaves out, and validates it. configs/ferry.example.yaml documents every
// key with its default; docs/configuration.md is the reference.
type Config struct {
	// GatewayID names this gateway upstream ({gateway_id} in templates).
	// Required: letters, digits, '-', '_', '.'.
	GatewayID string       `yaml:"gateway_id"`
	Log       LogConfig    `yaml:"log"`
	Listeners Listeners    `yaml:"listeners"`
	Limits    LimitsConfig `yaml:"limits"`
	// AllowAnonymous lets clients in without a username. Required to be
	// set explicitly when a listener is not on loopback and no users are
	// configured.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// Anonymous are the rights of anonymous clients (when allowed).
	Anonymous ACL `yaml:"anonymous"`
	// Users may log in with a bcrypt password hash; UsersFile names a YAML
	// file with a `users:` list instead (re-read on reload). Not both.
	Users     []User        `yaml:"users"`
	UsersFile string        `yaml:"users_file"`
	Spool     SpoolConfig   `yaml:"spool"`
	Routes    []RouteConfig `yaml:"routes"`
	// DefaultRoute applies to topics no route matches. Its match is unused.
	DefaultRoute RouteConfig  `yaml:"default_route"`
	Bridge       BridgeConfig `yaml:"bridge"`
	// Upstreams are further upstreams besides bridge (named "main"), each
	// with its own spool file and bridge; a route sends to the ones its
	// upstreams key names (upstreams.go).
	Upstreams []UpstreamConfig `yaml:"upstreams"`
	State     StateConfig      `yaml:"state"` // local MQTT state across restarts (state.go)

	file string              // name used in problems
	pos  map[string]Position // field path → position of its key
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  LogLevel  `yaml:"level"`  // debug | info | warn | error; default info
	Format LogFormat `yaml:"format"` // text | json; default text
}

// Listeners are the network listeners. An empty address disables one.
// The MQTT listeners (mqtt, mqtt_tls, websocket) share one MQTT server and
// limits.mqtt; the STOMP listeners (stomp, stomp_tls, stomp_websocket)
// share one STOMP server and limits.stomp. Every listener takes the same
// tls block: mqtt_tls and stomp_tls always speak TLS, the others when
// their tls block names a certificate.
type Listeners struct {
	MQTT           Listener          `yaml:"mqtt"`            // default 127.0.0.1:1883
	MQTTTLS        TLSListener       `yaml:"mqtt_tls"`        // default off
	WebSocket      Listener          `yaml:"websocket"`       // MQTT over WebSocket (wss with tls); default off
	STOMP          Listener          `yaml:"stomp"`           // default 127.0.0.1:61613
	STOMPTLS       TLSListener       `yaml:"stomp_tls"`       // default off
	STOMPWebSocket WebSocketListener `yaml:"stomp_websocket"` // STOMP over WebSocket (wss with tls); default off
	HTTP           HTTPListener      `yaml:"http"`            // metrics, health, status, API; default 127.0.0.1:8080
}

// Listener is a plain TCP (or WebSocket) listener, with TLS when its tls
// block is set.
type Listener struct {
	Address string    `yaml:"address"` // host:port; "" disables
	TLS     ServerTLS `yaml:"tls"`     // optional: TLS when cert_file is set
}

// TLSListener is a listener that speaks TLS.
type TLSListener struct {
	Address string    `yaml:"address"`
	TLS     ServerTLS `yaml:"tls"`
}

// WebSocketListener serves a protocol over WebSocket on one URL path, with
// TLS (wss) when its tls block is set.
type WebSocketListener struct {
	Address string    `yaml:"address"` // host:port; "" disables
	Path    string    `yaml:"path"`    // URL path of the WebSocket endpoint; default /stomp
	TLS     ServerTLS `yaml:"tls"`     // optional: wss when cert_file is set
}

// ServerTLS is a listener's certificate and optional client verification.
type ServerTLS struct {
	CertFile          string `yaml:"cert_file"`
	KeyFile           string `yaml:"key_file"`
	ClientCAFile      string `yaml:"client_ca_file"`      // verify client certificates against these CAs
	RequireClientCert bool   `yaml:"require_client_cert"` // mutual TLS; needs client_ca_file
	// UsernameFrom logs a client with a verified certificate in as the user
	// its certificate names, without a password: cn (subject common name),
	// san_dns, san_email or san_uri (the first subject alternative name of
	// that type). Default "": certificates do not name users.
	UsernameFrom UsernameFrom `yaml:"username_from"`
	MinVersion   TLSVersion   `yaml:"min_version"` // lowest TLS version accepted: 1.2 | 1.3; default 1.2
}

// configured reports whether the block asks for TLS: a listener that is
// not TLS-only speaks TLS when any of these is set (and then needs a
// certificate and key).
func (t ServerTLS) configured() bool {
	return t.CertFile != "" || t.KeyFile != "" || t.ClientCAFile != "" || t.RequireClientCert || t.UsernameFrom != ""
}

// LimitsConfig protects the gateway from single clients, per protocol.
type LimitsConfig struct {
	MQTT  MQTTLimits  `yaml:"mqtt"`
	STOMP STOMPLimits `yaml:"stomp"`
	Login LoginLimits `yaml:"login"`
}

// LoginLimits bound what password guessing can cost, for both protocols.
type LoginLimits struct {
	MaxConcurrent   int      `yaml:"max_concurrent"`   // bcrypt checks at once; default 0: half the CPUs, at least 1
	MaxFailures     int      `yaml:"max_failures"`     // failed logins per source address and per user before throttling; default 5; 0: off
	FailureInterval Duration `yaml:"failure_interval"` // then one more attempt per interval; default 10s
}

// MQTTLimits apply to every MQTT listener together.
type MQTTLimits struct {
	MaxConnections int      `yaml:"max_connections"`  // default 1000; 0: no limit
	MaxPacketSize  ByteSize `yaml:"max_packet_size"`  // default 256KiB
	PublishRate    float64  `yaml:"publish_rate"`     // messages/s per client; default 0: no limit
	PublishBurst   int      `yaml:"publish_burst"`    // token bucket size; default 0: the rate, at least 1
	MaxTopicLength int      `yaml:"max_topic_length"` // bytes; default 1024
	MaxTopicLevels int      `yaml:"max_topic_levels"` // default 32
	AcceptTimeout  Duration `yaml:"accept_timeout"`   // bound on the wait for the spool before the ack; default 5s
	ConnectTimeout Duration `yaml:"connect_timeout"`  // TCP accept to complete CONNECT (and its login); default 5s
	MaxPending     int      `yaml:"max_pending"`      // connections that have not completed CONNECT; default 128; the oldest is closed for a new one
	MaxConnectSize ByteSize `yaml:"max_connect_size"` // largest CONNECT packet (read before login); default 16KiB
	ReadTimeout    Duration `yaml:"read_timeout"`     // first byte to end of a packet, whatever the keepalive; default 30s
	MaxInflight    int      `yaml:"max_inflight"`     // a client's messages waiting for their commit (MQTT 5 Receive Maximum); default 128
	WriteTimeout   Duration `yaml:"write_timeout"`    // a client that takes no write for this long is disconnected; default 10s
	WriteBuffer    ByteSize `yaml:"write_buffer"`     // bytes waiting to be written to one client before it is disconnected; default 1MiB + max_packet_size
	MaxKeepalive   Duration `yaml:"max_keepalive"`    // cap on the keepalive a client asks for (whole seconds, up to 65535s); default 0: no cap
}

// STOMPLimits apply to every STOMP listener together.
type STOMPLimits struct {
	MaxConnections int      `yaml:"max_connections"`  // logged-in connections; default 1000; 0: no limit
	MaxFrameSize   ByteSize `yaml:"max_frame_size"`   // body bytes of one frame; default 1MiB
	MaxHeaders     int      `yaml:"max_headers"`      // header lines per frame; default 64
	MaxHeaderLine  ByteSize `yaml:"max_header_line"`  // bytes per command or header line; default 8KiB
	Heartbeat      Duration `yaml:"heartbeat"`        // heart-beat offered and expected; default 10s; 0: off
	AcceptTimeout  Duration `yaml:"accept_timeout"`   // bound on the wait for the spool before the RECEIPT; default 5s
	ReadTimeout    Duration `yaml:"read_timeout"`     // first byte to end of a frame; default 30s
	ConnectTimeout Duration `yaml:"connect_timeout"`  // TCP accept to complete CONNECT (and its login); default 5s
	MaxPending     int      `yaml:"max_pending"`      // connections that have not completed CONNECT; default 128; the oldest is closed for a new one
	MaxConnectSize ByteSize `yaml:"max_connect_size"` // largest CONNECT frame, headers and body (read before login); default 16KiB
	PublishRate    float64  `yaml:"publish_rate"`     // SENDs/s per connection (token bucket); default 0: no limit
	PublishBurst   int      `yaml:"publish_burst"`    // bucket size; default 0: the rate, at least 1

	// Transactions: SENDs buffered until COMMIT, per transaction and for
	// all the open transactions of one connection.
	MaxTransactions                  int      `yaml:"max_transactions"`                    // open per connection; default 16
	MaxTransactionMessages           int      `yaml:"max_transaction_messages"`            // SENDs in one; default 1000; at most 4096
	MaxTransactionBytes              ByteSize `yaml:"max_transaction_bytes"`               // body bytes in one; default 4MiB
	MaxConnectionTransactionMessages int      `yaml:"max_connection_transaction_messages"` // SENDs in all of a connection's; default 4000
	MaxConnectionTransactionBytes    ByteSize `yaml:"max_connection_transaction_bytes"`    // body bytes in all of a connection's; default 16MiB

	// SubscriptionQueueBytes bounds the bytes one subscription holds
	// (waiting to be written, or unacked); default 8MiB.
	SubscriptionQueueBytes ByteSize `yaml:"subscription_queue_bytes"`
}

// ACL lists the topic filters a user may publish and subscribe to. %u
// stands for the username and %c for the client id; a name containing '/',
// '+' or '#' never matches a filter that uses it. Empty lists allow nothing.
type ACL struct {
	Publish   []string `yaml:"publish"`
	Subscribe []string `yaml:"subscribe"`
}

// User is a login.
type User struct {
	Name         string   `yaml:"name"`
	PasswordHash string   `yaml:"password_hash"` // bcrypt, from `ferry passwd`; none: certificate logins only
	Publish      []string `yaml:"publish"`
	Subscribe    []string `yaml:"subscribe"`
}

// SpoolConfig configures the spool; SpoolOptions maps it to spool.Options.
type SpoolConfig struct {
	Path             string       `yaml:"path"`               // default /var/lib/ferry/spool.db
	Durability       Durability   `yaml:"durability"`         // sync | interval; default sync
	FsyncInterval    Duration     `yaml:"fsync_interval"`     // interval only; default 100ms
	MaxBytes         ByteSize     `yaml:"max_bytes"`          // default 1GiB; 0: no cap
	MaxMessages      int64        `yaml:"max_messages"`       // default 0: no cap
	MaxMessageBytes  ByteSize     `yaml:"max_message_bytes"`  // default 1MiB
	Overflow         Overflow     `yaml:"overflow"`           // block | reject | drop_oldest | drop_lowest_priority; default block
	BlockTimeout     Duration     `yaml:"block_timeout"`      // default 5s
	DedupeWindow     Duration     `yaml:"dedupe_window"`      // default 10m; 0: off
	DedupeMaxEntries int          `yaml:"dedupe_max_entries"` // default 1000000
	LeaseTimeout     Duration     `yaml:"lease_timeout"`      // default 30s
	LowerLaneShare   float64      `yaml:"lower_lane_share"`   // 0..1; default 0.1; 0: strict priority
	Expired          ExpiryAction `yaml:"expired"`            // drop | dead_letter; default drop
	RetainDelivered  Duration     `yaml:"retain_delivered"`   // default 0: off
	LockTimeout      Duration     `yaml:"lock_timeout"`       // default 1s
	Verify           Verify       `yaml:"verify"`             // auto | always | never; default auto
	// DownstreamMaxBytes caps the downstream lane (commands from upstream
	// waiting for local delivery, and their DLQ), kept in its own file
	// next to path (see Config.DownstreamSpoolPath); default 16MiB.
	DownstreamMaxBytes ByteSize `yaml:"downstream_max_bytes"`
}

// RouteConfig is one routing rule. Fields left out take the defaults of
// DefaultRouteConfig.
type RouteConfig struct {
	Name            string     `yaml:"name"`              // for logs and metrics; default "routes[i]"
	Match           string     `yaml:"match"`             // MQTT filter, or STOMP destination (/topic/a.*)
	Priority        int        `yaml:"priority"`          // lane 0 (highest) … 9; default 5
	TTL             Duration   `yaml:"ttl"`               // default 0: never expires
	Dedupe          string     `yaml:"dedupe"`            // retransmit | none | hash | property[:NAME] | json:FIELD; default retransmit
	UpstreamTopic   string     `yaml:"upstream_topic"`    // template: {gateway_id}, {topic}; default sites/{gateway_id}/{topic}
	UpstreamQoS     int        `yaml:"upstream_qos"`      // 0 | 1; default 1
	UpstreamRetain  bool       `yaml:"upstream_retain"`   // carry the device's retain flag upstream; default false
	QoS0WhenOffline QoS0Policy `yaml:"qos0_when_offline"` // spool | drop; default spool
	LocalOnly       bool       `yaml:"local_only"`        // never spooled or bridged
	// Upstreams names the upstreams the route's messages go to: "main"
	// (the bridge section) and the names of upstreams entries. Each keeps
	// its own copy until it acknowledged it. Default [main]; an empty
	// list is refused (local_only: true is the route that goes nowhere).
	Upstreams []string `yaml:"upstreams"`
}

func (r *RouteConfig) setDefaults() { *r = DefaultRouteConfig() }

// DefaultRouteConfig returns a route with every default filled in.
func DefaultRouteConfig() RouteConfig {
	return RouteConfig{
		Priority:        5,
		Dedupe:          "retransmit",
		UpstreamTopic:   "sites/{gateway_id}/{topic}",
		UpstreamQoS:     1,
		QoS0WhenOffline: QoS0Spool,
		Upstreams:       []string{MainUpstream},
	}
}

// Embedded is the bridge.upstream value that starts the development-only
// in-process broker.
const Embedded = "embedded"

// BridgeConfig configures the upstream connection(s).
type BridgeConfig struct {
	// Upstream is a list of broker URLs (tcp://, mqtt://, ssl://, tls://,
	// mqtts://, ws://, wss://) tried in order, or the single word
	// "embedded". Required.
	Upstream []string `yaml:"upstream"`
	// Protocol is the MQTT version spoken upstream: 4 (3.1.1) or 5.
	Protocol        int       `yaml:"protocol"`         // default 4
	EmbeddedAddress string    `yaml:"embedded_address"` // default 127.0.0.1:1884; loopback only
	TLS             ClientTLS `yaml:"tls"`
	Username        string    `yaml:"username"`
	Password        string    `yaml:"password"` // use ${ENV} rather than the file
	// ClientID is a template with {gateway_id}. With more than one
	// partition the bridge appends "-p<N>" per connection.
	ClientID       string   `yaml:"client_id"`       // default ferry-{gateway_id}
	Keepalive      Duration `yaml:"keepalive"`       // default 30s
	ConnectTimeout Duration `yaml:"connect_timeout"` // default 10s
	Window         int      `yaml:"window"`          // in-flight messages per connection, 1..65535; default 64
	Partitions     int      `yaml:"partitions"`      // parallel connections, 1..64; default 1
	Backoff        Backoff  `yaml:"backoff"`
	StableAfter    Duration `yaml:"stable_after"`  // connected this long: backoff starts again from base; default 10s
	StallTimeout   Duration `yaml:"stall_timeout"` // no ack progress for this long: reconnect; default 10s
	MaxAttempts    int      `yaml:"max_attempts"`  // failed deliveries before the DLQ; default 10; at least 4
	MaxRate        MaxRate  `yaml:"max_rate"`
	Format         Format   `yaml:"format"` // raw | envelope; default envelope
	// Downstream are the routes of commands from upstream to local
	// subscribers (see DownstreamRoute), through the downstream lane.
	Downstream []DownstreamRoute `yaml:"downstream"`
	// FailbackAfter: connected to any upstream but the first, return to
	// the first this long after it is reachable again; 0: never.
	FailbackAfter Duration `yaml:"failback_after"` // default 30s
	// JetStream configures a nats:// upstream.
	JetStream JetStreamConfig `yaml:"jetstream"`
}

// JetStreamConfig are the keys of a NATS JetStream upstream (nats:// URLs).
type JetStreamConfig struct {
	Stream        string `yaml:"stream"`         // must exist and take every publish; default "": any stream
	SubjectPrefix string `yaml:"subject_prefix"` // prepended to every subject with a dot; default ""
}

// ClientTLS configures TLS towards the upstream. It is used for ssl://,
// tls://, mqtts:// and wss:// URLs.
type ClientTLS struct {
	CAFile             string `yaml:"ca_file"`   // default: system roots
	CertFile           string `yaml:"cert_file"` // client certificate (mutual TLS)
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`          // default: the URL's host
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"` // never in production
}

// Backoff is the reconnect delay: exponential with full jitter from Base up
// to Max, reset after a stable connection.
type Backoff struct {
	Base Duration `yaml:"base"` // default 1s
	Max  Duration `yaml:"max"`  // default 60s
}

// MaxRate paces the drain on metered links. Zero: unlimited.
type MaxRate struct {
	Messages float64  `yaml:"messages"` // per second
	Bytes    ByteSize `yaml:"bytes"`    // per second
}

// defaultServerTLS is every listener's tls block by default: no TLS
// (except on mqtt_tls and stomp_tls, which require cert_file and key_file).
var defaultServerTLS = ServerTLS{MinVersion: TLS12}

// Default returns the configuration an empty file yields: every default of
// the schema in one place.
func Default() *Config {
	return &Config{
		Log: LogConfig{Level: LogInfo, Format: LogText},
		Listeners: Listeners{
			MQTT:           Listener{Address: "127.0.0.1:1883", TLS: defaultServerTLS},
			MQTTTLS:        TLSListener{TLS: defaultServerTLS},
			WebSocket:      Listener{TLS: defaultServerTLS},
			STOMP:          Listener{Address: "127.0.0.1:61613", TLS: defaultServerTLS},
			STOMPTLS:       TLSListener{TLS: defaultServerTLS},
			STOMPWebSocket: WebSocketListener{Path: "/stomp", TLS: defaultServerTLS},
			HTTP:           HTTPListener{Address: "127.0.0.1:8080", TLS: defaultServerTLS},
		},
		Limits: LimitsConfig{
			MQTT: MQTTLimits{
				MaxConnections: 1000,
				MaxPacketSize:  256 << 10,
				MaxTopicLength: 1024,
				MaxTopicLevels: 32,
				AcceptTimeout:  Duration(5e9),
				ConnectTimeout: Duration(5e9),
				MaxPending:     128,
				MaxConnectSize: 16 << 10,
				ReadTimeout:    Duration(30e9),
				MaxInflight:    128,
				WriteTimeout:   Duration(10e9),
			},
			STOMP: STOMPLimits{
				MaxConnections: 1000,
				MaxFrameSize:   1 << 20,
				MaxHeaders:     64,
				MaxHeaderLine:  8 << 10,
				Heartbeat:      Duration(10e9),
				AcceptTimeout:  Duration(5e9),
				ReadTimeout:    Duration(30e9),
				ConnectTimeout: Duration(5e9),
				MaxPending:     128,
				MaxConnectSize: 16 << 10,

				MaxTransactions:                  16,
				MaxTransactionMessages:           1000,
				MaxTransactionBytes:              4 << 20,
				MaxConnectionTransactionMessages: 4000,
				MaxConnectionTransactionBytes:    16 << 20,
				SubscriptionQueueBytes:           8 << 20,
			},
			Login: LoginLimits{MaxFailures: 5, FailureInterval: Duration(10e9)},
		},
		Anonymous: ACL{Publish: []string{"#"}, Subscribe: []string{"#"}},
		State:     defaultState(),
		Spool: SpoolConfig{
			Path:               "/var/lib/ferry/spool.db",
			Durability:         DurabilitySync,
			FsyncInterval:      Duration(100e6),
			MaxBytes:           1 << 30,
			DownstreamMaxBytes: 16 << 20,
			MaxMessageBytes:    1 << 20,
			Overflow:           OverflowBlock,
			BlockTimeout:       Duration(5e9),
			DedupeWindow:       Duration(10 * 60e9),
			DedupeMaxEntries:   1_000_000,
			LeaseTimeout:       Duration(30e9),
			LowerLaneShare:     0.1,
			Expired:            ExpireDrop,
			LockTimeout:        Duration(1e9),
			Verify:             VerifyAuto,
		},
		DefaultRoute: DefaultRouteConfig(),
		Bridge: BridgeConfig{
			EmbeddedAddress: "127.0.0.1:1884",
			Protocol:        4,
			FailbackAfter:   Duration(30e9),
			ClientID:        "ferry-{gateway_id}",
			Keepalive:       Duration(30e9),
			ConnectTimeout:  Duration(10e9),
			Window:          64,
			Partitions:      1,
			Backoff:         Backoff{Base: Duration(1e9), Max: Duration(60e9)},
			StableAfter:     Duration(10e9),
			StallTimeout:    Duration(10e9),
			MaxAttempts:     10,
			Format:          FormatEnvelope,
		},
	}
}

// IsEmbedded reports whether the upstream is the development-only embedded
// broker (listening on EmbeddedAddress).
func (b *BridgeConfig) IsEmbedded() bool {
	return len(b.Upstream) == 1 && b.Upstream[0] == Embedded
}

// SlogLevel returns log.level as a slog.Level (info when unset or unknown:
// Validate refuses unknown ones).
func (l LogConfig) SlogLevel() slog.Level { return l.Level.Slog() }

// NewLogger returns a slog.Logger writing to w in the configured format.
// level is what it logs from; nil: the configured level, fixed. Pass a
// *slog.LevelVar to change it at run time (Options.LogLevel: on reload).
func (l LogConfig) NewLogger(w io.Writer, level slog.Leveler) *slog.Logger {
	if level == nil {
		level = l.SlogLevel()
	}
	opts := &slog.HandlerOptions{Level: level}
	if l.Format == LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
