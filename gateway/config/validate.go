package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/gateway/internal/passwordhash"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

type validator struct {
	file     string
	pos      map[string]Position
	problems []Problem
}

// has reports whether a problem about path was recorded already.
func (v *validator) has(path string) bool {
	for _, p := range v.problems {
		if p.Path == path {
			return true
		}
	}
	return false
}

// addf records a problem about path at the position of path's key, or of
// its nearest written ancestor when the value is a default.
func (v *validator) addf(path, format string, args ...any) {
	p := Problem{File: v.file, Path: path, Reason: fmt.Sprintf(format, args...)}
	for q := path; q != ""; q = parentPath(q) {
		if at, ok := v.pos[q]; ok {
			p.Line, p.Column = at.Line, at.Column
			break
		}
	}
	v.problems = append(v.problems, p)
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func (v *validator) set(path string) bool {
	_, ok := v.pos[path]
	return ok
}

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	sortProblems(v.problems)
	return &Error{Problems: v.problems}
}

// check records the problem of an enum value (enums.go), if any.
func (v *validator) check(path string, e interface{ Validate() error }) {
	if err := e.Validate(); err != nil {
		v.addf(path, "%v", err)
	}
}

func (v *validator) intRange(path string, got, lo, hi int) {
	if got < lo || got > hi {
		v.addf(path, "must be %d..%d (got %d)", lo, hi, got)
	}
}

func (v *validator) positive(path string, d Duration) {
	if d <= 0 {
		v.addf(path, "must be more than 0 (got %s)", d)
	}
}

func (v *validator) nonNegative(path string, d Duration) {
	if d < 0 {
		v.addf(path, "must not be negative (got %s)", d)
	}
}

// Validate checks the configuration and returns a *Error with every
// problem found, or nil. It does not touch the file system: CheckFiles
// checks that the files the configuration names exist.
func (c *Config) Validate() error {
	v := &validator{file: c.file, pos: c.pos}
	if c.GatewayID == "" {
		v.addf("gateway_id", "required: a name for this gateway, used in upstream topics")
	} else if !validID(c.GatewayID) {
		v.addf("gateway_id", "must be letters, digits, '-', '_' or '.' (got %q)", c.GatewayID)
	}
	v.check("log.level", c.Log.Level)
	v.check("log.format", c.Log.Format)
	c.validateListeners(v)
	c.validateHTTP(v)
	c.validateLimits(v)
	if len(c.Users) > 0 && c.UsersFile != "" {
		v.addf("users_file", "set users or users_file, not both")
	}
	v.users(c.Users, c.certLogins())
	v.acl("anonymous", ACL(c.Anonymous))
	c.validateSpool(v)
	c.validateRoutes(v)
	c.validateBridge(v)
	c.validateState(v)
	return v.err()
}

func validID(s string) bool {
	for _, r := range s {
		switch {
		case r == '-', r == '_', r == '.', r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		default:
			return false
		}
	}
	return s != ""
}

// listenerRef is one configured listener, for the checks common to all.
type listenerRef struct {
	path    string
	address string
	ingress bool
	tls     *ServerTLS
}

// listeners returns every listener; tls is set when the listener speaks
// TLS: always for mqtt_tls and stomp_tls, for the others when their tls
// block is configured.
func (c *Config) listeners() []listenerRef {
	l := &c.Listeners
	opt := func(t *ServerTLS) *ServerTLS {
		if t.configured() {
			return t
		}
		return nil
	}
	return []listenerRef{
		{"listeners.mqtt", l.MQTT.Address, true, opt(&l.MQTT.TLS)},
		{"listeners.mqtt_tls", l.MQTTTLS.Address, true, &l.MQTTTLS.TLS},
		{"listeners.websocket", l.WebSocket.Address, true, opt(&l.WebSocket.TLS)},
		{"listeners.stomp", l.STOMP.Address, true, opt(&l.STOMP.TLS)},
		{"listeners.stomp_tls", l.STOMPTLS.Address, true, &l.STOMPTLS.TLS},
		{"listeners.stomp_websocket", l.STOMPWebSocket.Address, true, opt(&l.STOMPWebSocket.TLS)},
		{"listeners.http", l.HTTP.Address, false, opt(&l.HTTP.TLS)},
	}
}

