package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// The keys whose value is one word out of a fixed list have a type each.
// Each type lists its words with the value they stand for in the package
// that uses them; Validate refuses any other word with a message that
// lists the allowed ones (the validator prefixes the field path:
// "spool.overflow: must be block, reject, … (got "spill")"), and the
// method named after the target package maps a word to its value. A word
// that Validate refuses, or "", maps to the first entry, the target's zero
// value (for TLSVersion: TLS 1.2), as a zero Options field would; a loaded
// configuration is validated before it is mapped.
//
// The decoder fills these fields like any string (they are strings), so
// that a wrong word is reported by Validate with the others.

// choice is one allowed word of an enum type E and what it stands for.
type choice[E ~string, T any] struct {
	word  E
	value T
}

// choices are the allowed words of an enum type, the default first.
type choices[E ~string, T any] []choice[E, T]

// check returns nil when got is allowed, else the "must be …" reason.
func (cs choices[E, T]) check(got E) error {
	words := make([]string, len(cs))
	for i, c := range cs {
		if c.word == got {
			return nil
		}
		words[i] = string(c.word)
	}
	return fmt.Errorf("must be %s (got %q)", strings.Join(words, ", "), string(got))
}

// value maps got to its value; the default's for a word check refuses.
func (cs choices[E, T]) value(got E) T {
	for _, c := range cs {
		if c.word == got {
			return c.value
		}
	}
	return cs[0].value
}

// Durability is spool.durability: when an acknowledged message is on disk.
type Durability string

// The values of spool.durability.
const (
	DurabilitySync     Durability = "sync"     // fsync before the ack (default)
	DurabilityInterval Durability = "interval" // fsync every spool.fsync_interval
)

var durabilities = choices[Durability, spool.Durability]{
	{DurabilitySync, spool.Sync},
	{DurabilityInterval, spool.Interval},
}

// Validate returns nil for an allowed value, else what is allowed.
func (d Durability) Validate() error { return durabilities.check(d) }

// Spool returns d as a spool.Durability.
func (d Durability) Spool() spool.Durability { return durabilities.value(d) }

// Overflow is spool.overflow: what a full spool does with a new message.
type Overflow string

// The values of spool.overflow.
const (
	OverflowBlock              Overflow = "block" // default
	OverflowReject             Overflow = "reject"
	OverflowDropOldest         Overflow = "drop_oldest"
	OverflowDropLowestPriority Overflow = "drop_lowest_priority"
)

var overflows = choices[Overflow, spool.Overflow]{
	{OverflowBlock, spool.Block},
	{OverflowReject, spool.Reject},
	{OverflowDropOldest, spool.DropOldest},
	{OverflowDropLowestPriority, spool.DropLowestPriority},
}

// Validate returns nil for an allowed value, else what is allowed.
func (o Overflow) Validate() error { return overflows.check(o) }

// Spool returns o as a spool.Overflow.
func (o Overflow) Spool() spool.Overflow { return overflows.value(o) }

// ExpiryAction is spool.expired: what becomes of a message whose TTL ended
// in the spool.
type ExpiryAction string

// The values of spool.expired.
const (
	ExpireDrop       ExpiryAction = "drop" // default
	ExpireDeadLetter ExpiryAction = "dead_letter"
)

var expiryActions = choices[ExpiryAction, spool.ExpiryAction]{
	{ExpireDrop, spool.ExpireDrop},
	{ExpireDeadLetter, spool.ExpireDeadLetter},
}

// Validate returns nil for an allowed value, else what is allowed.
func (e ExpiryAction) Validate() error { return expiryActions.check(e) }

// Spool returns e as a spool.ExpiryAction.
func (e ExpiryAction) Spool() spool.ExpiryAction { return expiryActions.value(e) }

// Verify is spool.verify: when opening the spool checks the whole file.
type Verify string

// The values of spool.verify.
const (
	VerifyAuto   Verify = "auto" // after an unclean shutdown only (default)
	VerifyAlways Verify = "always"
	VerifyNever  Verify = "never"
)

var verifies = choices[Verify, spool.Verify]{
	{VerifyAuto, spool.VerifyAuto},
	{VerifyAlways, spool.VerifyAlways},
	{VerifyNever, spool.VerifyNever},
}

// Validate returns nil for an allowed value, else what is allowed.
func (v Verify) Validate() error { return verifies.check(v) }

// Spool returns v as a spool.Verify.
func (v Verify) Spool() spool.Verify { return verifies.value(v) }

// Format is bridge.format: the payload published upstream.
type Format string

// The values of bridge.format, in the order the messages list them.
const (
	FormatRaw      Format = "raw"
	FormatEnvelope Format = "envelope" // default (Default sets it)
)

var formats = choices[Format, bridge.Format]{
	{FormatRaw, bridge.FormatRaw},
	{FormatEnvelope, bridge.FormatEnvelope},
}

// Validate returns nil for an allowed value, else what is allowed.
func (f Format) Validate() error { return formats.check(f) }

// Bridge returns f as a bridge.Format.
func (f Format) Bridge() bridge.Format { return formats.value(f) }

