package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ferrymq/ferry/spool"
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

	file string              // name used in problems
	pos  map[string]Position // field path → position of its key
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug | info | warn | error; default info
	Format string `yaml:"format"` // text | json; default text
}

// Listeners are the network listeners. An empty address disables one.
// The MQTT listeners (mqtt, mqtt_tls, websocket) share one MQTT server and
// limits.mqtt; the STOMP listeners share one STOMP server and limits.stomp.
type Listeners struct {
	MQTT      Listener    `yaml:"mqtt"`      // default 127.0.0.1:1883
	MQTTTLS   TLSListener `yaml:"mqtt_tls"`  // default off
	WebSocket Listener    `yaml:"websocket"` // MQTT over WebSocket; default off
	STOMP     Listener    `yaml:"stomp"`     // default 127.0.0.1:61613
	STOMPTLS  TLSListener `yaml:"stomp_tls"` // default off
	HTTP      Listener    `yaml:"http"`      // metrics, health, status; default 127.0.0.1:8080
}

// Listener is a plain TCP (or WebSocket) listener.
type Listener struct {
	Address string `yaml:"address"` // host:port; "" disables
}

// TLSListener is a listener that speaks TLS.
type TLSListener struct {
	Address string    `yaml:"address"`
	TLS     ServerTLS `yaml:"tls"`
}

// ServerTLS is a listener's certificate and optional client verification.
type ServerTLS struct {
	CertFile          string `yaml:"cert_file"`
	KeyFile           string `yaml:"key_file"`
	ClientCAFile      string `yaml:"client_ca_file"`      // verify client certificates against these CAs
	RequireClientCert bool   `yaml:"require_client_cert"` // mutual TLS; needs client_ca_file
}

// LimitsConfig protects the gateway from single clients, per protocol.
type LimitsConfig struct {
	MQTT  MQTTLimits  `yaml:"mqtt"`
	STOMP STOMPLimits `yaml:"stomp"`
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
	ConnectTimeout Duration `yaml:"connect_timeout"`  // TCP accept to complete CONNECT; default 10s
}

// STOMPLimits apply to every STOMP listener together.
type STOMPLimits struct {
	MaxConnections int      `yaml:"max_connections"` // default 1000; 0: no limit
	MaxFrameSize   ByteSize `yaml:"max_frame_size"`  // body bytes of one frame; default 1MiB
	MaxHeaders     int      `yaml:"max_headers"`     // header lines per frame; default 64
	MaxHeaderLine  ByteSize `yaml:"max_header_line"` // bytes per command or header line; default 8KiB
	Heartbeat      Duration `yaml:"heartbeat"`       // heart-beat offered and expected; default 10s; 0: off
	AcceptTimeout  Duration `yaml:"accept_timeout"`  // bound on the wait for the spool before the RECEIPT; default 5s
	ReadTimeout    Duration `yaml:"read_timeout"`    // first byte to end of a frame, and connect to CONNECT; default 30s
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
	PasswordHash string   `yaml:"password_hash"` // bcrypt, from `ferry passwd`
	Publish      []string `yaml:"publish"`
	Subscribe    []string `yaml:"subscribe"`
}

// SpoolConfig configures the spool; SpoolOptions maps it to spool.Options.
type SpoolConfig struct {
	Path             string   `yaml:"path"`               // default /var/lib/ferry/spool.db
	Durability       string   `yaml:"durability"`         // sync | interval; default sync
	FsyncInterval    Duration `yaml:"fsync_interval"`     // interval only; default 100ms
	MaxBytes         ByteSize `yaml:"max_bytes"`          // default 1GiB; 0: no cap
	MaxMessages      int64    `yaml:"max_messages"`       // default 0: no cap
	MaxMessageBytes  ByteSize `yaml:"max_message_bytes"`  // default 1MiB
	Overflow         string   `yaml:"overflow"`           // block | reject | drop_oldest | drop_lowest_priority; default block
	BlockTimeout     Duration `yaml:"block_timeout"`      // default 5s
	DedupeWindow     Duration `yaml:"dedupe_window"`      // default 10m; 0: off
	DedupeMaxEntries int      `yaml:"dedupe_max_entries"` // default 1000000
	LeaseTimeout     Duration `yaml:"lease_timeout"`      // default 30s
	LowerLaneShare   float64  `yaml:"lower_lane_share"`   // 0..1; default 0.1; 0: strict priority
	Expired          string   `yaml:"expired"`            // drop | dead_letter; default drop
	RetainDelivered  Duration `yaml:"retain_delivered"`   // default 0: off
	LockTimeout      Duration `yaml:"lock_timeout"`       // default 1s
	Verify           string   `yaml:"verify"`             // auto | always | never; default auto
}