// tlsOf returns the listener's tls block when it speaks TLS, else nil.
func (c *Config) tlsOf(path string) *ServerTLS {
	for _, l := range c.listeners() {
		if l.path == path {
			return l.tls
		}
	}
	return nil
}

func (c *Config) validateListeners(v *validator) {
	seen := map[string]string{}
	ingress := 0
	var exposed []string // non-loopback listener address paths
	var exposedIngress []string
	l := &c.Listeners
	for i, t := range []*ServerTLS{&l.MQTT.TLS, &l.MQTTTLS.TLS, &l.WebSocket.TLS, &l.STOMP.TLS, &l.STOMPTLS.TLS, &l.STOMPWebSocket.TLS, &l.HTTP.TLS} {
		v.check(c.listeners()[i].path+".tls.min_version", t.MinVersion)
	}
	if p := l.STOMPWebSocket.Path; !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#{} ") {
		v.addf("listeners.stomp_websocket.path", "must be a URL path starting with / (got %q)", p)
	}
	if l.HTTP.TLS.UsernameFrom != "" {
		v.addf("listeners.http.tls.username_from", "not for the HTTP listener, which logs in with listeners.http.auth")
	}
	for _, l := range c.listeners() {
		if l.address == "" {
			continue
		}
		ap := l.path + ".address"
		if l.ingress {
			ingress++
		}
		if err := checkHostPort(l.address); err != nil {
			v.addf(ap, "%v", err)
			continue
		}
		// Port 0 asks the system for a free port: never a clash.
		if other, dup := seen[l.address]; dup && !strings.HasSuffix(l.address, ":0") {
			v.addf(ap, "%s is already used by %s", l.address, other)
		}
		seen[l.address] = l.path
		if !IsLoopback(l.address) {
			exposed = append(exposed, ap)
			if l.ingress {
				exposedIngress = append(exposedIngress, ap)
			}
		}
		if l.tls != nil {
			tp := l.path + ".tls"
			if l.tls.CertFile == "" {
				v.addf(tp+".cert_file", "required for a TLS listener")
			}
			if l.tls.KeyFile == "" {
				v.addf(tp+".key_file", "required for a TLS listener")
			}
			if l.tls.RequireClientCert && l.tls.ClientCAFile == "" {
				v.addf(tp+".client_ca_file", "required with require_client_cert: true")
			}
			if l.tls.UsernameFrom != "" {
				v.check(tp+".username_from", l.tls.UsernameFrom)
				if l.tls.ClientCAFile == "" && !v.has(tp+".client_ca_file") {
					v.addf(tp+".client_ca_file", "required with username_from: only verified certificates name users")
				}
			}
		}
	}
	if ingress == 0 {
		v.addf("listeners", "no MQTT or STOMP listener has an address: the gateway would accept nothing")
	}
	// Users log in to MQTT and STOMP; the HTTP listener has its own
	// listeners.http.auth (validateHTTP).
	if len(exposedIngress) > 0 && len(c.Users) == 0 && c.UsersFile == "" && !c.AllowAnonymous {
		for _, ap := range exposedIngress {
			v.addf(ap, "listens beyond loopback but no users are configured: add users (or users_file), or set allow_anonymous: true explicitly")
		}
	}
	if c.Bridge.IsEmbedded() {
		for _, ap := range exposed {
			v.addf(ap, "bridge.upstream: embedded is for development and requires loopback-only listeners (got %s)", addrAt(c, ap))
		}
	}
}