// QoS0Policy is a route's qos0_when_offline: what happens to a QoS 0
// message while the upstream link is down.
type QoS0Policy string

// The values of qos0_when_offline.
const (
	QoS0Spool QoS0Policy = "spool" // default
	QoS0Drop  QoS0Policy = "drop"
)

var qos0Policies = choices[QoS0Policy, message.QoS0Policy]{
	{QoS0Spool, message.QoS0Spool},
	{QoS0Drop, message.QoS0Drop},
}

// Validate returns nil for an allowed value, else what is allowed.
func (q QoS0Policy) Validate() error { return qos0Policies.check(q) }

// Message returns q as a message.QoS0Policy.
func (q QoS0Policy) Message() message.QoS0Policy { return qos0Policies.value(q) }

// LogLevel is log.level.
type LogLevel string

// The values of log.level.
const (
	LogDebug LogLevel = "debug"
	LogInfo  LogLevel = "info" // default
	LogWarn  LogLevel = "warn"
	LogError LogLevel = "error"
)

// logLevels lists info first: the level of a word Validate refuses.
var logLevels = choices[LogLevel, slog.Level]{
	{LogInfo, slog.LevelInfo},
	{LogDebug, slog.LevelDebug},
	{LogWarn, slog.LevelWarn},
	{LogError, slog.LevelError},
}

// Validate returns nil for an allowed value, else what is allowed (in
// the order debug, info, warn, error).
func (l LogLevel) Validate() error {
	if logLevels.check(l) == nil {
		return nil
	}
	return fmt.Errorf("must be debug, info, warn, error (got %q)", string(l))
}

// Slog returns l as a slog.Level.
func (l LogLevel) Slog() slog.Level { return logLevels.value(l) }

// LogFormat is log.format.
type LogFormat string

// The values of log.format.
const (
	LogText LogFormat = "text" // default
	LogJSON LogFormat = "json"
)

var logFormats = choices[LogFormat, LogFormat]{{LogText, LogText}, {LogJSON, LogJSON}}

// Validate returns nil for an allowed value, else what is allowed.
func (f LogFormat) Validate() error { return logFormats.check(f) }

// TLSVersion is a listener's tls.min_version.
type TLSVersion string

// The values of tls.min_version.
const (
	TLS12 TLSVersion = "1.2" // default
	TLS13 TLSVersion = "1.3"
)

var tlsVersions = choices[TLSVersion, uint16]{{TLS12, tls.VersionTLS12}, {TLS13, tls.VersionTLS13}}

// Validate returns nil for an allowed value, else what is allowed.
func (v TLSVersion) Validate() error {
	if tlsVersions.check(v) == nil {
		return nil
	}
	return fmt.Errorf("must be 1.2 or 1.3 (got %q)", string(v))
}

// TLS returns v as a crypto/tls version (tls.VersionTLS12, …).
func (v TLSVersion) TLS() uint16 { return tlsVersions.value(v) }

// UsernameFrom is a listener's tls.username_from: which name of a verified
// client certificate is the user's; "" (the default): none.
type UsernameFrom string

// The values of tls.username_from besides "".
const (
	UsernameFromCN       UsernameFrom = "cn"        // subject common name
	UsernameFromSANDNS   UsernameFrom = "san_dns"   // first DNS subject alternative name
	UsernameFromSANEmail UsernameFrom = "san_email" // first email subject alternative name
	UsernameFromSANURI   UsernameFrom = "san_uri"   // first URI subject alternative name
)

// certNames are the names of a certificate that username_from picks from.
var certNames = choices[UsernameFrom, func(*x509.Certificate) (string, error)]{
	{UsernameFromCN, func(c *x509.Certificate) (string, error) {
		return firstName("subject common name", []string{c.Subject.CommonName})
	}},
	{UsernameFromSANDNS, func(c *x509.Certificate) (string, error) {
		return firstName("DNS subject alternative name", c.DNSNames)
	}},
	{UsernameFromSANEmail, func(c *x509.Certificate) (string, error) {
		return firstName("email subject alternative name", c.EmailAddresses)
	}},
	{UsernameFromSANURI, func(c *x509.Certificate) (string, error) {
		uris := make([]string, len(c.URIs))
		for i, u := range c.URIs {
			uris[i] = u.String()
		}
		return firstName("URI subject alternative name", uris)
	}},
}

func firstName(what string, names []string) (string, error) {
	if len(names) == 0 || names[0] == "" {
		return "", fmt.Errorf("the certificate has no %s to name a user", what)
	}
	return names[0], nil
}

// Validate returns nil for "" or an allowed value, else what is allowed.
func (u UsernameFrom) Validate() error {
	if u == "" {
		return nil
	}
	return certNames.check(u)
}

// CertUsername returns the function that names the user of a verified
// client certificate (mqtt.Listener.CertUsername,
// stomp.ListenerOptions.CertUsername), or nil for "".
func (u UsernameFrom) CertUsername() func(*x509.Certificate) (string, error) {
	if u == "" {
		return nil
	}
	return certNames.value(u)
}
