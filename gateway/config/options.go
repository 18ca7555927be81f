package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/protocols/mqtt"
	"github.com/ferrymq/ferry/protocols/stomp"
	"github.com/ferrymq/ferry/spool"
)

// This file maps the configuration to the Options of the packages the
// gateway wires: spool, bridge, mqtt and stomp. Each function fills what
// the configuration decides; the gateway adds the runtime parts (the
// ingest core, the authorizer, the state store, loggers, callbacks).
//
// Zero: none or default. A configuration holds every default already
// (Default fills them in before a file is read), so a zero in it never
// means "the default": it means "none" (no cap, off) for the keys whose
// documentation says so (spool.max_bytes, spool.dedupe_window,
// spool.lower_lane_share, limits.mqtt.max_connections,
// limits.stomp.heartbeat), or a value computed from other keys for the few
// that say "0: …" with a rule (limits.mqtt.write_buffer, publish_burst,
// limits.login.max_concurrent), which the target package computes the same
// way from its own zero. The target Options instead read 0 as "the package
// default" and a negative value as "none"; none is the one place that
// translates, and every "0: none" key goes through it.

// none maps a configuration's "0: none" to the negative value by which
// spool.Options, mqtt.Options and stomp.Options say none (their 0 is their
// default); other values pass unchanged.
func none[T ~int | ~int64 | ~float64](v T) T {
	if v == 0 {
		return -1
	}
	return v
}

// SpoolOptions maps the spool section to spool.Options: for the spool of
// the gateway (GatewaySpoolOptions adds the cap on local state) and of the
// tools that open it (ferry spool).
func (c *Config) SpoolOptions(logger *slog.Logger) spool.Options {
	s := c.Spool
	return spool.Options{
		Durability:       s.Durability.Spool(),
		FsyncInterval:    s.FsyncInterval.D(),
		MaxBytes:         none(int64(s.MaxBytes)),
		MaxMessages:      s.MaxMessages,
		MaxMessageBytes:  int(s.MaxMessageBytes),
		Overflow:         s.Overflow.Spool(),
		BlockTimeout:     s.BlockTimeout.D(),
		DedupeWindow:     none(s.DedupeWindow.D()),
		DedupeMaxEntries: s.DedupeMaxEntries,
		LeaseTimeout:     s.LeaseTimeout.D(),
		LowerLaneShare:   none(s.LowerLaneShare), // 0: strict priority
		Expired:          s.Expired.Spool(),
		RetainDelivered:  s.RetainDelivered.D(),
		LockTimeout:      s.LockTimeout.D(),
		Verify:           s.Verify.Spool(),
		Logger:           logger,
	}
}

// GatewaySpoolOptions are the options of the spool a running gateway
// opens: SpoolOptions with the cap the spool applies to a retained message
// it stores (a QoS 1/2 one over it is refused), when state.persist keeps
// the local MQTT state in the spool.
func (c *Config) GatewaySpoolOptions(logger *slog.Logger) spool.Options {
	o := c.SpoolOptions(logger)
	if c.State.Persist {
		o.StateMaxBytes[spool.StateRetained] = int64(c.State.MaxRetainedBytes)
	}
	return o
}

// DownstreamSpoolOptions are the options of the downstream lane's spool
// (DownstreamSpoolPath): the spool section's, with the lane's own cap and
// the policies a lane of commands needs. leaseTimeout is how long the
// dispatcher may hold a waiting command.
func (c *Config) DownstreamSpoolOptions(logger *slog.Logger, leaseTimeout time.Duration) spool.Options {
	o := c.SpoolOptions(logger)
	o.MaxBytes = int64(c.Spool.DownstreamMaxBytes)
	o.MaxMessages = 0
	// Full: the bridge does not acknowledge, the upstream broker keeps the
	// command and sends it again.
	o.Overflow = spool.Reject
	o.Expired = spool.ExpireDeadLetter
	o.LeaseTimeout = leaseTimeout
	o.RetainDelivered = 0
	o.LowerLaneShare = none(0.0) // strict priority
	o.Durability = spool.Sync    // a command is acknowledged upstream on this commit
	return o
}

// StoreOptions are the MQTT server's local state options over state (the
// spool's); in memory only without state.persist.
func (c *Config) StoreOptions(state mqtt.State) mqtt.StoreOptions {
	s := c.State
	if !s.Persist {
		return mqtt.StoreOptions{}
	}
	return mqtt.StoreOptions{State: state, MaxRetainedBytes: int64(s.MaxRetainedBytes), MaxSessions: s.MaxSessions,
		MaxSessionMessages: s.MaxSessionMessages, MaxSessionBytes: int64(s.MaxSessionBytes)}
}