func (c *Config) validateLimits(v *validator) {
	m, p := &c.Limits.MQTT, "limits.mqtt"
	if m.MaxConnections < 0 {
		v.addf(p+".max_connections", "must not be negative (got %d)", m.MaxConnections)
	}
	if m.MaxPacketSize < 16 || m.MaxPacketSize > message.MaxPayloadSize {
		v.addf(p+".max_packet_size", "must be 16B..256MiB (got %s)", m.MaxPacketSize)
	} else if m.MaxPacketSize > c.Spool.MaxMessageBytes {
		v.addf(p+".max_packet_size", "must not exceed spool.max_message_bytes (%s > %s): larger messages could never be stored", m.MaxPacketSize, c.Spool.MaxMessageBytes)
	}
	if m.PublishRate < 0 {
		v.addf(p+".publish_rate", "must not be negative (got %g)", m.PublishRate)
	}
	if m.PublishBurst < 0 {
		v.addf(p+".publish_burst", "must not be negative (got %d)", m.PublishBurst)
	}
	v.intRange(p+".max_topic_length", m.MaxTopicLength, 1, message.MaxTopicLen)
	v.intRange(p+".max_topic_levels", m.MaxTopicLevels, 1, 1024)
	v.positive(p+".accept_timeout", m.AcceptTimeout)
	v.positive(p+".connect_timeout", m.ConnectTimeout)
	v.positive(p+".read_timeout", m.ReadTimeout)
	v.intRange(p+".max_pending", m.MaxPending, 1, 1<<20)
	if m.MaxConnectSize < 64 || m.MaxConnectSize > m.MaxPacketSize {
		v.addf(p+".max_connect_size", "must be 64B..max_packet_size (%s) (got %s)", m.MaxPacketSize, m.MaxConnectSize)
	}
	v.intRange(p+".max_inflight", m.MaxInflight, 1, 65535)
	v.positive(p+".write_timeout", m.WriteTimeout)
	if ka := m.MaxKeepalive.D(); ka < 0 || ka > 65535*time.Second || ka%time.Second != 0 {
		v.addf(p+".max_keepalive", "must be whole seconds, 0 (no cap) or 1s..65535s (got %s)", ka)
	}
	if m.WriteBuffer < 0 || (m.WriteBuffer > 0 && m.WriteBuffer < m.MaxPacketSize) {
		v.addf(p+".write_buffer", "must be at least max_packet_size (%s), or 0 for the default (got %s)", m.MaxPacketSize, m.WriteBuffer)
	}

	st, p := &c.Limits.STOMP, "limits.stomp"
	if st.MaxConnections < 0 {
		v.addf(p+".max_connections", "must not be negative (got %d)", st.MaxConnections)
	}
	if st.MaxFrameSize < 1 || st.MaxFrameSize > message.MaxPayloadSize {
		v.addf(p+".max_frame_size", "must be 1B..256MiB (got %s)", st.MaxFrameSize)
	} else if st.MaxFrameSize > c.Spool.MaxMessageBytes {
		v.addf(p+".max_frame_size", "must not exceed spool.max_message_bytes (%s > %s): larger messages could never be stored", st.MaxFrameSize, c.Spool.MaxMessageBytes)
	}
	v.intRange(p+".max_headers", st.MaxHeaders, 1, message.MaxHeaders)
	if st.MaxHeaderLine < 64 || st.MaxHeaderLine > 1<<20 {
		v.addf(p+".max_header_line", "must be 64B..1MiB (got %s)", st.MaxHeaderLine)
	}
	v.nonNegative(p+".heartbeat", st.Heartbeat)
	v.positive(p+".accept_timeout", st.AcceptTimeout)
	v.positive(p+".read_timeout", st.ReadTimeout)
	v.positive(p+".connect_timeout", st.ConnectTimeout)
	v.intRange(p+".max_pending", st.MaxPending, 1, 1<<20)
	if st.MaxConnectSize < 64 || st.MaxConnectSize > 1<<20 {
		v.addf(p+".max_connect_size", "must be 64B..1MiB (got %s)", st.MaxConnectSize)
	}
	if st.PublishRate < 0 {
		v.addf(p+".publish_rate", "must not be negative (got %g)", st.PublishRate)
	}
	if st.PublishBurst < 0 {
		v.addf(p+".publish_burst", "must not be negative (got %d)", st.PublishBurst)
	}
	v.intRange(p+".max_transactions", st.MaxTransactions, 1, 1024)
	v.intRange(p+".max_transaction_messages", st.MaxTransactionMessages, 1, spool.MaxBatchEntries)
	if st.MaxTransactionBytes < 1 || st.MaxTransactionBytes > 1<<30 {
		v.addf(p+".max_transaction_bytes", "must be 1B..1GiB (got %s)", st.MaxTransactionBytes)
	}
	if st.MaxConnectionTransactionMessages < st.MaxTransactionMessages {
		v.addf(p+".max_connection_transaction_messages", "must be at least max_transaction_messages (%d) (got %d)", st.MaxTransactionMessages, st.MaxConnectionTransactionMessages)
	}
	if st.SubscriptionQueueBytes < 1<<10 || st.SubscriptionQueueBytes > 1<<30 {
		v.addf(p+".subscription_queue_bytes", "must be 1KiB..1GiB (got %s)", st.SubscriptionQueueBytes)
	}
	if st.MaxConnectionTransactionBytes < st.MaxTransactionBytes || st.MaxConnectionTransactionBytes > 1<<30 {
		v.addf(p+".max_connection_transaction_bytes", "must be max_transaction_bytes (%s)..1GiB (got %s)", st.MaxTransactionBytes, st.MaxConnectionTransactionBytes)
	}

	lg, p := &c.Limits.Login, "limits.login"
	if lg.MaxConcurrent < 0 {
		v.addf(p+".max_concurrent", "must not be negative (got %d)", lg.MaxConcurrent)
	}
	if lg.MaxFailures < 0 {
		v.addf(p+".max_failures", "must not be negative (got %d)", lg.MaxFailures)
	}
	if lg.MaxFailures > 0 {
		v.positive(p+".failure_interval", lg.FailureInterval)
	}
}

