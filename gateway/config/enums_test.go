package config

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// TestEnums checks, for every enum of the configuration, that each allowed
// word maps to its value in the target package, that "" maps to the
// target's zero (as a zero Options field would), and that Validate names
// the allowed words.
func TestEnums(t *testing.T) {
	type enum interface{ Validate() error }
	tests := []struct {
		name   string
		values map[enum]any
		blank  enum // the type's ""
		empty  any  // what blank maps to
		bad    enum
		want   string
		mapped func(enum) any
	}{
		{"durability", map[enum]any{DurabilitySync: spool.Sync, DurabilityInterval: spool.Interval}, Durability(""), spool.Sync,
			Durability("lazy"), `must be sync, interval (got "lazy")`, func(e enum) any { return e.(Durability).Spool() }},
		{"overflow", map[enum]any{OverflowBlock: spool.Block, OverflowReject: spool.Reject, OverflowDropOldest: spool.DropOldest, OverflowDropLowestPriority: spool.DropLowestPriority}, Overflow(""), spool.Block,
			Overflow("spill"), `must be block, reject, drop_oldest, drop_lowest_priority (got "spill")`, func(e enum) any { return e.(Overflow).Spool() }},
		{"expired", map[enum]any{ExpireDrop: spool.ExpireDrop, ExpireDeadLetter: spool.ExpireDeadLetter}, ExpiryAction(""), spool.ExpireDrop,
			ExpiryAction("keep"), `must be drop, dead_letter (got "keep")`, func(e enum) any { return e.(ExpiryAction).Spool() }},
		{"verify", map[enum]any{VerifyAuto: spool.VerifyAuto, VerifyAlways: spool.VerifyAlways, VerifyNever: spool.VerifyNever}, Verify(""), spool.VerifyAuto,
			Verify("sometimes"), `must be auto, always, never (got "sometimes")`, func(e enum) any { return e.(Verify).Spool() }},
		{"format", map[enum]any{FormatRaw: bridge.FormatRaw, FormatEnvelope: bridge.FormatEnvelope}, Format(""), bridge.FormatRaw,
			Format("json"), `must be raw, envelope (got "json")`, func(e enum) any { return e.(Format).Bridge() }},
		{"qos0_when_offline", map[enum]any{QoS0Spool: message.QoS0Spool, QoS0Drop: message.QoS0Drop}, QoS0Policy(""), message.QoS0Spool,
			QoS0Policy("later"), `must be spool, drop (got "later")`, func(e enum) any { return e.(QoS0Policy).Message() }},
		{"log.level", map[enum]any{LogDebug: slog.LevelDebug, LogInfo: slog.LevelInfo, LogWarn: slog.LevelWarn, LogError: slog.LevelError}, LogLevel(""), slog.LevelInfo,
			LogLevel("loud"), `must be debug, info, warn, error (got "loud")`, func(e enum) any { return e.(LogLevel).Slog() }},
		{"log.format", map[enum]any{LogText: LogText, LogJSON: LogJSON}, LogFormat(""), nil,
			LogFormat("xml"), `must be text, json (got "xml")`, nil},
		{"tls.min_version", map[enum]any{TLS12: uint16(tls.VersionTLS12), TLS13: uint16(tls.VersionTLS13)}, TLSVersion(""), uint16(tls.VersionTLS12),
			TLSVersion("1.1"), `must be 1.2 or 1.3 (got "1.1")`, func(e enum) any { return e.(TLSVersion).TLS() }},
		{"tls.username_from", map[enum]any{UsernameFromCN: nil, UsernameFromSANDNS: nil, UsernameFromSANEmail: nil, UsernameFromSANURI: nil, UsernameFrom(""): nil}, UsernameFrom(""), nil,
			UsernameFrom("subject"), `must be cn, san_dns, san_email, san_uri (got "subject")`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for e, want := range tt.values {
				if err := e.Validate(); err != nil {
					t.Errorf("%q: %v", e, err)
				}
				if tt.mapped != nil {
					if got := tt.mapped(e); got != want {
						t.Errorf("%q maps to %v, want %v", e, got, want)
					}
				}
			}
			if err := tt.bad.Validate(); err == nil || err.Error() != tt.want {
				t.Errorf("Validate(%q) = %v, want %q", tt.bad, err, tt.want)
			}
			if tt.mapped != nil {
				if got := tt.mapped(tt.blank); got != tt.empty {
					t.Errorf(`"" maps to %v, want %v`, got, tt.empty)
				}
			}
		})
	}
}

// TestCertUsername checks which name of a certificate each username_from
// takes, and that a certificate without it is refused.
func TestCertUsername(t *testing.T) {
	u, _ := url.Parse("spiffe://site/pump1")
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "cn-user"}, DNSNames: []string{"dns-user"},
		EmailAddresses: []string{"mail@user"}, URIs: []*url.URL{u}}
	for from, want := range map[UsernameFrom]string{UsernameFromCN: "cn-user", UsernameFromSANDNS: "dns-user", UsernameFromSANEmail: "mail@user", UsernameFromSANURI: "spiffe://site/pump1"} {
		got, err := from.CertUsername()(cert)
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", from, got, err, want)
		}
		if _, err := from.CertUsername()(&x509.Certificate{}); err == nil {
			t.Errorf("%s: a certificate without the name was accepted", from)
		}
	}
	if UsernameFrom("").CertUsername() != nil {
		t.Error(`"" gives a CertUsername`)
	}
}

// TestProtocolOptions checks the "0: none" keys of the listeners' limits:
// none in the configuration is the target package's negative none.
func TestProtocolOptions(t *testing.T) {
	c := mustParse(t, minimal+"limits: {mqtt: {max_connections: 0, max_keepalive: 90s}, stomp: {heartbeat: 0s, max_connections: 0}}\n")
	m := c.MQTTOptions(nil)
	if m.MaxConnections != -1 || m.MaxKeepalive != 90 || m.WriteBuffer != 0 {
		t.Errorf("MQTTOptions: max_connections %d, max_keepalive %d, write_buffer %d", m.MaxConnections, m.MaxKeepalive, m.WriteBuffer)
	}
	s := c.STOMPOptions()
	if s.HeartBeat != [2]time.Duration{-1, -1} || s.MaxConnections != 0 {
		t.Errorf("STOMPOptions: heartbeat %v, max_connections %d", s.HeartBeat, s.MaxConnections)
	}
	d := mustParse(t, minimal)
	if m := d.MQTTOptions(nil); m.MaxConnections != 1000 {
		t.Errorf("default max_connections = %d", m.MaxConnections)
	}
	if s := d.STOMPOptions(); s.HeartBeat != [2]time.Duration{10 * time.Second, 10 * time.Second} {
		t.Errorf("default heartbeat = %v", s.HeartBeat)
	}
	b, err := d.BridgeOptions()
	if err != nil || b.Format != bridge.FormatEnvelope || b.Brokers[0] != "tcp://127.0.0.1:1884" || b.TLS != nil {
		t.Errorf("BridgeOptions = %+v, %v", b, err)
	}
	e := mustParse(t, "gateway_id: g\nbridge: {upstream: embedded}\n")
	if got := e.UpstreamBrokers(); len(got) != 1 || got[0] != "tcp://127.0.0.1:1884" {
		t.Errorf("embedded UpstreamBrokers = %q", got)
	}
}
