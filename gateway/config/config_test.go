package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
)

// minimal is the smallest valid configuration.
const minimal = "gateway_id: gw1\nbridge:\n  upstream: tcp://127.0.0.1:1884\n"

// hashSecret is bcrypt("secret") at the minimum cost.
const hashSecret = "$2a$04$77og0tde3kc353pfuKN9semMFqgEWeTxMlzEJCAIHVamDRxcnEXdm"

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := Parse("ferry.yaml", []byte(src), nil)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return c
}

func TestParseMinimalTakesDefaults(t *testing.T) {
	c := mustParse(t, minimal)
	want := Default()
	want.GatewayID = "gw1"
	want.Bridge.Upstream = []string{"tcp://127.0.0.1:1884"}
	want.file, want.pos = c.file, c.pos
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", c, want)
	}
}

// TestBadConfigs pins the message of each validation rule, with its
// position and field path.
func TestBadConfigs(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"empty file", "", []string{
			"ferry.yaml: gateway_id: required: a name for this gateway, used in upstream topics",
			"ferry.yaml: bridge.upstream: required: broker URL(s) such as tls://broker.example.com:8883, or embedded for development",
		}},
		{"unknown key with suggestion", minimal + "bridge2: {}\nspool:\n  max_byte: 1GiB\n", []string{
			"ferry.yaml:4:1: bridge2: unknown key (did you mean \"bridge\"?)",
			"ferry.yaml:6:3: spool.max_byte: unknown key (did you mean \"max_bytes\"?)",
		}},
		{"unknown key listing known", "gateway_id: gw1\nlog:\n  colour: red\n", []string{
			"ferry.yaml:3:3: log.colour: unknown key (known: format, level)",
			"ferry.yaml: bridge.upstream: required: broker URL(s) such as tls://broker.example.com:8883, or embedded for development",
		}},
		{"duplicate key", minimal + "gateway_id: gw2\n", []string{
			"ferry.yaml:4:1: gateway_id: duplicate key",
		}},
		{"syntax error", "gateway_id: [\n", []string{
			"ferry.yaml:2:1: did not find expected node content",
		}},
		{"two documents", minimal + "---\ngateway_id: x\n", []string{
			"ferry.yaml:4:1: only one YAML document is allowed",
		}},
		{"wrong shapes", "gateway_id: [a]\nlog: text\nroutes: {a: 1}\n", []string{
			"ferry.yaml:1:1: gateway_id: want a single value (got a list)",
			"ferry.yaml:2:1: log: want a mapping (got \"text\")",
			"ferry.yaml:3:1: routes: want a list (got a mapping)",
			"ferry.yaml: bridge.upstream: required: broker URL(s) such as tls://broker.example.com:8883, or embedded for development",
		}},
		{"bad scalars", minimal + "  window: many\n  keepalive: 30\n  max_rate: {messages: fast, bytes: 1XB}\nallow_anonymous: yes\n", []string{
			"ferry.yaml:4:3: bridge.window: want an integer (got \"many\")",
			"ferry.yaml:5:3: bridge.keepalive: want a duration such as 500ms, 30s, 5m, 1h (got \"30\")",
			"ferry.yaml:6:14: bridge.max_rate.messages: want a number (got \"fast\")",
			"ferry.yaml:6:30: bridge.max_rate.bytes: want a size such as 1048576, 512KiB, 64MiB, 1GiB (got \"1XB\")",
			"ferry.yaml:7:1: allow_anonymous: want true or false (got \"yes\")",
		}},
		{"decode and validation problems together", minimal + "  window: many\n  partitions: 0\n", []string{
			"ferry.yaml:4:3: bridge.window: want an integer (got \"many\")",
			"ferry.yaml:5:3: bridge.partitions: must be 1..64 (got 0)",
		}},
		{"bridge ranges", minimal + "  window: 0\n  partitions: 65\n  keepalive: 0s\n  backoff: {base: 2s, max: 1s}\n  stall_timeout: -1s\n  format: json\n  max_attempts: -1\n", []string{
			"ferry.yaml:4:3: bridge.window: must be 1..65535 (got 0)",
			"ferry.yaml:5:3: bridge.partitions: must be 1..64 (got 65)",
			"ferry.yaml:6:3: bridge.keepalive: must be 1s..18h12m15s (got 0s)",
			"ferry.yaml:7:23: bridge.backoff.max: must be at least backoff.base (1s < 2s)",
			"ferry.yaml:8:3: bridge.stall_timeout: must be more than 0 (got -1s)",
			"ferry.yaml:9:3: bridge.format: must be raw, envelope (got \"json\")",
			"ferry.yaml:10:3: bridge.max_attempts: must be at least 4 (got -1)",
		}},
		{"jetstream keys", "gateway_id: gw1\nbridge:\n  upstream: ['nats://a:4222', 'tcp://b:1883']\n  downstream: ['cmd/#']\n  jetstream: {subject_prefix: 'a.*'}\n", []string{
			"ferry.yaml:3:31: bridge.upstream[1]: NATS (nats://) and MQTT upstreams cannot be mixed (got \"tcp://b:1883\")",
			"ferry.yaml:4:3: bridge.downstream: not supported on a JetStream (nats://) upstream",
			"ferry.yaml:5:15: bridge.jetstream.subject_prefix: must be NATS subject tokens without wildcards or spaces, such as ferry.site1 (got \"a.*\")",
		}},
		{"bridge protocol", minimal + "  protocol: 3\n", []string{
			"ferry.yaml:4:3: bridge.protocol: must be 4 (MQTT 3.1.1) or 5 (MQTT 5) (got 3)",
		}},
		{"upstream URLs", "gateway_id: gw1\nbridge:\n  upstream: [embedded, 'http://x', 'tcp://h:99999', broker:1883]\n  client_id: '{host}'\n  tls: {cert_file: c.pem}\n", []string{
			"ferry.yaml:3:14: bridge.upstream[0]: embedded cannot be combined with other upstreams",
			"ferry.yaml:3:24: bridge.upstream[1]: want a URL such as tcp://host:1883, tls://host:8883 or wss://host/mqtt, or embedded (got \"http://x\")",
			"ferry.yaml:3:36: bridge.upstream[2]: port must be 1..65535 (got \"99999\")",
			"ferry.yaml:3:53: bridge.upstream[3]: want a URL such as tcp://host:1883, tls://host:8883 or wss://host/mqtt, or embedded (got \"broker:1883\")",
			"ferry.yaml:4:3: bridge.client_id: unknown placeholder: only {gateway_id} (got \"{host}\")",
			"ferry.yaml:5:3: bridge.tls: cert_file and key_file go together (got only one)",
		}},
		{"embedded with a public listener", "gateway_id: gw1\nallow_anonymous: true\nlisteners:\n  mqtt:\n    address: 0.0.0.0:1883\nbridge:\n  upstream: embedded\n", []string{
			"ferry.yaml:5:5: listeners.mqtt.address: bridge.upstream: embedded is for development and requires loopback-only listeners (got 0.0.0.0:1883)",
		}},
		{"public listener without users", "gateway_id: gw1\nlisteners:\n  stomp: {address: ':61613'}\n  http: {address: '192.168.1.5:8080'}\nbridge: {upstream: 'tls://b:8883'}\n", []string{
			"ferry.yaml:3:11: listeners.stomp.address: listens beyond loopback but no users are configured: add users (or users_file), or set allow_anonymous: true explicitly",
			"ferry.yaml:4:10: listeners.http.address: listens beyond loopback, where anyone on the network could read dead-lettered payloads: set listeners.http.auth (username and password_hash, or token_hash), or listen on 127.0.0.1",
		}},
		{"listeners", minimal + "listeners:\n  mqtt: {address: 'localhost'}\n  stomp: {address: '127.0.0.1:1883'}\n  websocket: {address: '127.0.0.1:1883'}\n  mqtt_tls:\n    address: 127.0.0.1:8883\n    tls: {require_client_cert: true}\n    limits: {}\n", []string{
			"ferry.yaml:5:10: listeners.mqtt.address: want host:port (got \"localhost\")",
			"ferry.yaml:6:11: listeners.stomp.address: 127.0.0.1:1883 is already used by listeners.websocket",
			"ferry.yaml:10:5: listeners.mqtt_tls.tls.cert_file: required for a TLS listener",
			"ferry.yaml:10:5: listeners.mqtt_tls.tls.key_file: required for a TLS listener",
			"ferry.yaml:10:5: listeners.mqtt_tls.tls.client_ca_file: required with require_client_cert: true",
			"ferry.yaml:11:5: listeners.mqtt_tls.limits: unknown key (known: address, tls)",
		}},
		{"limits", minimal + "limits:\n  mqtt:\n    max_connections: -1\n    max_packet_size: 2MiB\n    publish_rate: -1\n    max_topic_levels: 0\n    accept_timeout: 0s\n  stomp:\n    max_frame_size: 0\n    max_headers: 2000\n    max_header_line: 8\n    heartbeat: -1s\n    max_packet_size: 1KiB\n", []string{
			"ferry.yaml:6:5: limits.mqtt.max_connections: must not be negative (got -1)",
			"ferry.yaml:7:5: limits.mqtt.max_packet_size: must not exceed spool.max_message_bytes (2MiB > 1MiB): larger messages could never be stored",
			"ferry.yaml:8:5: limits.mqtt.publish_rate: must not be negative (got -1)",
			"ferry.yaml:9:5: limits.mqtt.max_topic_levels: must be 1..1024 (got 0)",
			"ferry.yaml:10:5: limits.mqtt.accept_timeout: must be more than 0 (got 0s)",
			"ferry.yaml:12:5: limits.stomp.max_frame_size: must be 1B..256MiB (got 0)",
			"ferry.yaml:13:5: limits.stomp.max_headers: must be 1..1024 (got 2000)",
			"ferry.yaml:14:5: limits.stomp.max_header_line: must be 64B..1MiB (got 8)",
			"ferry.yaml:15:5: limits.stomp.heartbeat: must not be negative (got -1s)",
			"ferry.yaml:16:5: limits.stomp.max_packet_size: unknown key (known: accept_timeout, connect_timeout, heartbeat, max_connect_size, max_connection_transaction_bytes, max_connection_transaction_messages, max_connections, max_frame_size, max_header_line, max_headers, max_pending, max_transaction_bytes, max_transaction_messages, max_transactions, publish_burst, publish_rate, read_timeout, subscription_queue_bytes)",
		}},
		{"stall timeout and lease", minimal + "  stall_timeout: 1m\n", []string{
			"ferry.yaml:4:3: bridge.stall_timeout: must be less than spool.lease_timeout (1m0s >= 30s): leases would expire before a stall is detected",
		}},
		{"no ingress listener", minimal + "listeners:\n  mqtt: {address: ''}\n  stomp: {address: ''}\n", []string{
			"ferry.yaml:4:1: listeners: no MQTT or STOMP listener has an address: the gateway would accept nothing",
		}},
		{"users", minimal + "users:\n  - name: a/b\n    password_hash: plain\n    publish: ['x/#/y']\n  - name: ''\n  - {name: c, password_hash: '" + hashSecret + "'}\n  - {name: c, password_hash: '" + hashSecret + "', subscribe: ['%u/+x']}\nusers_file: users.yaml\n", []string{
			"ferry.yaml:5:5: users[0].name: must not contain '/', '+', '#', NUL or surrounding spaces (got \"a/b\")",
			"ferry.yaml:6:5: users[0].password_hash: not a bcrypt hash (ferry passwd prints one)",
			"ferry.yaml:7:15: users[0].publish[0]: invalid topic: '#' must be the whole last level (\"x/#/y\")",
			"ferry.yaml:8:5: users[1].name: required",
			"ferry.yaml:8:5: users[1].password_hash: required: a bcrypt hash (ferry passwd prints one), unless a TLS listener sets username_from",
			"ferry.yaml:10:6: users[3].name: \"c\" is already users[2]",
			"ferry.yaml:10:106: users[3].subscribe[0]: invalid topic: '+' must fill a whole level (\"u/+x\")",
			"ferry.yaml:11:1: users_file: set users or users_file, not both",
		}},
		{"spool", minimal + "spool:\n  path: ''\n  durability: lazy\n  max_bytes: 1MiB\n  max_message_bytes: 2MiB\n  overflow: spill\n  block_timeout: 0s\n  lower_lane_share: 1.5\n  expired: keep\n  dedupe_max_entries: 0\n  verify: sometimes\n", []string{
			"ferry.yaml:5:3: spool.path: required",
			"ferry.yaml:6:3: spool.durability: must be sync, interval (got \"lazy\")",
			"ferry.yaml:8:3: spool.max_message_bytes: must not exceed spool.max_bytes (2MiB > 1MiB)",
			"ferry.yaml:9:3: spool.overflow: must be block, reject, drop_oldest, drop_lowest_priority (got \"spill\")",
			"ferry.yaml:11:3: spool.lower_lane_share: must be 0..1 (got 1.5)",
			"ferry.yaml:12:3: spool.expired: must be drop, dead_letter (got \"keep\")",
			"ferry.yaml:13:3: spool.dedupe_max_entries: must be at least 1 (got 0)",
			"ferry.yaml:14:3: spool.verify: must be auto, always, never (got \"sometimes\")",
		}},
		{"spool block needs a timeout", minimal + "spool:\n  block_timeout: 0s\n", []string{
			"ferry.yaml:5:3: spool.block_timeout: must be more than 0 (got 0s)",
		}},
		{"routes", minimal + `routes:
  - match: sensors/#
  - match: sensors/#
    priority: 10
    ttl: -1s
    dedupe: json
    upstream_topic: 'up/{host}/{topic}'
    upstream_qos: 2
    qos0_when_offline: later
  - match: /topic/a.*.b+
  - priority: 1
  - match: local/#
    local_only: true
    upstream_topic: x
  - match: a
    upstream_topic: 'a/+/{topic}'
default_route:
  match: '#'
  upstream_topic: ''
`, []string{
			"ferry.yaml:6:5: routes[1].match: same filter as routes[0], which always wins: this route is never used",
			"ferry.yaml:7:5: routes[1].priority: must be 0..9 (got 10)",
			"ferry.yaml:8:5: routes[1].ttl: must not be negative (got -1s)",
			"ferry.yaml:9:5: routes[1].dedupe: dedupe \"json\": json needs a field name, e.g. json:id",
			"ferry.yaml:10:5: routes[1].upstream_topic: unknown placeholder in \"up/{host}/{topic}\": only {gateway_id} and {topic}",
			"ferry.yaml:11:5: routes[1].upstream_qos: must be 0..1 (got 2)",
			"ferry.yaml:12:5: routes[1].qos0_when_offline: must be spool, drop (got \"later\")",
			"ferry.yaml:13:5: routes[2].match: invalid topic: '+' must fill a whole level (\"a/+/b+\")",
			"ferry.yaml:14:5: routes[3].match: required: an MQTT topic filter or a STOMP destination",
			"ferry.yaml:17:5: routes[4].upstream_topic: has no effect with local_only: true (local-only messages are never spooled)",
			"ferry.yaml:19:5: routes[5].upstream_topic: \"a/+/{topic}\" does not yield a valid topic: invalid topic: wildcards are not allowed in a topic name (\"a/+/t\")",
			"ferry.yaml:21:3: default_route.match: the default route takes every topic no route matches: remove match",
			"ferry.yaml:22:3: default_route.upstream_topic: required unless local_only: true (e.g. sites/{gateway_id}/{topic})",
		}},
		{"downstream routes", "gateway_id: gw1\nbridge:\n  upstream: embedded\n  downstream:\n    - cmd/{gateway_id}/#\n    - remote: c/{gateway_id}/+/#\n      local: dev/#\n    - {remote: x/#, ttl: -1s}\n    - {local: y/#}\n    - {remote: z/#, locl: z}\n", []string{
			"ferry.yaml:7:7: bridge.downstream[1].local: must have the wildcards of remote \"c/gw1/+/#\" in the same order (\"dev/#\" has \"#\", remote \"+#\")",
			"ferry.yaml:8:21: bridge.downstream[2].ttl: must not be negative (got -1s)",
			"ferry.yaml:9:7: bridge.downstream[3].remote: required",
			"ferry.yaml:10:21: bridge.downstream[4].locl: unknown key (did you mean \"local\"?)",
		}},
		{"gateway id and log", "gateway_id: 'gw/1'\nlog: {level: loud, format: xml}\nbridge: {upstream: embedded, embedded_address: '0.0.0.0:1884', downstream: ['cmd/{id}/#', 'cmd/#/x']}\n", []string{
			"ferry.yaml:1:1: gateway_id: must be letters, digits, '-', '_' or '.' (got \"gw/1\")",
			"ferry.yaml:2:7: log.level: must be debug, info, warn, error (got \"loud\")",
			"ferry.yaml:2:20: log.format: must be text, json (got \"xml\")",
			"ferry.yaml:3:30: bridge.embedded_address: must be a loopback address (got \"0.0.0.0:1884\")",
			"ferry.yaml:3:77: bridge.downstream[0].remote: unknown placeholder: only {gateway_id} (got \"cmd/{id}/#\")",
			"ferry.yaml:3:91: bridge.downstream[1].remote: invalid topic: '#' must be the whole last level (\"cmd/#/x\")",
		}},
		{"mqtt max_keepalive", "gateway_id: gw\nbridge: {upstream: embedded}\nlimits:\n  mqtt:\n    max_keepalive: 1500ms\n", []string{
			"ferry.yaml:5:5: limits.mqtt.max_keepalive: must be whole seconds, 0 (no cap) or 1s..65535s (got 1.5s)",
		}},
		{"stomp transactions", "gateway_id: gw\nbridge: {upstream: embedded}\nlimits:\n  stomp:\n    max_transactions: 0\n    max_transaction_messages: 5000\n    max_transaction_bytes: 1MiB\n    max_connection_transaction_messages: 10\n    max_connection_transaction_bytes: 512KiB\n", []string{
			"ferry.yaml:5:5: limits.stomp.max_transactions: must be 1..1024 (got 0)",
			"ferry.yaml:6:5: limits.stomp.max_transaction_messages: must be 1..4096 (got 5000)",
			"ferry.yaml:8:5: limits.stomp.max_connection_transaction_messages: must be at least max_transaction_messages (5000) (got 10)",
			"ferry.yaml:9:5: limits.stomp.max_connection_transaction_bytes: must be max_transaction_bytes (1MiB)..1GiB (got 512KiB)",
		}},
		{"env not set", "gateway_id: ${FERRY_TEST_UNSET_ID}\nbridge: {upstream: '${X'}\n", []string{
			"ferry.yaml:1:1: gateway_id: environment variable FERRY_TEST_UNSET_ID is not set (write ${FERRY_TEST_UNSET_ID:-default} for a default)",
			"ferry.yaml:2:10: bridge.upstream: unterminated ${ in \"${X\"",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("ferry.yaml", []byte(tt.src), nil)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse error = %v, want a *Error", err)
			}
			got := strings.Split(err.Error(), "\n")
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestExpandEnv(t *testing.T) {
	env := map[string]string{"HOST": "broker", "EMPTY": "", "PW": "s3cr$t"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	tests := []struct {
		in, want, err string
	}{
		{"plain", "plain", ""},
		{"tls://${HOST}:8883", "tls://broker:8883", ""},
		{"${PW}", "s3cr$t", ""},
		{"${MISSING:-dflt}", "dflt", ""},
		{"${EMPTY:-dflt}", "dflt", ""},
		{"${EMPTY}", "", ""},
		{"${HOST:-x}${HOST}", "brokerbroker", ""},
		{"$2a$10$abc", "$2a$10$abc", ""},
		{"$${HOST}", "${HOST}", ""},
		{"${MISSING}", "", "environment variable MISSING is not set"},
		{"${1BAD}", "", "bad environment variable name"},
		{"${}", "", "bad environment variable name"},
		{"a${HOST", "", "unterminated"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := expandEnv(tt.in, lookup)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("expandEnv(%q) error = %v, want %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("expandEnv(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestEnvInConfig(t *testing.T) {
	env := map[string]string{"GW": "site-7", "WIN": "128", "PW": "p@ss"}
	src := "gateway_id: ${GW}\nbridge:\n  upstream: tcp://${UP:-127.0.0.1}:1883\n  window: ${WIN}\n  password: ${PW}\n"
	c, err := Parse("ferry.yaml", []byte(src), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if c.GatewayID != "site-7" || c.Bridge.Upstream[0] != "tcp://127.0.0.1:1883" || c.Bridge.Window != 128 || c.Bridge.Password != "p@ss" {
		t.Fatalf("got %q %q %d %q", c.GatewayID, c.Bridge.Upstream, c.Bridge.Window, c.Bridge.Password)
	}
}

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false}, {"1048576", 1 << 20, false}, {"512MiB", 512 << 20, false}, {"1GiB", 1 << 30, false},
		{"1.5GiB", 3 << 29, false}, {"64 KiB", 64 << 10, false}, {"500MB", 500e6, false}, {"1gb", 1e9, false},
		{"10B", 10, false}, {"2TiB", 2 << 40, false},
		{"", 0, true}, {"MiB", 0, true}, {"-1", 0, true}, {"1XB", 0, true}, {"9999999TiB", 0, true}, {"NaN", 0, true},
	}
	for _, tt := range tests {
		var b ByteSize
		err := b.setScalar(tt.in)
		if (err != nil) != tt.err || (!tt.err && int64(b) != tt.want) {
			t.Errorf("ByteSize(%q) = %d, %v; want %d, err %v", tt.in, b, err, tt.want, tt.err)
		}
	}
	for _, b := range []ByteSize{0, 1, 1000, 1 << 10, 3 << 29, 1 << 30} {
		var back ByteSize
		if err := back.setScalar(b.String()); err != nil || back != b {
			t.Errorf("round trip of %d via %q = %d, %v", b, b.String(), back, err)
		}
	}
}

func TestSpoolOptions(t *testing.T) {
	c := mustParse(t, minimal+`limits: {mqtt: {max_packet_size: 64KiB}, stomp: {max_frame_size: 60KiB}}
spool:
  durability: interval
  fsync_interval: 250ms
  max_bytes: 0
  max_messages: 5000
  max_message_bytes: 64KiB
  overflow: drop_lowest_priority
  block_timeout: 2s
  dedupe_window: 0s
  dedupe_max_entries: 99
  lease_timeout: 1m
  lower_lane_share: 0
  expired: dead_letter
  retain_delivered: 1h
  lock_timeout: 3s
  verify: always
`)
	got := c.SpoolOptions(nil)
	want := spool.Options{
		Durability: spool.Interval, FsyncInterval: 250 * time.Millisecond,
		MaxBytes: -1, MaxMessages: 5000, MaxMessageBytes: 64 << 10,
		Overflow: spool.DropLowestPriority, BlockTimeout: 2 * time.Second,
		DedupeWindow: -1, DedupeMaxEntries: 99, LeaseTimeout: time.Minute,
		LowerLaneShare: -1, Expired: spool.ExpireDeadLetter, RetainDelivered: time.Hour,
		LockTimeout: 3 * time.Second, Verify: spool.VerifyAlways,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SpoolOptions\n got %+v\nwant %+v", got, want)
	}
	d := mustParse(t, minimal).SpoolOptions(nil)
	if d.MaxBytes != 1<<30 || d.Overflow != spool.Block || d.Durability != spool.Sync || d.DedupeWindow != 10*time.Minute || d.LowerLaneShare != 0.1 {
		t.Fatalf("default SpoolOptions = %+v", d)
	}
	for _, o := range []string{"block", "reject", "drop_oldest", "drop_lowest_priority"} {
		c := mustParse(t, minimal+"spool: {overflow: "+o+"}\n")
		if got := c.SpoolOptions(nil).Overflow; got != map[string]spool.Overflow{"block": spool.Block, "reject": spool.Reject, "drop_oldest": spool.DropOldest, "drop_lowest_priority": spool.DropLowestPriority}[o] {
			t.Errorf("overflow %s → %v", o, got)
		}
	}
}

func TestBridgeHelpers(t *testing.T) {
	c := mustParse(t, minimal+"  partitions: 3\n  downstream: ['cmd/{gateway_id}/#']\n")
	if got := c.DownstreamFilters(); !reflect.DeepEqual(got, []string{"cmd/gw1/#"}) {
		t.Errorf("DownstreamFilters = %q", got)
	}
	if c.Bridge.IsEmbedded() || !mustParse(t, "gateway_id: g\nbridge: {upstream: embedded}\n").Bridge.IsEmbedded() {
		t.Error("IsEmbedded wrong")
	}
}

func TestLoadUsersFileAndCheckFiles(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(users, []byte("users:\n  - name: dev1\n    password_hash: '"+hashSecret+"'\n    publish: ['d/%u/#']\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cert := filepath.Join(dir, "server.crt")
	if err := os.WriteFile(cert, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "ferry.yaml")
	src := minimal + "users_file: " + users + "\nlisteners:\n  mqtt_tls:\n    address: 0.0.0.0:8883\n    tls:\n      cert_file: " + cert + "\n      key_file: " + filepath.Join(dir, "missing.key") + "\n"
	if err := os.WriteFile(cfg, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(cfg)
	want := cfg + ":10:7: listeners.mqtt_tls.tls.key_file: " + filepath.Join(dir, "missing.key") + ": no such file or directory"
	if err == nil || err.Error() != want {
		t.Fatalf("Load error =\n%v\nwant\n%s", err, want)
	}
	// Files that exist but do not load are a configuration error too
	// (ferry check must fail where ferry run would).
	if err := os.WriteFile(filepath.Join(dir, "missing.key"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(cfg); err == nil || !strings.Contains(err.Error(), "listeners.mqtt_tls.tls.cert_file: ") || !strings.Contains(err.Error(), "do not load as a certificate and key") {
		t.Fatalf("Load with a non-PEM certificate: %v", err)
	}
	certs := testkit.NewCerts(t, t.TempDir())
	for from, to := range map[string]string{certs.ServerCert: cert, certs.ServerKey: filepath.Join(dir, "missing.key")} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Users) != 1 || c.Users[0].Name != "dev1" {
		t.Fatalf("users = %+v", c.Users)
	}

	// A bad users file reports positions in that file.
	if err := os.WriteFile(users, []byte("users:\n  - name: dev1\n    pasword_hash: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(cfg)
	want = users + ":2:5: users[0].password_hash: required: a bcrypt hash (ferry passwd prints one), unless a TLS listener sets username_from\n" +
		users + ":3:5: users[0].pasword_hash: unknown key (did you mean \"password_hash\"?)"
	if err == nil || err.Error() != want {
		t.Fatalf("Load error =\n%v\nwant\n%s", err, want)
	}
	if _, err := Load(filepath.Join(dir, "nope.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

// TestDevYAML checks that configs/dev.yaml is the loopback trial. Every
// file in configs/ is loaded by the gateway's TestConfigsDir, which also
// builds a router and an authorizer from each.
func TestDevYAML(t *testing.T) {
	data, _ := os.ReadFile("../../configs/dev.yaml")
	c, err := Parse("dev.yaml", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Bridge.IsEmbedded() || !c.AllowAnonymous || c.Listeners.MQTT.Address != "127.0.0.1:1883" ||
		c.Listeners.STOMP.Address != "127.0.0.1:61613" || c.Listeners.HTTP.Address != "127.0.0.1:8080" ||
		c.Spool.Path != "./data/spool.db" {
		t.Fatalf("dev.yaml = %+v", c)
	}
	for _, l := range c.listeners() {
		if l.address != "" && !IsLoopback(l.address) {
			t.Errorf("%s = %s is not loopback", l.path, l.address)
		}
	}
}

// TestExampleIsTheDefaults checks that ferry.example.yaml shows every key
// with its default: parsed, it equals Default(), and every leaf key of the
// schema is written in it.
func TestExampleIsTheDefaults(t *testing.T) {
	data, err := os.ReadFile("../../configs/ferry.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("ferry.example.yaml", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.GatewayID = c.GatewayID
	want.Bridge.Upstream = []string{Embedded}
	want.DefaultRoute.Name = "default"
	gotY, _ := yaml.Marshal(c)
	wantY, _ := yaml.Marshal(want)
	if string(gotY) != string(wantY) {
		t.Errorf("ferry.example.yaml differs from Default():\n--- example\n%s\n--- Default\n%s", gotY, wantY)
	}
	for _, path := range schemaKeys(reflect.TypeOf(Config{}), "") {
		if path == "default_route.match" {
			continue // the default route has none
		}
		if _, ok := c.Position(path); !ok {
			t.Errorf("ferry.example.yaml does not show %s", path)
		}
	}
}

// TestConfigurationDoc checks that docs/configuration.md names every key.
func TestConfigurationDoc(t *testing.T) {
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, path := range schemaKeys(reflect.TypeOf(Config{}), "") {
		key := path[strings.LastIndex(path, ".")+1:]
		if !strings.Contains(doc, "`"+key+"`") && !strings.Contains(doc, "."+key+"`") {
			t.Errorf("docs/configuration.md does not mention `%s` (%s)", key, path)
		}
	}
}

// schemaKeys lists the leaf key paths of the schema, not descending into
// lists.
func schemaKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || !f.IsExported() {
			continue
		}
		p := tag
		if prefix != "" {
			p = prefix + "." + tag
		}
		if f.Type.Kind() == reflect.Struct {
			out = append(out, schemaKeys(f.Type, p)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

func TestAliasBomb(t *testing.T) {
	src := "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\nusers: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
	_, err := Parse("ferry.yaml", []byte(src), nil)
	if err == nil {
		t.Fatal("no error")
	}
}

func TestRestartRequired(t *testing.T) {
	old := mustParse(t, routesSrc)
	same := mustParse(t, routesSrc)
	if got := RestartRequired(old, same); len(got) != 0 {
		t.Fatalf("identical configs: %v", got)
	}
	changed := mustParse(t, routesSrc+"allow_anonymous: true\nlog: {level: debug, format: json}\nspool: {max_bytes: 2GiB}\n")
	changed.Routes = changed.Routes[:1]
	changed.Bridge.Window = 8
	if got, want := RestartRequired(old, changed), []string{"bridge", "log.format", "spool"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("RestartRequired = %v, want %v", got, want)
	}
}

func TestEffectiveYAML(t *testing.T) {
	c := mustParse(t, minimal+"users:\n  - {name: dev, password_hash: '"+hashSecret+"', publish: ['#']}\n")
	c.Bridge.Password = "upstream-secret"
	out, err := c.EffectiveYAML()
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if strings.Contains(s, "upstream-secret") || strings.Contains(s, hashSecret) || !strings.Contains(s, "password: REDACTED") {
		t.Fatalf("secrets not redacted:\n%s", s)
	}
	if c.Bridge.Password != "upstream-secret" || c.Users[0].PasswordHash != hashSecret {
		t.Fatal("EffectiveYAML changed the config")
	}
	// The output is itself a valid configuration (secrets aside).
	back, problems, err := decode("effective.yaml", out, nil)
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	again, err := back.EffectiveYAML()
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != s || back.Spool != c.Spool || back.Bridge.Window != c.Bridge.Window {
		t.Fatalf("EffectiveYAML does not round-trip:\n%s\n---\n%s", s, again)
	}
}

func TestIsLoopback(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:1883", true}, {"127.1.2.3:1", true}, {"[::1]:1883", true}, {"localhost:8080", true},
		{":1883", false}, {"0.0.0.0:1883", false}, {"[::]:1883", false}, {"192.168.1.5:1883", false},
		{"gateway.local:1883", false}, {"127.0.0.1", false}, {"", false},
	}
	for _, tt := range tests {
		if got := IsLoopback(tt.addr); got != tt.want {
			t.Errorf("IsLoopback(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestNewLogger(t *testing.T) {
	var b strings.Builder
	LogConfig{Level: "warn", Format: "json"}.NewLogger(&b, nil).Info("hidden")
	LogConfig{Level: "warn", Format: "json"}.NewLogger(&b, nil).Warn("shown", "topic", "a/b")
	if got := b.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `"msg":"shown"`) || !strings.Contains(got, `"topic":"a/b"`) {
		t.Fatalf("json logger wrote %q", got)
	}
	b.Reset()
	LogConfig{Level: "debug", Format: "text"}.NewLogger(&b, nil).Debug("dbg", "lane", 3)
	if got := b.String(); !strings.Contains(got, "msg=dbg lane=3") {
		t.Fatalf("text logger wrote %q", got)
	}
}

// TestIndentationErrors loads real mis-indented files: the problem names the
// line and column where the parser gave up (yaml.v3 named the start of the
// enclosing block, lines above). Each file's first line says what to expect.
func TestIndentationErrors(t *testing.T) {
	files, err := filepath.Glob("testdata/indent/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(b), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok {
				t.Fatalf("first line %q: want \"# want: LINE:COL: reason\"", first)
			}
			if strings.HasPrefix(filepath.Base(f), "users-") {
				_, err = LoadUsers(f)
			} else {
				_, err = Load(f)
			}
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) != 1 {
				t.Fatalf("error = %v, want one problem", err)
			}
			if got := ce.Problems[0].String(); !strings.HasPrefix(got, f+":"+want) {
				t.Errorf("problem:\n  %s\nwant it to start with:\n  %s:%s", got, f, want)
			}
		})
	}
}

// routesSrc has routes and a default route, for RestartRequired.
const routesSrc = minimal + `routes:
  - {name: alarms, match: alarms/#, priority: 0}
  - {name: sensors, match: sensors/#, priority: 7}
default_route:
  priority: 9
`
