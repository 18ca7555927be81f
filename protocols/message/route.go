package message

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
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
	// DedupeRetransmit (the zero value, the default) drops retransmits
	// only: a message the device sends again because it never saw the
	// acknowledgement. The protocol names a send (Message.Resend,
	// Message.SendID: MQTT the client and packet id of a QoS 1/2 publish,
	// STOMP a message-id header where the client sets one); a resent one
	// whose first send was stored inside the window is not stored again. A
	// new reading that merely equals an old one is never dropped.
	DedupeRetransmit DedupeKind = iota
	DedupeNone                  // no de-duplication at all
	DedupeProperty              // an MQTT 5 user property / STOMP header (Name, default "msg-id")
	DedupeJSON                  // a top-level field of a JSON payload (Name, e.g. "id")
	// DedupeHash is a hash of topic and payload: it drops a new reading
	// that equals an earlier one of the same client inside the window
	// (a steady temperature). Opt-in only, for payloads that carry their
	// own sequence number or time.
	DedupeHash
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
// Route spools at priority 0 with no TTL, retransmit dedupe and no upstream
// topic.
type Route struct {
	Name          string
	Priority      uint8
	TTL           time.Duration // 0: never expires
	Dedupe        Dedupe
	UpstreamTopic string // resolved upstream topic; empty with LocalOnly
	UpstreamQoS   byte
	// UpstreamRetain: publish upstream with the retain flag the message
	// came with (Message.Retain); false: never retained upstream.
	UpstreamRetain bool
	QoS0           QoS0Policy
	LocalOnly      bool // never spooled or bridged: local fan-out only
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
	m.DedupeKey, m.DedupeRecordOnly = "", false
	// The raw key (when short) and the scoped key are built on the stack:
	// one allocation per message, the key itself.
	var rawBuf [64]byte
	var keyBuf [24 + 1 + maxPlainKey]byte
	if raw := appendDedupeKey(rawBuf[:0], m, r.Dedupe); len(raw) > 0 {
		m.DedupeKey = string(appendScopedDedupeKey(keyBuf[:0], r.Name, m.Source, raw))
		// A first send records its key for a retransmit to find, and is
		// never itself a duplicate: the device reuses a packet id once the
		// message was acknowledged.
		m.DedupeRecordOnly = r.Dedupe.Kind == DedupeRetransmit && !m.Resend
	}
}

// DedupeKey extracts m's raw dedupe key from the source d. It returns ""
// when the source yields nothing (no send id, no such header, payload not a
// JSON object, field missing): such a message is not de-duplicated, never
// refused.
func DedupeKey(m *Message, d Dedupe) string {
	return string(appendDedupeKey(nil, m, d))
}

// appendDedupeKey appends DedupeKey(m, d) to dst.
func appendDedupeKey(dst []byte, m *Message, d Dedupe) []byte {
	switch d.Kind {
	case DedupeRetransmit:
		dst = append(dst, m.SendID...)
		if m.SendID == "" || m.Source.Protocol != ProtoMQTT {
			return dst
		}
		// An MQTT packet id is reused once its message was acknowledged:
		// the id with a hash of topic and payload names the message, so a
		// new message under a reused id, whose first send was lost in a
		// crash and that comes back as a DUP, never matches an older one.
		h := fnv.New64a()
		h.Write([]byte(m.Topic))
		h.Write([]byte{0})
		h.Write(m.Payload)
		return strconv.AppendUint(append(dst, ':'), h.Sum64(), 16)
	case DedupeProperty:
		name := d.Name
		if name == "" {
			name = DefaultDedupeProperty
		}
		v, _ := m.Header(name)
		return append(dst, v...)
	case DedupeJSON:
		return append(dst, jsonField(m.Payload, d.Name)...)
	case DedupeHash:
		h := sha256.New()
		h.Write([]byte(m.Topic))
		h.Write([]byte{0})
		h.Write(m.Payload)
		var sum [sha256.Size]byte
		return hex.AppendEncode(dst, h.Sum(sum[:0])[:16])
	}
	return dst
}

// ScopedDedupeKey is the key the spool indexes: the scope, a hash of the
// route and the sending client (protocol and client id), then the raw key
// (a hash of it when it is long or not printable ASCII), so that two
// devices whose counters collide never drop each other's messages, and a
// route's keys never meet another route's.
//
// The scope comes first so that one client's keys sit side by side in the
// spool's index: a client's consecutive packet ids then update a few index
// pages per commit, where a hash of everything put each message's key on a
// page of its own (the index was the largest cost of a spooled message).
func ScopedDedupeKey(route string, src Source, raw string) string {
	return string(appendScopedDedupeKey(nil, route, src, []byte(raw)))
}

// appendScopedDedupeKey appends ScopedDedupeKey(route, src, raw) to dst.
func appendScopedDedupeKey(dst []byte, route string, src Source, raw []byte) []byte {
	h := sha256.New()
	for _, s := range [...]string{route, src.Protocol.String(), src.ClientID} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var sum [sha256.Size]byte
	dst = hex.AppendEncode(dst, h.Sum(sum[:0])[:12])
	if plainKey(raw) {
		return append(append(dst, '/'), raw...)
	}
	rh := sha256.Sum256(raw)
	return hex.AppendEncode(append(dst, '#'), rh[:16])
}

// maxPlainKey is the longest raw key ScopedDedupeKey keeps as it is.
const maxPlainKey = 64

// plainKey reports whether raw goes into the scoped key unhashed: short,
// printable ASCII. Hashed ones are marked apart ('#' instead of '/'), so
// that no raw key can equal another's hash.
func plainKey(raw []byte) bool {
	if len(raw) > maxPlainKey {
		return false
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] < 0x20 || raw[i] > 0x7e {
			return false
		}
	}
	return true
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

// ParseDedupe parses a dedupe source as written in configuration:
// "retransmit" (or "": the default), "none", "hash", "property" /
// "property:NAME", "json:FIELD".
func ParseDedupe(s string) (Dedupe, error) {
	kind, name, _ := strings.Cut(s, ":")
	switch kind {
	case "", "retransmit":
		if name != "" {
			return Dedupe{}, fmt.Errorf("dedupe %q: retransmit takes no name", s)
		}
		return Dedupe{}, nil
	case "none":
		return Dedupe{Kind: DedupeNone}, nil
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
	return Dedupe{}, fmt.Errorf("dedupe %q: want retransmit, none, hash, property[:NAME] or json:FIELD", s)
}
