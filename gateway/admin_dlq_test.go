package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// TestDLQAPIFields: GET /api/spool/dlq answers the dead letter's fields
// (topic, message id, source, payload…), not the raw encoded record it used
// to return as base64; a record that does not decode says why.
func TestDLQAPIFields(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	ctx := context.Background()
	m := &message.Message{
		ID: "m-42", Topic: "sensors/room1/temp", Payload: []byte(`{"c":21.5}`), QoS: 1, ContentType: "application/json",
		Headers: []message.Header{{Key: "unit", Value: "C"}}, UpstreamTopic: "sites/gw1/sensors/room1/temp",
		Source: message.Source{Protocol: message.ProtoSTOMP, ClientID: "s-7", Username: "dev1"},
	}
	for _, data := range [][]byte{message.Encode(nil, m), []byte("not a message")} {
		r, err := sp.Put(ctx, spool.Entry{Priority: 3, Data: data})
		if err != nil {
			t.Fatal(err)
		}
		if err := sp.DeadLetter(ctx, r.ID, "poison: refused 10 times"); err != nil {
			t.Fatal(err)
		}
	}
	h, _ := apiHandler(sp, config.HTTPListener{Address: "127.0.0.1:8080"})
	rec := serve(h, req("GET", "/api/spool/dlq", "127.0.0.1:8080", "127.0.0.1:5555"))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /api/spool/dlq: %d %s", rec.Code, rec.Body)
	}
	var got []map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || len(got) != 2 {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	want := map[string]any{
		"lane": 3.0, "attempts": 0.0, "reason": "poison: refused 10 times", "msg_id": "m-42",
		"topic": "sensors/room1/temp", "upstream_topic": "sites/gw1/sensors/room1/temp", "qos": 1.0,
		"content_type": "application/json", "protocol": "stomp", "client_id": "s-7", "username": "dev1",
		"payload_bytes": 10.0, "payload": base64.StdEncoding.EncodeToString(m.Payload),
		"headers": []any{map[string]any{"key": "unit", "value": "C"}},
	}
	for k, v := range want {
		if b1, b2 := js(got[0][k]), js(v); b1 != b2 {
			t.Errorf("%s = %s, want %s", k, b1, b2)
		}
	}
	for _, k := range []string{"Data", "Item", "record", "decode_error"} {
		if _, ok := got[0][k]; ok {
			t.Errorf("a decodable dead letter has %q: %s", k, rec.Body)
		}
	}
	for _, k := range []string{"enqueued_at", "dead_at"} {
		if ts, _ := got[0][k].(string); ts == "" {
			t.Errorf("%s missing", k)
		} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Errorf("%s = %q: %v", k, ts, err)
		}
	}
	if got[1]["decode_error"] == nil || got[1]["record"] != base64.StdEncoding.EncodeToString([]byte("not a message")) {
		t.Errorf("undecodable record: %v, want decode_error and the record", got[1])
	}
}

func js(v any) string { b, _ := json.Marshal(v); return string(b) }