// MQTTListeners returns the configured MQTT listeners (mqtt, mqtt_tls,
// websocket) with their TLS configurations loaded.
func (c *Config) MQTTListeners() ([]mqtt.Listener, error) {
	var lns []mqtt.Listener
	for _, l := range []struct {
		name, addr, kind string
	}{{"mqtt", c.Listeners.MQTT.Address, mqtt.KindTCP}, {"mqtt_tls", c.Listeners.MQTTTLS.Address, mqtt.KindTLS},
		{"websocket", c.Listeners.WebSocket.Address, mqtt.KindWS}} {
		if l.addr == "" {
			continue
		}
		ml := mqtt.Listener{Name: l.name, Kind: l.kind, Address: l.addr}
		if t := c.ListenerTLS(l.name); t != nil {
			var err error
			if ml.TLS, err = t.Config(); err != nil {
				return nil, fmt.Errorf("listeners.%s: %w", l.name, err)
			}
			if ml.Kind == mqtt.KindTCP {
				ml.Kind = mqtt.KindTLS
			}
			ml.CertUsername = t.UsernameFrom.CertUsername()
		}
		lns = append(lns, ml)
	}
	return lns, nil
}

// MQTTOptions maps limits.mqtt to mqtt.Options, with lns (MQTTListeners).
// The caller sets Ingest, Auth, Store and Logger.
func (c *Config) MQTTOptions(lns []mqtt.Listener) mqtt.Options {
	lim := c.Limits.MQTT
	return mqtt.Options{
		Listeners:      lns,
		AcceptTimeout:  lim.AcceptTimeout.D(),
		ConnectTimeout: lim.ConnectTimeout.D(),
		MaxPending:     lim.MaxPending,
		MaxConnectSize: int(lim.MaxConnectSize),
		ReadTimeout:    lim.ReadTimeout.D(),
		MaxConnections: none(lim.MaxConnections),
		MaxPacketSize:  int(lim.MaxPacketSize),
		MaxTopicLength: lim.MaxTopicLength,
		MaxTopicLevels: lim.MaxTopicLevels,
		PublishRate:    lim.PublishRate,
		PublishBurst:   lim.PublishBurst,
		MaxInflight:    lim.MaxInflight,
		MaxKeepalive:   uint16(lim.MaxKeepalive.D() / time.Second),
		WriteTimeout:   lim.WriteTimeout.D(),
		WriteBuffer:    int(lim.WriteBuffer),
	}
}

// HasSTOMP reports whether a STOMP listener has an address.
func (c *Config) HasSTOMP() bool {
	l := &c.Listeners
	return l.STOMP.Address != "" || l.STOMPTLS.Address != "" || l.STOMPWebSocket.Address != ""
}

// STOMPOptions maps limits.stomp (and the topic limits of limits.mqtt,
// which apply to both protocols) to stomp.Options. The caller sets Ingest,
// Auth and Logger.
func (c *Config) STOMPOptions() stomp.Options {
	sl, ml := c.Limits.STOMP, c.Limits.MQTT
	hb := none(sl.Heartbeat.D()) // 0: off
	return stomp.Options{
		AcceptTimeout:  sl.AcceptTimeout.D(),
		MaxTopicLength: ml.MaxTopicLength,
		MaxTopicLevels: ml.MaxTopicLevels,
		MaxFrameSize:   int(sl.MaxFrameSize),
		MaxHeaders:     sl.MaxHeaders,
		MaxHeaderLine:  int(sl.MaxHeaderLine),
		MaxConnections: sl.MaxConnections, // stomp.Options: 0 is no limit too
		MaxPending:     sl.MaxPending,
		ConnectTimeout: sl.ConnectTimeout.D(),
		MaxConnectSize: int(sl.MaxConnectSize),
		PublishRate:    sl.PublishRate,
		PublishBurst:   sl.PublishBurst,
		ReadTimeout:    sl.ReadTimeout.D(),
		HeartBeat:      [2]time.Duration{hb, hb},

		MaxTransactions:                  sl.MaxTransactions,
		MaxTransactionMessages:           sl.MaxTransactionMessages,
		MaxTransactionBytes:              int(sl.MaxTransactionBytes),
		MaxConnectionTransactionMessages: sl.MaxConnectionTransactionMessages,
		MaxConnectionTransactionBytes:    int(sl.MaxConnectionTransactionBytes),
		SubscriptionQueueBytes:           int64(sl.SubscriptionQueueBytes),
	}
}

