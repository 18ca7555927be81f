package message

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// Protocol says where a message entered the gateway.
type Protocol uint8

// Protocols a message can come from.
const (
	ProtoUnknown  Protocol = 0
	ProtoMQTT     Protocol = 1
	ProtoSTOMP    Protocol = 2
	ProtoUpstream Protocol = 3 // downstream commands received from the upstream broker
	ProtoInternal Protocol = 4 // replays, tools
)

func (p Protocol) String() string {
	switch p {
	case ProtoMQTT:
		return "mqtt"
	case ProtoSTOMP:
		return "stomp"
	case ProtoUpstream:
		return "upstream"
	case ProtoInternal:
		return "internal"
	}
	return "unknown"
}

// Limits of the model. Ingress enforces tighter, configurable limits; these
// only keep the encoding sane.
const (
	MaxPriority    = 9       // lanes are 0 (highest) … 9 (lowest)
	MaxTopicLen    = 65535   // MQTT's own limit for a topic name
	MaxHeaders     = 1024    // headers / user properties per message
	MaxPayloadSize = 1 << 28 // 256 MiB, MQTT's maximum packet size
)

// Header is one STOMP header or MQTT 5 user property. Order is kept and keys
// may repeat, as both protocols allow.
type Header struct {
	Key, Value string
}

// Source identifies who sent a message.
type Source struct {
	Protocol Protocol
	ClientID string // MQTT client id, STOMP session id
	Username string // authenticated user, empty when anonymous
}

// Message is one message inside the gateway.
//
// Topic is always in MQTT form ("sensors/room1/temp"); STOMP destinations are
// mapped on the way in and out (see FromSTOMP). ID is stable for the life of
// the message: it is carried upstream in the envelope format so that the
// cloud side can drop the duplicates at-least-once delivery can cause.
type Message struct {
	ID          string
	Topic       string
	Payload     []byte
	QoS         byte
	Priority    uint8
	Retain      bool
	ContentType string
	Headers     []Header
	Source      Source
	AcceptedAt  time.Time
	ExpiresAt   time.Time // zero: never expires
	DedupeKey   string    // set by routing (Route.Apply); empty: not de-duplicated
	// DedupeRecordOnly: store the message and remember its DedupeKey for
	// a later retransmit, never drop it as a duplicate (a first send).
	DedupeRecordOnly bool
	UpstreamTopic    string // set by routing; empty: not bridged
	UpstreamQoS      byte

	// SendID names this send for retransmit dedupe (message.DedupeRetransmit):
	// set by the protocol, unique per sender among its unacknowledged
	// sends (MQTT: the packet id of a QoS 1/2 publish; STOMP: a message-id
	// header). Resend marks a send the device says it made before (MQTT
	// DUP, a STOMP message-id always: STOMP cannot tell).
	SendID string
	Resend bool

	// MQTT 5 request/response and payload format, carried to local MQTT 5
	// subscribers (and MQTT 5 upstreams): Response Topic, Correlation Data,
	// Payload Format Indicator 1 (the payload is UTF-8 text).
	ResponseTopic   string
	CorrelationData []byte
	PayloadUTF8     bool
}

// Header returns the value of the first header with key k.
func (m *Message) Header(k string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == k {
			return h.Value, true
		}
	}
	return "", false
}

// Expired reports whether m has an expiry time at or before now.
func (m *Message) Expired(now time.Time) bool {
	return !m.ExpiresAt.IsZero() && !now.Before(m.ExpiresAt)
}

// NewID returns a new message id: 32 hex digits, the first 12 the
// millisecond clock, so that ids sort roughly by creation time, the rest
// random.
func NewID(now time.Time) string {
	var b [16]byte
	ms := uint64(now.UnixMilli())
	var t [8]byte
	binary.BigEndian.PutUint64(t[:], ms)
	copy(b[:6], t[2:])
	_, _ = rand.Read(b[6:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}