// certLogins reports whether some TLS listener takes usernames from client
// certificates.
func (c *Config) certLogins() bool {
	for _, l := range c.listeners() {
		if l.tls != nil && l.address != "" && l.tls.UsernameFrom != "" {
			return true
		}
	}
	return false
}

func addrAt(c *Config, ap string) string {
	for _, l := range c.listeners() {
		if l.path+".address" == ap {
			return l.address
		}
	}
	return ""
}

func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port (got %q)", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port must be 0..65535 (got %q)", port)
	}
	return nil
}

// IsLoopback reports whether a host:port listens on loopback only: a
// loopback IP or "localhost". An empty host (all interfaces) and any other
// name count as exposed.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// users checks a users list. A user without a password_hash can log in
// only with a client certificate, so it is refused unless certLogins.
func (v *validator) users(users []User, certLogins bool) {
	names := map[string]int{}
	for i, u := range users {
		p := fmt.Sprintf("users[%d]", i)
		switch {
		case u.Name == "":
			v.addf(p+".name", "required")
		case strings.ContainsAny(u.Name, "/+#\x00") || strings.TrimSpace(u.Name) != u.Name:
			v.addf(p+".name", "must not contain '/', '+', '#', NUL or surrounding spaces (got %q)", u.Name)
		default:
			if j, dup := names[u.Name]; dup {
				v.addf(p+".name", "%q is already users[%d]", u.Name, j)
			}
			names[u.Name] = i
		}
		if u.PasswordHash == "" {
			if !certLogins {
				v.addf(p+".password_hash", "required: a bcrypt hash (ferry passwd prints one), unless a TLS listener sets username_from")
			}
		} else if _, err := passwordhash.Check(u.PasswordHash); err != nil {
			v.addf(p+".password_hash", "%v", err)
		}
		v.acl(p, ACL{Publish: u.Publish, Subscribe: u.Subscribe})
	}
}

func (v *validator) acl(p string, a ACL) {
	for _, list := range []struct {
		key     string
		filters []string
	}{{"publish", a.Publish}, {"subscribe", a.Subscribe}} {
		for i, f := range list.filters {
			// Substitute a plain name for %u and %c to check the shape.
			probe := strings.NewReplacer("%u", "u", "%c", "c").Replace(f)
			if err := message.ValidateFilter(probe); err != nil {
				v.addf(fmt.Sprintf("%s.%s[%d]", p, list.key, i), "%v", err)
			}
		}
	}
}

