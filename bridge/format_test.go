package bridge

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
)

// marshalEnvelope is the envelope written with encoding/json: the oracle
// for appendEnvelope.
func marshalEnvelope(t testing.TB, m *message.Message, gatewayID string) []byte {
	e := Envelope{
		ID: m.ID, Type: m.ContentType, Timestamp: m.AcceptedAt.UTC(),
		Source: EnvelopeSource{Gateway: gatewayID, Protocol: m.Source.Protocol.String(), ClientID: m.Source.ClientID,
			Username: m.Source.Username, Topic: m.Topic},
	}
	if len(m.Headers) > 0 {
		e.Headers = map[string]string{}
		for _, h := range m.Headers {
			if _, dup := e.Headers[h.Key]; !dup {
				e.Headers[h.Key] = h.Value
			}
		}
	}
	switch payloadEncoding(m.ContentType, m.Payload) {
	case encodingJSON:
		e.Payload = m.Payload
		if e.Type == "" {
			e.Type = "application/json"
		}
	case encodingText:
		e.Payload, _ = json.Marshal(string(m.Payload))
		e.Encoding = "text"
	default:
		e.Payload, _ = json.Marshal(base64.StdEncoding.EncodeToString(m.Payload))
		e.Encoding = "base64"
		if e.Type == "" {
			e.Type = "application/octet-stream"
		}
	}
	out, err := json.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEnvelopeIsEncodingJSON(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 600, time.FixedZone("x", 3600))
	for _, m := range []*message.Message{
		{ID: "a", Topic: "t", Payload: []byte(`{"t": 21.5,  "ok":true}`), AcceptedAt: at},
		{ID: "b", Topic: "s/1", Payload: []byte("\x00bin"), ContentType: "image/png", AcceptedAt: at,
			Source: message.Source{Protocol: message.ProtoSTOMP, ClientID: "dev<1>&", Username: "u\"\\"}},
		{ID: "c", Topic: "a/ü/\u2028\u2029", Payload: nil,
			Headers: []message.Header{{Key: "z", Value: "1"}, {Key: "a", Value: "\t\n\r\b\f\x01"}, {Key: "z", Value: "2"}}},
		{ID: "d\xff\xfe", Topic: "x", Payload: []byte(`"just a string"`), Source: message.Source{Protocol: message.ProtoUpstream}},
		{ID: "e", Topic: "x", Payload: []byte(`{"bad":`), AcceptedAt: at},
	} {
		for _, gw := range []string{"", "gw-1"} {
			if got, want := EncodeEnvelope(m, gw), marshalEnvelope(t, m, gw); string(got) != string(want) {
				t.Errorf("message %s gateway %q:\n got %s\nwant %s", m.ID, gw, got, want)
			}
		}
	}
}

// TestEnvelopePayloadRule: which form each payload takes, and that every
// form gives back the payload's bytes.
func TestEnvelopePayloadRule(t *testing.T) {
	for _, c := range []struct {
		ct, payload, encoding string
	}{
		{"", `{"t":1}`, ""},
		{"", "on", "base64"},
		{"", "", "base64"},
		{"text/plain", "pump on", "text"},
		{"text/plain", `{"t":1}`, "text"}, // the content type decides
		{"TEXT/CSV; charset=UTF-8", "a,b\n1,2", "text"},
		{"text/plain", "\xff\xfe", "base64"}, // not UTF-8: bytes must survive
		{"application/xml; charset=utf-8", "<a/>", "text"},
		{"application/json; charset=utf-8", `[1,2]`, ""},
		{"application/json; charset=utf-8", `not json`, "base64"},
		{"application/vnd.x+json", `{}`, ""},
		{"application/octet-stream", `"s"`, ""},
		{"application/octet-stream", "abc", "base64"},
		{"text/plain", "", "text"},
	} {
		payload := []byte(c.payload)
		m := &message.Message{ID: "x", Topic: "t", ContentType: c.ct, Payload: payload}
		var e Envelope
		if err := json.Unmarshal(EncodeEnvelope(m, ""), &e); err != nil {
			t.Fatalf("%q %q: %v", c.ct, c.payload, err)
		}
		if e.Encoding != c.encoding {
			t.Errorf("content type %q payload %q: encoding %q, want %q", c.ct, c.payload, e.Encoding, c.encoding)
		}
		var back []byte
		switch e.Encoding {
		case "":
			back = e.Payload
		case "text":
			var s string
			if err := json.Unmarshal(e.Payload, &s); err != nil {
				t.Fatalf("text payload %s: %v", e.Payload, err)
			}
			back = []byte(s)
		case "base64":
			var s string
			_ = json.Unmarshal(e.Payload, &s)
			back, _ = base64.StdEncoding.DecodeString(s)
		}
		if e.Encoding != "" && string(back) != string(payload) {
			t.Errorf("content type %q: payload %q came back as %q", c.ct, payload, back)
		}
	}
}

func FuzzEnvelope(f *testing.F) {
	f.Add("id", "client", "a/b", "k", "v", []byte(`{"a": [1, 2]}`), "")
	f.Add("\u2028", "<&>", "a\xff", "\x01", "\"\\", []byte{0xff, 0}, "text/plain")
	f.Fuzz(func(t *testing.T, id, client, topic, key, value string, payload []byte, contentType string) {
		m := &message.Message{ID: id, Topic: topic, Payload: payload, ContentType: contentType,
			AcceptedAt: time.Unix(1700000000, 123), Source: message.Source{Protocol: message.ProtoMQTT, ClientID: client},
			Headers: []message.Header{{Key: key, Value: value}, {Key: value, Value: key}}}
		got := EncodeEnvelope(m, "gw")
		if want := marshalEnvelope(t, m, "gw"); string(got) != string(want) {
			t.Fatalf("\n got %s\nwant %s", got, want)
		}
	})
}

func BenchmarkEnvelope(b *testing.B) {
	m := &message.Message{ID: message.NewID(time.Now()), Topic: "sensors/room1/temp", Payload: []byte(`{"seq":12345,"t":21.5}`),
		AcceptedAt: time.Now(), Source: message.Source{Protocol: message.ProtoMQTT, ClientID: "dev-42"}}
	var buf []byte
	for b.Loop() {
		buf = appendEnvelope(buf[:0], m, "gw1")
	}
	b.SetBytes(int64(len(buf)))
}
