package message

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// QoS0Policy says what happens to QoS 0 messages (which the device never sees
// acknowledged).
type QoS0Policy uint8

// QoS 0 policies.
const (
	QoS0Spool QoS0Policy = iota // spool like any other message (default)
	QoS0Drop                    // deliver locally only; never spooled
)

// DedupeKind says where a message's dedupe key comes from.
type DedupeKind uint8

// Dedupe key sources.
const (
	DedupeNone     DedupeKind = iota // no de-duplication
	DedupeProperty                   // an MQTT 5 user property / STOMP header (Name, default "msg-id")
	DedupeJSON                       // a top-level field of a JSON payload (Name, e.g. "id")
	DedupeHash                       // SHA-256 of topic and payload
)

// DefaultDedupeProperty is the header / user property read by DedupeProperty
// when Name is empty.
const DefaultDedupeProperty = "msg-id"

// Dedupe selects the dedupe key source of a route.
type Dedupe struct {
	Kind DedupeKind
	Name string
}

// Route is what the gateway's routing rules decide for one topic. The zero
// Route spools at priority 0 with no TTL, no dedupe and no upstream topic.
type Route struct {
	Name          string
	Priority      uint8
	TTL           time.Duration // 0: never expires
	Dedupe        Dedupe
	UpstreamTopic string // resolved upstream topic; empty with LocalOnly
	UpstreamQoS   byte
	QoS0          QoS0Policy
	LocalOnly     bool // never spooled or bridged: local fan-out only
}

// Router chooses the route of a topic. Implementations must be safe for
// concurrent use; the gateway swaps its rules on reload.
type Router interface {
	Route(topic string) Route
}

// Apply stamps the route's decisions on m: priority, expiry, dedupe key and
// upstream topic. AcceptedAt must be set.
func (r Route) Apply(m *Message) {
	m.Priority = r.Priority
	if r.TTL > 0 {
		m.ExpiresAt = m.AcceptedAt.Add(r.TTL)
	}
	m.UpstreamTopic = r.UpstreamTopic
	m.UpstreamQoS = r.UpstreamQoS
	m.DedupeKey = DedupeKey(m, r.Dedupe)
}

// DedupeKey extracts m's dedupe key from the source d. It returns "" when the
// source yields nothing (no such header, payload not a JSON object, field
// missing): such a message is not de-duplicated, never refused.
func DedupeKey(m *Message, d Dedupe) string {
	switch d.Kind {
	case DedupeProperty:
		name := d.Name
		if name == "" {
			name = DefaultDedupeProperty
		}
		v, _ := m.Header(name)
		return v
	case DedupeJSON:
		return jsonField(m.Payload, d.Name)
	case DedupeHash:
		h := sha256.New()
		h.Write([]byte(m.Topic))
		h.Write([]byte{0})
		h.Write(m.Payload)
		return hex.EncodeToString(h.Sum(nil)[:16])
	}
	return ""
}

// jsonField returns the top-level field name of a JSON object as a string:
// strings as they are, numbers and other scalars in their JSON text.
func jsonField(payload []byte, name string) string {
	payload = bytes.TrimSpace(payload)
	if len(payload) == 0 || payload[0] != '{' {
		return ""
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(payload, &obj) != nil {
		return ""
	}
	raw, ok := obj[name]
	if !ok {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	if bytes.Equal(raw, []byte("null")) || raw[0] == '{' || raw[0] == '[' {
		return ""
	}
	return string(raw)
}

// ParseDedupe parses a dedupe source as written in configuration: "none",
// "hash", "property" / "property:NAME", "json:FIELD".
func ParseDedupe(s string) (Dedupe, error) {
	kind, name, _ := strings.Cut(s, ":")
	switch kind {
	case "", "none":
		return Dedupe{}, nil
	case "hash":
		return Dedupe{Kind: DedupeHash}, nil
	case "property", "header":
		return Dedupe{Kind: DedupeProperty, Name: name}, nil
	case "json":
		if name == "" {
			return Dedupe{}, fmt.Errorf("dedupe %q: json needs a field name, e.g. json:id", s)
		}
		return Dedupe{Kind: DedupeJSON, Name: name}, nil
	}
	return Dedupe{}, fmt.Errorf("dedupe %q: want none, hash, property[:NAME] or json:FIELD", s)
}