func (c *Config) validateSpool(v *validator) {
	s := &c.Spool
	if s.Path == "" {
		v.addf("spool.path", "required")
	}
	v.check("spool.durability", s.Durability)
	if s.Durability == DurabilityInterval {
		v.positive("spool.fsync_interval", s.FsyncInterval)
	}
	if s.MaxMessages < 0 {
		v.addf("spool.max_messages", "must not be negative (got %d)", s.MaxMessages)
	}
	if strconv.IntSize == 32 && (s.MaxBytes <= 0 || s.MaxBytes > spool.Max32BitBytes) {
		v.addf("spool.max_bytes", "must be 1B..1GiB on this 32-bit system, whose address space cannot map a bigger spool (got %s; 0 means no cap)", s.MaxBytes)
	}
	if s.MaxMessageBytes < 1 || s.MaxMessageBytes > message.MaxPayloadSize {
		v.addf("spool.max_message_bytes", "must be 1B..256MiB (got %s)", s.MaxMessageBytes)
	} else if s.MaxBytes > 0 && s.MaxMessageBytes > s.MaxBytes {
		v.addf("spool.max_message_bytes", "must not exceed spool.max_bytes (%s > %s)", s.MaxMessageBytes, s.MaxBytes)
	}
	v.check("spool.overflow", s.Overflow)
	if s.Overflow == OverflowBlock {
		v.positive("spool.block_timeout", s.BlockTimeout)
	}
	v.nonNegative("spool.dedupe_window", s.DedupeWindow)
	if s.DedupeMaxEntries < 1 {
		v.addf("spool.dedupe_max_entries", "must be at least 1 (got %d)", s.DedupeMaxEntries)
	}
	v.positive("spool.lease_timeout", s.LeaseTimeout)
	if s.LowerLaneShare < 0 || s.LowerLaneShare > 1 {
		v.addf("spool.lower_lane_share", "must be 0..1 (got %g)", s.LowerLaneShare)
	}
	v.check("spool.expired", s.Expired)
	v.nonNegative("spool.retain_delivered", s.RetainDelivered)
	v.positive("spool.lock_timeout", s.LockTimeout)
	v.check("spool.verify", s.Verify)
}

func (c *Config) validateRoutes(v *validator) {
	matches := map[string]int{}
	for i := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		r := &c.Routes[i]
		if r.Match == "" {
			v.addf(p+".match", "required: an MQTT topic filter or a STOMP destination")
		} else if f, err := RouteFilter(r.Match); err != nil {
			v.addf(p+".match", "%v", err)
		} else {
			if j, dup := matches[f]; dup {
				v.addf(p+".match", "same filter as routes[%d], which always wins: this route is never used", j)
			}
			matches[f] = i
		}
		c.validateRoute(v, p, r)
	}
	if v.set("default_route.match") {
		v.addf("default_route.match", "the default route takes every topic no route matches: remove match")
	}
	c.validateRoute(v, "default_route", &c.DefaultRoute)
}

func (c *Config) validateRoute(v *validator, p string, r *RouteConfig) {
	v.intRange(p+".priority", r.Priority, 0, message.MaxPriority)
	v.nonNegative(p+".ttl", r.TTL)
	if _, err := message.ParseDedupe(r.Dedupe); err != nil {
		v.addf(p+".dedupe", "%v", err)
	}
	v.intRange(p+".upstream_qos", r.UpstreamQoS, 0, 1)
	v.check(p+".qos0_when_offline", r.QoS0WhenOffline)
	if r.LocalOnly {
		for _, k := range []string{"upstream_topic", "upstream_qos", "upstream_retain", "ttl", "dedupe", "qos0_when_offline", "upstreams"} {
			if v.set(p + "." + k) {
				v.addf(p+"."+k, "has no effect with local_only: true (local-only messages are never spooled)")
			}
		}
		return
	}
	if _, err := ParseTemplate(r.UpstreamTopic, c.GatewayID); err != nil {
		v.addf(p+".upstream_topic", "%v", err)
	}
	c.validateRouteUpstreams(v, p, r)
}

var upstreamSchemes = map[string]bool{"tcp": true, "mqtt": true, "ssl": true, "tls": true, "mqtts": true, "ws": true, "wss": true, "nats": true}

func (c *Config) validateBridge(v *validator) {
	c.validateBridgeBlock(v, "bridge", &c.Bridge)
	v.downstream(c)
	c.validateUpstreams(v)
}

