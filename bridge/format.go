package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ferrymq/ferry/protocols/message"
)

// Envelope is the JSON document of FormatEnvelope (docs/design.md §5).
// Payload is, by payloadEncoding: the payload itself when it is valid JSON
// (Encoding empty); a JSON string holding it when its content type is text
// and it is valid UTF-8 (Encoding "text"); else its base64 (Encoding
// "base64"). Each form gives back the payload's bytes exactly.
type Envelope struct {
	ID        string            `json:"id"`
	Type      string            `json:"type"`
	Timestamp time.Time         `json:"timestamp"`
	Source    EnvelopeSource    `json:"source"`
	Headers   map[string]string `json:"headers,omitempty"`
	Payload   json.RawMessage   `json:"payload"`
	Encoding  string            `json:"encoding,omitempty"`
}

// EnvelopeSource says where the message entered the gateway.
type EnvelopeSource struct {
	Gateway  string `json:"gateway,omitempty"`
	Protocol string `json:"protocol"`
	ClientID string `json:"client_id,omitempty"`
	Username string `json:"username,omitempty"`
	Topic    string `json:"topic"`
}

// EncodeEnvelope returns the envelope JSON of m. Type is the content type
// when set, else "application/json" or "application/octet-stream" by what
// the payload is. Repeated header keys keep their first value.
func EncodeEnvelope(m *message.Message, gatewayID string) []byte {
	return appendEnvelope(nil, m, gatewayID)
}

// appendEnvelope appends the envelope of m to dst. It writes what
// json.Marshal writes for the Envelope struct, byte for byte
// (TestEnvelopeIsEncodingJSON, FuzzEnvelope), without reflection, a map
// or a second pass over the payload: at the drain's rates json.Marshal cost
// more than everything else the bridge does per message.
func appendEnvelope(dst []byte, m *message.Message, gatewayID string) []byte {
	enc := payloadEncoding(m.ContentType, m.Payload)
	typ := m.ContentType
	if typ == "" {
		typ = "application/octet-stream"
		if enc == encodingJSON {
			typ = "application/json"
		}
	}
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, m.ID)
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, typ)
	dst = append(dst, `,"timestamp":"`...)
	dst = m.AcceptedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","source":{`...)
	if gatewayID != "" {
		dst = append(dst, `"gateway":`...)
		dst = appendJSONString(dst, gatewayID)
		dst = append(dst, ',')
	}
	dst = append(dst, `"protocol":`...)
	dst = appendJSONString(dst, m.Source.Protocol.String())
	if m.Source.ClientID != "" {
		dst = append(dst, `,"client_id":`...)
		dst = appendJSONString(dst, m.Source.ClientID)
	}
	if m.Source.Username != "" {
		dst = append(dst, `,"username":`...)
		dst = appendJSONString(dst, m.Source.Username)
	}
	dst = append(dst, `,"topic":`...)
	dst = appendJSONString(dst, m.Topic)
	dst = append(dst, '}')
	if len(m.Headers) > 0 {
		dst = appendHeaders(dst, m.Headers)
	}
	dst = append(dst, `,"payload":`...)
	switch enc {
	case encodingJSON:
		// Compacted, as json.Marshal writes a RawMessage; it cannot fail
		// on valid JSON.
		buf := bytes.NewBuffer(dst)
		_ = json.Compact(buf, m.Payload)
		dst = buf.Bytes()
	case encodingText:
		dst = appendJSONString(dst, string(m.Payload))
		dst = append(dst, `,"encoding":"text"`...)
	default:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, m.Payload)
		dst = append(dst, `","encoding":"base64"`...)
	}
	return append(dst, '}')
}

// The forms of an envelope's payload.
const (
	encodingBase64 = iota
	encodingJSON
	encodingText
)

// payloadEncoding is the rule for an envelope's payload: a text content type
// (text/*, or a charset=utf-8 or us-ascii parameter on a type that is not
// JSON) with a valid UTF-8 payload goes as a JSON string, encoding "text"
// (STOMP's text/plain, MQTT 5's Content Type); otherwise a non-empty payload
// that is valid JSON goes as itself, whatever the content type; anything
// else as base64.
func payloadEncoding(contentType string, payload []byte) int {
	if isTextType(contentType) {
		if utf8.Valid(payload) {
			return encodingText
		}
		return encodingBase64
	}
	if len(payload) > 0 && json.Valid(payload) {
		return encodingJSON
	}
	return encodingBase64
}

// isTextType reports whether the media type ct says text: text/*, or a
// charset parameter of utf-8 or us-ascii on a type other than JSON
// (application/json; charset=utf-8 stays JSON).
func isTextType(ct string) bool {
	if ct == "" {
		return false
	}
	typ, params, _ := strings.Cut(ct, ";")
	typ = strings.ToLower(strings.TrimSpace(typ))
	if strings.HasPrefix(typ, "text/") {
		return true
	}
	if typ == "application/json" || strings.HasSuffix(typ, "+json") {
		return false
	}
	for p := range strings.SplitSeq(params, ";") {
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), "charset") {
			v = strings.ToLower(strings.Trim(strings.TrimSpace(v), `"`))
			return v == "utf-8" || v == "utf8" || v == "us-ascii"
		}
	}
	return false
}

// appendHeaders appends ,"headers":{…} with the first value of each key,
// keys sorted (as json.Marshal writes a map).
func appendHeaders(dst []byte, hs []message.Header) []byte {
	first := make([]message.Header, 0, len(hs))
	for _, h := range hs {
		if !slices.ContainsFunc(first, func(x message.Header) bool { return x.Key == h.Key }) {
			first = append(first, h)
		}
	}
	slices.SortFunc(first, func(a, b message.Header) int { return strings.Compare(a.Key, b.Key) })
	dst = append(dst, `,"headers":{`...)
	for i, h := range first {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, h.Key)
		dst = append(dst, ':')
		dst = appendJSONString(dst, h.Value)
	}
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// escapes it (HTML characters, U+2028 and U+2029 included; invalid UTF-8
// becomes U+FFFD).
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xf])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// DecodeEnvelope parses an envelope and returns it with the original
// payload bytes (base64 decoded when Encoding says so).
func DecodeEnvelope(b []byte) (*Envelope, []byte, error) {
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, nil, err
	}
	if e.Encoding == "base64" {
		var s string
		if err := json.Unmarshal(e.Payload, &s); err != nil {
			return nil, nil, err
		}
		p, err := base64.StdEncoding.DecodeString(s)
		return &e, p, err
	}
	return &e, []byte(e.Payload), nil
}
