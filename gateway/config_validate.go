package gateway

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

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry/protocols/message"
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
	return &ConfigError{Problems: v.problems}
}

func (v *validator) oneOf(path, got string, allowed ...string) {
	for _, a := range allowed {
		if got == a {
			return
		}
	}
	v.addf(path, "must be %s (got %q)", strings.Join(allowed, ", "), got)
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

// Validate checks the configuration and returns a *ConfigError with every
// problem found, or nil. It does not touch the file system: CheckFiles
// checks that the files the configuration names exist.
func (c *Config) Validate() error {
	v := &validator{file: c.file, pos: c.pos}
	if c.GatewayID == "" {
		v.addf("gateway_id", "required: a name for this gateway, used in upstream topics")
	} else if !validID(c.GatewayID) {
		v.addf("gateway_id", "must be letters, digits, '-', '_' or '.' (got %q)", c.GatewayID)
	}
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "text", "json")
	c.validateListeners(v)
	c.validateLimits(v)
	if len(c.Users) > 0 && c.UsersFile != "" {
		v.addf("users_file", "set users or users_file, not both")
	}
	v.users(c.Users)
	v.acl("anonymous", ACL(c.Anonymous))
	c.validateSpool(v)
	c.validateRoutes(v)
	c.validateBridge(v)
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

func (c *Config) listeners() []listenerRef {
	l := &c.Listeners
	return []listenerRef{
		{"listeners.mqtt", l.MQTT.Address, true, nil},
		{"listeners.mqtt_tls", l.MQTTTLS.Address, true, &l.MQTTTLS.TLS},
		{"listeners.websocket", l.WebSocket.Address, true, nil},
		{"listeners.stomp", l.STOMP.Address, true, nil},
		{"listeners.stomp_tls", l.STOMPTLS.Address, true, &l.STOMPTLS.TLS},
		{"listeners.http", l.HTTP.Address, false, nil},
	}
}

func (c *Config) validateListeners(v *validator) {
	seen := map[string]string{}
	ingress := 0
	var exposed []string // non-loopback listener address paths
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
		}
	}
	if ingress == 0 {
		v.addf("listeners", "no MQTT or STOMP listener has an address: the gateway would accept nothing")
	}
	if len(exposed) > 0 && len(c.Users) == 0 && c.UsersFile == "" && !c.AllowAnonymous {
		for _, ap := range exposed {
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

func (v *validator) users(users []User) {
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
			v.addf(p+".password_hash", "required: a bcrypt hash (ferry passwd prints one)")
		} else if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			v.addf(p+".password_hash", "not a bcrypt hash (ferry passwd prints one)")
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
	v.oneOf("spool.durability", s.Durability, "sync", "interval")
	if s.Durability == "interval" {
		v.positive("spool.fsync_interval", s.FsyncInterval)
	}
	if s.MaxMessages < 0 {
		v.addf("spool.max_messages", "must not be negative (got %d)", s.MaxMessages)
	}
	if s.MaxMessageBytes < 1 || s.MaxMessageBytes > message.MaxPayloadSize {
		v.addf("spool.max_message_bytes", "must be 1B..256MiB (got %s)", s.MaxMessageBytes)
	} else if s.MaxBytes > 0 && s.MaxMessageBytes > s.MaxBytes {
		v.addf("spool.max_message_bytes", "must not exceed spool.max_bytes (%s > %s)", s.MaxMessageBytes, s.MaxBytes)
	}
	v.oneOf("spool.overflow", s.Overflow, "block", "reject", "drop_oldest", "drop_lowest_priority")
	if s.Overflow == "block" {
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
	v.oneOf("spool.expired", s.Expired, "drop", "dead_letter")
	v.nonNegative("spool.retain_delivered", s.RetainDelivered)
	v.positive("spool.lock_timeout", s.LockTimeout)
	v.oneOf("spool.verify", s.Verify, "auto", "always", "never")
}

func (c *Config) validateRoutes(v *validator) {
	matches := map[string]int{}
	for i := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		r := &c.Routes[i]
		if r.Match == "" {
			v.addf(p+".match", "required: an MQTT topic filter or a STOMP destination")
		} else if f, err := routeFilter(r.Match); err != nil {
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
	v.oneOf(p+".qos0_when_offline", r.QoS0WhenOffline, "spool", "drop")
	if r.LocalOnly {
		for _, k := range []string{"upstream_topic", "upstream_qos", "ttl", "dedupe", "qos0_when_offline"} {
			if v.set(p + "." + k) {
				v.addf(p+"."+k, "has no effect with local_only: true (local-only messages are never spooled)")
			}
		}
		return
	}
	if _, err := parseTemplate(r.UpstreamTopic, c.GatewayID); err != nil {
		v.addf(p+".upstream_topic", "%v", err)
	}
}

// routeFilter returns the MQTT filter of a route's match: a STOMP
// destination is mapped with message.FromSTOMP.
func routeFilter(match string) (string, error) {
	f := match
	if strings.HasPrefix(match, message.TopicPrefix) || strings.HasPrefix(match, message.QueuePrefix) {
		var err error
		if f, _, err = message.FilterFromSTOMP(match); err != nil {
			return "", err
		}
	}
	if err := message.ValidateFilter(f); err != nil {
		return "", err
	}
	return f, nil
}

var upstreamSchemes = map[string]bool{"tcp": true, "mqtt": true, "ssl": true, "tls": true, "mqtts": true, "ws": true, "wss": true}

func (c *Config) validateBridge(v *validator) {
	b := &c.Bridge
	switch {
	case len(b.Upstream) == 0:
		v.addf("bridge.upstream", "required: broker URL(s) such as tls://broker.example.com:8883, or embedded for development")
	case b.IsEmbedded():
		if err := checkHostPort(b.EmbeddedAddress); err != nil {
			v.addf("bridge.embedded_address", "%v", err)
		} else if !IsLoopback(b.EmbeddedAddress) {
			v.addf("bridge.embedded_address", "must be a loopback address (got %q)", b.EmbeddedAddress)
		}
	default:
		for i, u := range b.Upstream {
			p := fmt.Sprintf("bridge.upstream[%d]", i)
			if len(b.Upstream) == 1 {
				p = "bridge.upstream"
			}
			if u == Embedded {
				v.addf(p, "embedded cannot be combined with other upstreams")
				continue
			}
			if err := checkUpstreamURL(u); err != nil {
				v.addf(p, "%v", err)
			}
		}
	}
	if (b.TLS.CertFile == "") != (b.TLS.KeyFile == "") {
		v.addf("bridge.tls", "cert_file and key_file go together (got only one)")
	}
	if tmpl := strings.ReplaceAll(b.ClientID, "{gateway_id}", ""); strings.ContainsAny(tmpl, "{}") {
		v.addf("bridge.client_id", "unknown placeholder: only {gateway_id} (got %q)", b.ClientID)
	} else if b.ClientID == "" {
		v.addf("bridge.client_id", "required")
	}
	if b.Keepalive < Duration(time.Second) || b.Keepalive > Duration(65535*time.Second) {
		v.addf("bridge.keepalive", "must be 1s..18h12m15s (got %s)", b.Keepalive)
	}
	v.positive("bridge.connect_timeout", b.ConnectTimeout)
	v.intRange("bridge.window", b.Window, 1, 65535)
	v.intRange("bridge.partitions", b.Partitions, 1, 64)
	v.positive("bridge.backoff.base", b.Backoff.Base)
	if b.Backoff.Max < b.Backoff.Base {
		v.addf("bridge.backoff.max", "must be at least backoff.base (%s < %s)", b.Backoff.Max, b.Backoff.Base)
	}
	v.positive("bridge.stable_after", b.StableAfter)
	v.positive("bridge.stall_timeout", b.StallTimeout)
	if b.StallTimeout >= c.Spool.LeaseTimeout && b.StallTimeout > 0 {
		v.addf("bridge.stall_timeout", "must be less than spool.lease_timeout (%s >= %s): leases would expire before a stall is detected", b.StallTimeout, c.Spool.LeaseTimeout)
	}
	if b.MaxAttempts < 4 {
		v.addf("bridge.max_attempts", "must be at least 4 (got %d)", b.MaxAttempts)
	}
	if b.MaxRate.Messages < 0 {
		v.addf("bridge.max_rate.messages", "must not be negative (got %g)", b.MaxRate.Messages)
	}
	v.oneOf("bridge.format", b.Format, "raw", "envelope")
	for i, f := range c.DownstreamFilters() {
		p := fmt.Sprintf("bridge.downstream[%d]", i)
		if strings.ContainsAny(strings.ReplaceAll(b.Downstream[i], "{gateway_id}", ""), "{}") {
			v.addf(p, "unknown placeholder: only {gateway_id} (got %q)", b.Downstream[i])
		} else if err := message.ValidateFilter(f); err != nil {
			v.addf(p, "%v", err)
		}
	}
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
	if !c.Bridge.IsEmbedded() {
		check("bridge.tls.ca_file", c.Bridge.TLS.CAFile)
		check("bridge.tls.cert_file", c.Bridge.TLS.CertFile)
		check("bridge.tls.key_file", c.Bridge.TLS.KeyFile)
		pair("bridge.tls", c.Bridge.TLS.CertFile, c.Bridge.TLS.KeyFile)
		pool("bridge.tls.ca_file", c.Bridge.TLS.CAFile)
	}
	return v.err()
}
