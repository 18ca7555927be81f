package bridge

import (
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
)

// Envelope is the JSON document of FormatEnvelope (DESIGN.md §5). Payload is
// the message payload itself when it is valid JSON, else its base64 with
// Encoding "base64".
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
	e := Envelope{
		ID:        m.ID,
		Type:      m.ContentType,
		Timestamp: m.AcceptedAt.UTC(),
		Source: EnvelopeSource{
			Gateway:  gatewayID,
			Protocol: m.Source.Protocol.String(),
			ClientID: m.Source.ClientID,
			Username: m.Source.Username,
			Topic:    m.Topic,
		},
	}
	if len(m.Headers) > 0 {
		e.Headers = make(map[string]string, len(m.Headers))
		for _, h := range m.Headers {
			if _, dup := e.Headers[h.Key]; !dup {
				e.Headers[h.Key] = h.Value
			}
		}
	}
	if len(m.Payload) > 0 && json.Valid(m.Payload) {
		e.Payload = m.Payload
		if e.Type == "" {
			e.Type = "application/json"
		}
	} else {
		b := make([]byte, 0, base64.StdEncoding.EncodedLen(len(m.Payload))+2)
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, m.Payload)
		e.Payload = append(b, '"')
		e.Encoding = "base64"
		if e.Type == "" {
			e.Type = "application/octet-stream"
		}
	}
	out, err := json.Marshal(&e)
	if err != nil {
		// Only invalid RawMessage can fail, and Payload is checked above.
		panic("bridge: envelope: " + err.Error())
	}
	return out
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