// validateBridgeBlock checks one bridge block (the bridge section, or an
// upstreams entry's bridge) whose keys are under p.
func (c *Config) validateBridgeBlock(v *validator, p string, b *BridgeConfig) {
	switch {
	case len(b.Upstream) == 0:
		v.addf(p+".upstream", "required: broker URL(s) such as tls://broker.example.com:8883, or embedded for development")
	case b.IsEmbedded():
		if err := checkHostPort(b.EmbeddedAddress); err != nil {
			v.addf(p+".embedded_address", "%v", err)
		} else if !IsLoopback(b.EmbeddedAddress) {
			v.addf(p+".embedded_address", "must be a loopback address (got %q)", b.EmbeddedAddress)
		}
	default:
		for i, u := range b.Upstream {
			up := fmt.Sprintf("%s.upstream[%d]", p, i)
			if len(b.Upstream) == 1 {
				up = p + ".upstream"
			}
			if u == Embedded {
				v.addf(up, "embedded cannot be combined with other upstreams")
				continue
			}
			if err := checkUpstreamURL(u); err != nil {
				v.addf(up, "%v", err)
			}
		}
	}
	if nats := strings.HasPrefix(firstOr(b.Upstream), "nats://"); nats || b.JetStream.Stream != "" || b.JetStream.SubjectPrefix != "" {
		for i, u := range b.Upstream {
			if strings.HasPrefix(u, "nats://") != nats {
				v.addf(fmt.Sprintf("%s.upstream[%d]", p, i), "NATS (nats://) and MQTT upstreams cannot be mixed (got %q)", u)
			}
		}
		if !nats {
			v.addf(p+".jetstream", "only for a nats:// upstream")
		}
		if nats && len(b.Downstream) > 0 {
			v.addf(p+".downstream", "not supported on a JetStream (nats://) upstream")
		}
		if sp := b.JetStream.SubjectPrefix; sp != "" && (strings.ContainsAny(sp, " \t*>") || strings.HasPrefix(sp, ".") || strings.HasSuffix(sp, ".") || strings.Contains(sp, "..")) {
			v.addf(p+".jetstream.subject_prefix", "must be NATS subject tokens without wildcards or spaces, such as ferry.site1 (got %q)", sp)
		}
	}
	if b.FailbackAfter < 0 {
		v.addf(p+".failback_after", "must not be negative (got %s)", b.FailbackAfter)
	}
	if b.Protocol != 4 && b.Protocol != 5 {
		v.addf(p+".protocol", "must be 4 (MQTT 3.1.1) or 5 (MQTT 5) (got %d)", b.Protocol)
	}
	if (b.TLS.CertFile == "") != (b.TLS.KeyFile == "") {
		v.addf(p+".tls", "cert_file and key_file go together (got only one)")
	}
	if tmpl := strings.ReplaceAll(b.ClientID, "{gateway_id}", ""); strings.ContainsAny(tmpl, "{}") {
		v.addf(p+".client_id", "unknown placeholder: only {gateway_id} (got %q)", b.ClientID)
	} else if b.ClientID == "" {
		v.addf(p+".client_id", "required")
	}
	if b.Keepalive < Duration(time.Second) || b.Keepalive > Duration(65535*time.Second) {
		v.addf(p+".keepalive", "must be 1s..18h12m15s (got %s)", b.Keepalive)
	}
	v.positive(p+".connect_timeout", b.ConnectTimeout)
	v.intRange(p+".window", b.Window, 1, 65535)
	v.intRange(p+".partitions", b.Partitions, 1, 64)
	v.positive(p+".backoff.base", b.Backoff.Base)
	if b.Backoff.Max < b.Backoff.Base {
		v.addf(p+".backoff.max", "must be at least backoff.base (%s < %s)", b.Backoff.Max, b.Backoff.Base)
	}
	v.positive(p+".stable_after", b.StableAfter)
	v.positive(p+".stall_timeout", b.StallTimeout)
	if b.StallTimeout >= c.Spool.LeaseTimeout && b.StallTimeout > 0 {
		v.addf(p+".stall_timeout", "must be less than spool.lease_timeout (%s >= %s): leases would expire before a stall is detected", b.StallTimeout, c.Spool.LeaseTimeout)
	}
	if b.MaxAttempts < 4 {
		v.addf(p+".max_attempts", "must be at least 4 (got %d)", b.MaxAttempts)
	}
	if b.MaxRate.Messages < 0 {
		v.addf(p+".max_rate.messages", "must not be negative (got %g)", b.MaxRate.Messages)
	}
	v.check(p+".format", b.Format)
}