// RouteConfig is one routing rule. Fields left out take the defaults of
// DefaultRouteConfig.
type RouteConfig struct {
	Name            string   `yaml:"name"`              // for logs and metrics; default "routes[i]"
	Match           string   `yaml:"match"`             // MQTT filter, or STOMP destination (/topic/a.*)
	Priority        int      `yaml:"priority"`          // lane 0 (highest) … 9; default 5
	TTL             Duration `yaml:"ttl"`               // default 0: never expires
	Dedupe          string   `yaml:"dedupe"`            // none | hash | property[:NAME] | json:FIELD; default none
	UpstreamTopic   string   `yaml:"upstream_topic"`    // template: {gateway_id}, {topic}; default sites/{gateway_id}/{topic}
	UpstreamQoS     int      `yaml:"upstream_qos"`      // 0 | 1; default 1
	QoS0WhenOffline string   `yaml:"qos0_when_offline"` // spool | drop; default spool
	LocalOnly       bool     `yaml:"local_only"`        // never spooled or bridged
}

func (r *RouteConfig) setDefaults() { *r = DefaultRouteConfig() }

// DefaultRouteConfig returns a route with every default filled in.
func DefaultRouteConfig() RouteConfig {
	return RouteConfig{
		Priority:        5,
		Dedupe:          "none",
		UpstreamTopic:   "sites/{gateway_id}/{topic}",
		UpstreamQoS:     1,
		QoS0WhenOffline: "spool",
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
	Upstream        []string  `yaml:"upstream"`
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
	Format         string   `yaml:"format"` // raw | envelope; default envelope
	// Downstream are upstream topic filters (templates with {gateway_id})
	// subscribed on every connection and delivered to local clients.
	Downstream []string `yaml:"downstream"`
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

// Default returns the configuration an empty file yields: every default of
// the schema in one place.
func Default() *Config {
	return &Config{
		Log: LogConfig{Level: "info", Format: "text"},
		Listeners: Listeners{
			MQTT:  Listener{Address: "127.0.0.1:1883"},
			STOMP: Listener{Address: "127.0.0.1:61613"},
			HTTP:  Listener{Address: "127.0.0.1:8080"},
		},
		Limits: LimitsConfig{
			MQTT: MQTTLimits{
				MaxConnections: 1000,
				MaxPacketSize:  256 << 10,
				MaxTopicLength: 1024,
				MaxTopicLevels: 32,
				AcceptTimeout:  Duration(5e9),
				ConnectTimeout: Duration(10e9),
			},
			STOMP: STOMPLimits{
				MaxConnections: 1000,
				MaxFrameSize:   1 << 20,
				MaxHeaders:     64,
				MaxHeaderLine:  8 << 10,
				Heartbeat:      Duration(10e9),
				AcceptTimeout:  Duration(5e9),
				ReadTimeout:    Duration(30e9),
			},
		},
		Anonymous: ACL{Publish: []string{"#"}, Subscribe: []string{"#"}},
		Spool: SpoolConfig{
			Path:             "/var/lib/ferry/spool.db",
			Durability:       "sync",
			FsyncInterval:    Duration(100e6),
			MaxBytes:         1 << 30,
			MaxMessageBytes:  1 << 20,
			Overflow:         "block",
			BlockTimeout:     Duration(5e9),
			DedupeWindow:     Duration(10 * 60e9),
			DedupeMaxEntries: 1_000_000,
			LeaseTimeout:     Duration(30e9),
			LowerLaneShare:   0.1,
			Expired:          "drop",
			LockTimeout:      Duration(1e9),
			Verify:           "auto",
		},
		DefaultRoute: DefaultRouteConfig(),
		Bridge: BridgeConfig{
			EmbeddedAddress: "127.0.0.1:1884",
			ClientID:        "ferry-{gateway_id}",
			Keepalive:       Duration(30e9),
			ConnectTimeout:  Duration(10e9),
			Window:          64,
			Partitions:      1,
			Backoff:         Backoff{Base: Duration(1e9), Max: Duration(60e9)},
			StableAfter:     Duration(10e9),
			StallTimeout:    Duration(10e9),
			MaxAttempts:     10,
			Format:          "envelope",
		},
	}
}

// Load reads the configuration file at path, loads its users_file, and
// validates everything, including that the
// files it names exist (CheckFiles). ${ENV} references are expanded from
// the process environment. The error is a *ConfigError listing every
// problem, or an I/O error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(path, data, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	if err := c.LoadUsersFile(); err != nil {
		return nil, err
	}
	if err := c.CheckFiles(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse decodes and validates a configuration without touching the file
// system (no users_file, no file checks: see Load). name is used in
// problems; lookupEnv resolves ${ENV} (nil: none set).
func Parse(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	c, problems, err := decode(name, data, lookupEnv)
	if err != nil {
		return nil, err
	}
	var ce *ConfigError
	if errors.As(c.Validate(), &ce) {
		// A value that could not be decoded kept its default; do not
		// report the default again.
		problems = append(problems, uncovered(ce.Problems, problems)...)
	}
	if len(problems) > 0 {
		sortProblems(problems)
		return nil, &ConfigError{Problems: problems}
	}
	return c, nil
}

// uncovered returns the problems of ps whose path is not, or not inside, the
// path of a problem in already.
func uncovered(ps, already []Problem) []Problem {
	var out []Problem
next:
	for _, p := range ps {
		for _, q := range already {
			if q.Path != "" && (p.Path == q.Path || strings.HasPrefix(p.Path, q.Path+".") || strings.HasPrefix(p.Path, q.Path+"[")) {
				continue next
			}
		}
		out = append(out, p)
	}
	return out
}

// sortProblems orders problems by position, those without one (about keys
// not written) last, keeping the order of problems at the same place.
func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if (a.Line == 0) != (b.Line == 0) {
			return b.Line == 0
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// decode fills Default() from data. It returns the syntax, type and
// unknown-key problems (not semantic ones) with the configuration decoded
// around them, or an error when the text is not YAML at all.
func decode(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, []Problem, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	c := Default()
	c.file = name
	c.pos = make(map[string]Position)
	d := &decoder{file: name, lookup: lookupEnv, pos: c.pos, budget: maxNodes}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, &ConfigError{Problems: []Problem{syntaxProblem(name, err)}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.problem(&extra, "", "only one YAML document is allowed")
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		d.decode(doc.Content[0], reflect.ValueOf(c).Elem(), "", doc.Content[0], 0)
	}
	return c, d.problems, nil
}

// syntaxProblem turns yaml.v3's "yaml: line 3: did not find …" into a
// positioned problem.
func syntaxProblem(name string, err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	p := Problem{File: name, Reason: msg}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(num); err == nil {
				p.Line, p.Column, p.Reason = l, 1, tail
			}
		}
	}
	return p
}

// Position returns where the key of a field path was written, and whether it
// was (false: the value is a default).
func (c *Config) Position(path string) (Position, bool) {
	p, ok := c.pos[path]
	return p, ok
}

// File returns the name the configuration was loaded from.
func (c *Config) File() string { return c.file }

// LoadUsersFile reads users_file into Users. Like every path in the
// configuration, a relative users_file is relative to the working directory.
func (c *Config) LoadUsersFile() error {
	if c.UsersFile == "" {
		return nil
	}
	users, err := LoadUsers(c.UsersFile)
	if err != nil {
		return err
	}
	c.Users = users
	return nil
}

// usersFile is the schema of a users_file.
type usersFile struct {
	Users []User `yaml:"users"`
}

// LoadUsers reads a users file: a YAML mapping with one key, users, in the
// same form as the users key of the main file. Problems are reported with
// positions in that file.
func LoadUsers(path string) ([]User, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: users_file: %w", err)
	}
	return parseUsers(path, data)
}

