package message

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Encoding format version 1, all integers little-endian or uvarint:
//
//	version    byte = 1
//	flags      byte (bit 0: retain)
//	qos        byte
//	priority   byte
//	upstream_qos byte
//	source     byte protocol
//	accepted   varint unix nanoseconds (0: zero time)
//	expires    varint unix nanoseconds (0: never)
//	strings    uvarint length + bytes, in this order:
//	           id, topic, upstream_topic, content_type, source client,
//	           source user, dedupe key
//	headers    uvarint count, then count × (key string, value string)
//	payload    uvarint length + bytes
//
// Nothing may follow the payload. New fields go into a new version; Decode
// keeps reading every version it ever wrote.
const encodingV1 = 1

// ErrMalformed is returned (wrapped) by Decode for input that is not an
// encoded message.
var ErrMalformed = errors.New("malformed encoded message")

// Encode appends the binary form of m to dst and returns the extended slice.
func Encode(dst []byte, m *Message) []byte {
	var flags byte
	if m.Retain {
		flags |= 1
	}
	dst = append(dst, encodingV1, flags, m.QoS, m.Priority, m.UpstreamQoS, byte(m.Source.Protocol))
	dst = binary.AppendVarint(dst, unixNano(m.AcceptedAt))
	dst = binary.AppendVarint(dst, unixNano(m.ExpiresAt))
	for _, s := range [...]string{m.ID, m.Topic, m.UpstreamTopic, m.ContentType, m.Source.ClientID, m.Source.Username, m.DedupeKey} {
		dst = appendString(dst, s)
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Headers)))
	for _, h := range m.Headers {
		dst = appendString(dst, h.Key)
		dst = appendString(dst, h.Value)
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Payload)))
	return append(dst, m.Payload...)
}

// EncodedSize returns len(Encode(nil, m)) without encoding.
func EncodedSize(m *Message) int {
	n := 6 + varintLen(unixNano(m.AcceptedAt)) + varintLen(unixNano(m.ExpiresAt))
	for _, s := range [...]string{m.ID, m.Topic, m.UpstreamTopic, m.ContentType, m.Source.ClientID, m.Source.Username, m.DedupeKey} {
		n += uvarintLen(uint64(len(s))) + len(s)
	}
	n += uvarintLen(uint64(len(m.Headers)))
	for _, h := range m.Headers {
		n += uvarintLen(uint64(len(h.Key))) + len(h.Key) + uvarintLen(uint64(len(h.Value))) + len(h.Value)
	}
	return n + uvarintLen(uint64(len(m.Payload))) + len(m.Payload)
}

// Decode parses b into a new Message. The payload is copied, so b may be
// reused. Decode never panics; garbage yields an error wrapping ErrMalformed.
func Decode(b []byte) (*Message, error) {
	d := decoder{b: b}
	m, err := d.message()
	if err != nil {
		return nil, fmt.Errorf("message: decode at byte %d: %w", d.off, err)
	}
	return m, nil
}

type decoder struct {
	b   []byte
	off int
}

func (d *decoder) message() (*Message, error) {
	if len(d.b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformed)
	}
	if v := d.b[0]; v != encodingV1 {
		return nil, fmt.Errorf("%w: unknown format version %d", ErrMalformed, v)
	}
	if len(d.b) < 6 {
		return nil, fmt.Errorf("%w: short header", ErrMalformed)
	}
	m := &Message{}
	flags := d.b[1]
	if flags&^1 != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrMalformed, flags)
	}
	m.Retain = flags&1 != 0
	m.QoS, m.Priority, m.UpstreamQoS = d.b[2], d.b[3], d.b[4]
	m.Source.Protocol = Protocol(d.b[5])
	if m.QoS > 2 || m.UpstreamQoS > 2 {
		return nil, fmt.Errorf("%w: qos out of range", ErrMalformed)
	}
	if m.Priority > MaxPriority {
		return nil, fmt.Errorf("%w: priority %d out of range", ErrMalformed, m.Priority)
	}
	d.off = 6
	acc, err := d.varint()
	if err != nil {
		return nil, err
	}
	exp, err := d.varint()
	if err != nil {
		return nil, err
	}
	m.AcceptedAt, m.ExpiresAt = fromUnixNano(acc), fromUnixNano(exp)
	for _, p := range [...]*string{&m.ID, &m.Topic, &m.UpstreamTopic, &m.ContentType, &m.Source.ClientID, &m.Source.Username, &m.DedupeKey} {
		if *p, err = d.string(); err != nil {
			return nil, err
		}
	}
	n, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	// Each header takes at least two bytes, which bounds the allocation by
	// the input size rather than by a number the input claims.
	if n > MaxHeaders || n > uint64(len(d.b)-d.off)/2 {
		return nil, fmt.Errorf("%w: header count %d", ErrMalformed, n)
	}
	if n > 0 {
		m.Headers = make([]Header, n)
		for i := range m.Headers {
			if m.Headers[i].Key, err = d.string(); err != nil {
				return nil, err
			}
			if m.Headers[i].Value, err = d.string(); err != nil {
				return nil, err
			}
		}
	}
	p, err := d.bytes()
	if err != nil {
		return nil, err
	}
	if len(p) > 0 {
		m.Payload = append([]byte(nil), p...)
	}
	if d.off != len(d.b) {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b)-d.off)
	}
	if !utf8.ValidString(m.Topic) {
		return nil, fmt.Errorf("%w: topic is not valid UTF-8", ErrMalformed)
	}
	return m, nil
}

func (d *decoder) varint() (int64, error) {
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		return 0, fmt.Errorf("%w: bad varint", ErrMalformed)
	}
	d.off += n
	return v, nil
}

func (d *decoder) uvarint() (uint64, error) {
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		return 0, fmt.Errorf("%w: bad uvarint", ErrMalformed)
	}
	d.off += n
	return v, nil
}

func (d *decoder) bytes() ([]byte, error) {
	n, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(d.b)-d.off) {
		return nil, fmt.Errorf("%w: length %d exceeds the %d bytes left", ErrMalformed, n, len(d.b)-d.off)
	}
	b := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return b, nil
}

func (d *decoder) string() (string, error) {
	b, err := d.bytes()
	return string(b), err
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func varintLen(v int64) int {
	ux := uint64(v) << 1
	if v < 0 {
		ux = ^ux
	}
	return uvarintLen(ux)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