func firstOr(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func checkUpstreamURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || !upstreamSchemes[u.Scheme] {
		return fmt.Errorf("want a URL such as tcp://host:1883, tls://host:8883 or wss://host/mqtt, or embedded (got %q)", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port must be 1..65535 (got %q)", p)
		}
	}
	return nil
}

// CheckFiles checks that every TLS certificate, key and CA file the
// configuration names exists and is readable (users_file is read by
// LoadUsersFile). Load runs
// it; it is separate from Validate so that a configuration can be checked
// on a machine that does not hold its files (the tests of configs/ do).
func (c *Config) CheckFiles() error {
	v := &validator{file: c.file, pos: c.pos}
	check := func(path, name string) {
		if name == "" {
			return
		}
		f, err := os.Open(name)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			v.addf(path, "%s: %v", name, err)
			return
		}
		_ = f.Close()
	}
	// Files that exist must also load: `ferry check` passing and `ferry run`
	// failing on the same file would make a systemd ExecStartPre check
	// worthless and the service a restart loop.
	pair := func(path, cert, key string) {
		if cert == "" || key == "" || v.has(path+".cert_file") || v.has(path+".key_file") {
			return
		}
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			v.addf(path+".cert_file", "%s and %s do not load as a certificate and key: %v", cert, key, err)
		}
	}
	pool := func(path, name string) {
		if name == "" || v.has(path) {
			return
		}
		if pem, err := os.ReadFile(name); err == nil && !x509.NewCertPool().AppendCertsFromPEM(pem) {
			v.addf(path, "%s: no PEM certificate in it", name)
		}
	}
	for _, l := range c.listeners() {
		if l.tls == nil || l.address == "" {
			continue
		}
		check(l.path+".tls.cert_file", l.tls.CertFile)
		check(l.path+".tls.key_file", l.tls.KeyFile)
		check(l.path+".tls.client_ca_file", l.tls.ClientCAFile)
		pair(l.path+".tls", l.tls.CertFile, l.tls.KeyFile)
		pool(l.path+".tls.client_ca_file", l.tls.ClientCAFile)
	}
	for _, b := range c.bridgeBlocks() {
		if b.bc.IsEmbedded() {
			continue
		}
		t := b.bc.TLS
		check(b.path+".tls.ca_file", t.CAFile)
		check(b.path+".tls.cert_file", t.CertFile)
		check(b.path+".tls.key_file", t.KeyFile)
		pair(b.path+".tls", t.CertFile, t.KeyFile)
		pool(b.path+".tls.ca_file", t.CAFile)
	}
	return v.err()
}

// Warnings returns what is allowed but probably wrong, as "path: text"
// lines, with the positions of Problems: private key files that every user
// of the machine can read (anyone who can read the key can impersonate the
// gateway). gateway.New logs them; ferry check prints them.
func (c *Config) Warnings() []string {
	var out []string
	key := func(path, name string) {
		if name == "" {
			return
		}
		fi, err := os.Stat(name)
		if err != nil || fi.Mode().Perm()&0o004 == 0 {
			return
		}
		p := Problem{File: c.file, Path: path, Reason: fmt.Sprintf("%s is readable by every user (mode %#o): chmod o-r it (0600 or 0640)", name, fi.Mode().Perm())}
		if at, ok := c.pos[path]; ok {
			p.Line, p.Column = at.Line, at.Column
		}
		out = append(out, p.String())
	}
	for _, l := range c.listeners() {
		if l.tls != nil && l.address != "" {
			key(l.path+".tls.key_file", l.tls.KeyFile)
		}
	}
	for _, b := range c.bridgeBlocks() {
		if !b.bc.IsEmbedded() {
			key(b.path+".tls.key_file", b.bc.TLS.KeyFile)
		}
	}
	return out
}