// STOMPListener returns a STOMP listener's address and its TLS
// configuration (nil: plain), for name stomp, stomp_tls or stomp_websocket.
func (c *Config) STOMPListener(name string) (addr string, tc *tls.Config, lo stomp.ListenerOptions, err error) {
	ls := &c.Listeners
	addr = map[string]string{"stomp": ls.STOMP.Address, "stomp_tls": ls.STOMPTLS.Address, "stomp_websocket": ls.STOMPWebSocket.Address}[name]
	if t := c.ListenerTLS(name); t != nil && addr != "" {
		if tc, err = t.Config(); err != nil {
			return "", nil, lo, fmt.Errorf("listeners.%s: %w", name, err)
		}
		lo.CertUsername = t.UsernameFrom.CertUsername()
	}
	return addr, tc, lo, nil
}

// UpstreamBrokers are the URLs the bridge connects to: bridge.upstream, or
// the embedded broker's address.
func (c *Config) UpstreamBrokers() []string {
	if c.Bridge.IsEmbedded() {
		return []string{"tcp://" + c.Bridge.EmbeddedAddress}
	}
	return c.Bridge.Upstream
}

// BridgeOptions maps the bridge section to bridge.Options, with the TLS
// configuration loaded when a broker URL or bridge.tls asks for it. The
// caller sets Retain, DownstreamSink, OnDelivered and Logger.
func (c *Config) BridgeOptions() (bridge.Options, error) {
	return c.bridgeOptions(c.Bridge, c.UpstreamBrokers(), c.DownstreamRoutes())
}

func (c *Config) bridgeOptions(bc BridgeConfig, brokers []string, downstream []bridge.DownstreamRoute) (bridge.Options, error) {
	o := bridge.Options{
		Brokers:        brokers,
		Protocol:       bc.Protocol,
		FailbackAfter:  bc.FailbackAfter.D(),
		QoS0:           true,
		JetStream:      bridge.JetStreamOptions{Stream: bc.JetStream.Stream, SubjectPrefix: bc.JetStream.SubjectPrefix},
		Username:       bc.Username,
		Password:       bc.Password,
		ClientID:       bc.ClientID,
		GatewayID:      c.GatewayID,
		KeepAlive:      bc.Keepalive.D(),
		ConnectTimeout: bc.ConnectTimeout.D(),
		Window:         bc.Window,
		Partitions:     bc.Partitions,
		BackoffBase:    bc.Backoff.Base.D(),
		BackoffMax:     bc.Backoff.Max.D(),
		StableAfter:    bc.StableAfter.D(),
		StallTimeout:   bc.StallTimeout.D(),
		MaxAttempts:    bc.MaxAttempts,
		MaxRate:        bc.MaxRate.Messages,
		MaxByteRate:    float64(bc.MaxRate.Bytes),
		Format:         bc.Format.Bridge(),
		Downstream:     downstream,
	}
	if needsTLS(o.Brokers) || bc.TLS.CAFile != "" || bc.TLS.CertFile != "" {
		tc, err := bridge.LoadTLS(bridge.TLSFiles{CAFile: bc.TLS.CAFile, CertFile: bc.TLS.CertFile, KeyFile: bc.TLS.KeyFile, ServerName: bc.TLS.ServerName})
		if err != nil {
			return bridge.Options{}, err
		}
		tc.InsecureSkipVerify = bc.TLS.InsecureSkipVerify
		o.TLS = tc
	}
	return o, nil
}

func needsTLS(urls []string) bool {
	for _, u := range urls {
		for _, p := range []string{"ssl://", "tls://", "mqtts://", "wss://"} {
			if strings.HasPrefix(u, p) {
				return true
			}
		}
	}
	return false
}

// ListenerTLS returns the tls block of the listener name (mqtt, stomp_tls,
// http, …) when it speaks TLS, else nil.
func (c *Config) ListenerTLS(name string) *ServerTLS { return c.tlsOf("listeners." + name) }

// Config loads the block's certificate and client CAs into a tls.Config.
func (t ServerTLS) Config() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: load certificate: %w", err)
	}
	tc := &tls.Config{MinVersion: t.MinVersion.TLS(), Certificates: []tls.Certificate{cert}}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls: client_ca_file %s: no certificate", t.ClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		if t.RequireClientCert {
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return tc, nil
}