func parseUsers(name string, data []byte) ([]User, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &ConfigError{Problems: []Problem{syntaxProblem(name, err)}}
	}
	var uf usersFile
	pos := make(map[string]Position)
	d := &decoder{file: name, lookup: os.LookupEnv, pos: pos, budget: maxNodes}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		d.decode(doc.Content[0], reflect.ValueOf(&uf).Elem(), "", doc.Content[0], 0)
	}
	v := &validator{file: name, pos: pos}
	v.users(uf.Users)
	problems := append(d.problems, uncovered(v.problems, d.problems)...)
	if len(problems) > 0 {
		sortProblems(problems)
		return nil, &ConfigError{Problems: problems}
	}
	return uf.Users, nil
}

// SpoolOptions maps the spool section to spool.Options. A zero max_bytes
// or dedupe_window in the file means "none" and lower_lane_share 0 means
// strict priority; spool.Options uses negative values for those.
func (c *Config) SpoolOptions(logger *slog.Logger) spool.Options {
	s := c.Spool
	o := spool.Options{
		FsyncInterval:    s.FsyncInterval.D(),
		MaxBytes:         int64(s.MaxBytes),
		MaxMessages:      s.MaxMessages,
		MaxMessageBytes:  int(s.MaxMessageBytes),
		BlockTimeout:     s.BlockTimeout.D(),
		DedupeWindow:     s.DedupeWindow.D(),
		DedupeMaxEntries: s.DedupeMaxEntries,
		LeaseTimeout:     s.LeaseTimeout.D(),
		LowerLaneShare:   s.LowerLaneShare,
		RetainDelivered:  s.RetainDelivered.D(),
		LockTimeout:      s.LockTimeout.D(),
		Logger:           logger,
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = -1
	}
	if o.DedupeWindow == 0 {
		o.DedupeWindow = -1
	}
	if o.LowerLaneShare == 0 {
		o.LowerLaneShare = -1
	}
	if s.Durability == "interval" {
		o.Durability = spool.Interval
	}
	switch s.Overflow {
	case "reject":
		o.Overflow = spool.Reject
	case "drop_oldest":
		o.Overflow = spool.DropOldest
	case "drop_lowest_priority":
		o.Overflow = spool.DropLowestPriority
	}
	if s.Expired == "dead_letter" {
		o.Expired = spool.ExpireDeadLetter
	}
	switch s.Verify {
	case "always":
		o.Verify = spool.VerifyAlways
	case "never":
		o.Verify = spool.VerifyNever
	}
	return o
}

