package message

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzDedupeJSON: the json:FIELD extractor never panics, and returns a key
// only when the payload is a JSON object with that field holding a string
// (its value) or a scalar (its JSON text): checked against encoding/json.
func FuzzDedupeJSON(f *testing.F) {
	for _, s := range []struct{ payload, field string }{
		{`{"id":"T-7"}`, "id"}, {`{"id": 42}`, "id"}, {`{"id":null}`, "id"}, {`{"id":{"a":1}}`, "id"},
		{` {"x":1,"id":"a\u0000b"}`, "id"}, {`[1,2]`, "id"}, {`{"id":"a","id":"b"}`, "id"}, {`not json`, "id"},
		{`{"id":1e400}`, "id"}, {`{"":""}`, ""},
	} {
		f.Add([]byte(s.payload), s.field)
	}
	f.Fuzz(func(t *testing.T, payload []byte, field string) {
		got := DedupeKey(&Message{Payload: payload}, Dedupe{Kind: DedupeJSON, Name: field})
		var obj map[string]json.RawMessage
		trimmed := bytes.TrimSpace(payload)
		if len(trimmed) == 0 || trimmed[0] != '{' || json.Unmarshal(trimmed, &obj) != nil {
			if got != "" {
				t.Fatalf("key %q from a payload that is not a JSON object: %q", got, payload)
			}
			return
		}
		raw, ok := obj[field]
		if !ok {
			if got != "" {
				t.Fatalf("key %q although field %q is missing", got, field)
			}
			return
		}
		var s string
		switch {
		case json.Unmarshal(raw, &s) == nil:
			if got != s {
				t.Fatalf("key %q, want the string %q", got, s)
			}
		case bytes.Equal(raw, []byte("null")) || raw[0] == '{' || raw[0] == '[':
			if got != "" {
				t.Fatalf("key %q from null, an object or an array", got)
			}
		default:
			if got != string(raw) {
				t.Fatalf("key %q, want the scalar's text %q", got, raw)
			}
		}
	})
}