// IsEmbedded reports whether the upstream is the development-only embedded
// broker (listening on EmbeddedAddress).
func (b *BridgeConfig) IsEmbedded() bool {
	return len(b.Upstream) == 1 && b.Upstream[0] == Embedded
}

// DownstreamFilters returns bridge.downstream with {gateway_id} resolved.
func (c *Config) DownstreamFilters() []string {
	out := make([]string, len(c.Bridge.Downstream))
	for i, f := range c.Bridge.Downstream {
		out[i] = strings.ReplaceAll(f, "{gateway_id}", c.GatewayID)
	}
	return out
}

// NewLogger returns a slog.Logger writing to w in the configured format and
// level.
func (l LogConfig) NewLogger(w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(l.Level)) // validated; unknown stays info
	opts := &slog.HandlerOptions{Level: level}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// ReloadableKeys are the top-level keys a reload (SIGHUP) applies without a
// restart: the rules that Router and Auth swap atomically.
var ReloadableKeys = []string{"allow_anonymous", "anonymous", "users", "users_file", "routes", "default_route"}

// RestartRequired compares a running configuration with a newly loaded one
// and returns the top-level keys that changed but take effect only after a
// restart (listeners, spool, bridge, log, gateway_id), sorted. A reload
// applies the ReloadableKeys and should log these.
func RestartRequired(old, new *Config) []string {
	var out []string
	ov, nv := reflect.ValueOf(old).Elem(), reflect.ValueOf(new).Elem()
	reloadable := make(map[string]bool, len(ReloadableKeys))
	for _, k := range ReloadableKeys {
		reloadable[k] = true
	}
	for name, i := range yamlFields(ov.Type()) {
		if reloadable[name] {
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Redacted is the text that replaces secrets in EffectiveYAML.
const Redacted = "REDACTED"

// EffectiveYAML returns the configuration with every default filled in, as
// YAML, with the upstream password and the password hashes replaced by
// Redacted: for `ferry check --print` and support requests.
func (c *Config) EffectiveYAML() ([]byte, error) {
	cp := *c
	cp.Users = make([]User, len(c.Users))
	for i, u := range c.Users {
		u.PasswordHash = Redacted
		cp.Users[i] = u
	}
	if cp.Bridge.Password != "" {
		cp.Bridge.Password = Redacted
	}
	b, err := yaml.Marshal(&cp)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return b, nil
}
