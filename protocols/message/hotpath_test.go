package message

import (
	"strings"
	"testing"
	"time"
)

// TestDedupeKeysStable pins the scoped dedupe keys of each kind: the spool
// keeps them across restarts and upgrades, so a key computed differently
// by a new build would let a retransmit of a message stored by the old
// build through (G4).
func TestDedupeKeysStable(t *testing.T) {
	want := []string{
		"138570a9a8b1946e2e92c8ab/17:f8899f54e92b8583",
		"c8ee32ce52ee516c76694995/65535:e80153ad6310af61",
		"4756d994d291207b452b154f/rcpt-9",
		"4756d994d291207b452b154f/abc",
		"4756d994d291207b452b154f#66edbde83cc90c1a080ec3e598dc99ce",
		"673ecce9ca180e03f9480bb0#e30af24e0a2fbccccc049b50325be6ba",
		"115bf86f8a6a8f8bd3dac649/42",
		"399ede4f33efe6326567939a/3d266ece987e24b674fa94a657d13653",
		"",
	}
	for i, c := range stableKeyCases() {
		raw := DedupeKey(c.m, c.r.Dedupe)
		c.r.Apply(c.m)
		if c.m.DedupeKey != want[i] {
			t.Errorf("case %d (%v): key %q, want %q", i, c.r.Dedupe.Kind, c.m.DedupeKey, want[i])
		}
		if scoped := ScopedDedupeKey(c.r.Name, c.m.Source, raw); raw != "" && scoped != want[i] {
			t.Errorf("case %d: ScopedDedupeKey(DedupeKey) = %q, want %q", i, scoped, want[i])
		}
	}
}

// BenchmarkRouteApply is the per-message cost of a route's decisions with
// the default dedupe of an MQTT QoS 1 message (the packet id and a hash).
func BenchmarkRouteApply(b *testing.B) {
	r := Route{Name: "telemetry", Dedupe: Dedupe{Kind: DedupeRetransmit}, UpstreamTopic: "up/t"}
	m := &Message{Topic: "sensors/t1", Payload: make([]byte, 256), SendID: "4711", Source: Source{Protocol: ProtoMQTT, ClientID: "device-0042"}}
	b.ReportAllocs()
	for b.Loop() {
		r.Apply(m)
	}
}

func stableKeyCases() []struct {
	r Route
	m *Message
} {
	mq := Source{Protocol: ProtoMQTT, ClientID: "dev-1"}
	st := Source{Protocol: ProtoSTOMP, ClientID: "stomp-7"}
	return []struct {
		r Route
		m *Message
	}{
		{Route{Name: "", Dedupe: Dedupe{Kind: DedupeRetransmit}}, &Message{Topic: "t/a", Payload: []byte("hello"), SendID: "17", Source: mq}},
		{Route{Name: "alarms", Dedupe: Dedupe{Kind: DedupeRetransmit}}, &Message{Topic: "t/b", Payload: []byte{0, 1, 2}, SendID: "65535", Source: mq, Resend: true}},
		{Route{Name: "r", Dedupe: Dedupe{Kind: DedupeRetransmit}}, &Message{Topic: "q", Payload: []byte("x"), SendID: "rcpt-9", Source: st}},
		{Route{Name: "r", Dedupe: Dedupe{Kind: DedupeProperty}}, &Message{Topic: "q", Headers: []Header{{"msg-id", "abc"}}, Source: st}},
		{Route{Name: "r", Dedupe: Dedupe{Kind: DedupeProperty}}, &Message{Topic: "q", Headers: []Header{{"msg-id", strings.Repeat("k", 80)}}, Source: st}},
		{Route{Name: "r", Dedupe: Dedupe{Kind: DedupeProperty}}, &Message{Topic: "q", Headers: []Header{{"msg-id", "ümlaut"}}, Source: mq}},
		{Route{Name: "j", Dedupe: Dedupe{Kind: DedupeJSON, Name: "id"}}, &Message{Topic: "q", Payload: []byte(`{"id": 42}`), Source: mq}},
		{Route{Name: "h", Dedupe: Dedupe{Kind: DedupeHash}}, &Message{Topic: "q/h", Payload: []byte("payload"), Source: mq}},
		{Route{Name: "n", Dedupe: Dedupe{Kind: DedupeRetransmit}}, &Message{Topic: "q", Payload: []byte("x"), Source: mq}},
	}
}

// BenchmarkEncode is the spool encoding of a typical MQTT message.
func BenchmarkEncode(b *testing.B) {
	m := &Message{ID: NewID(time.Unix(1, 0)), Topic: "sensors/t1", UpstreamTopic: "sites/edge/sensors/t1", Payload: make([]byte, 256),
		SendID: "4711", QoS: 1, Source: Source{Protocol: ProtoMQTT, ClientID: "device-0042"}, AcceptedAt: time.Unix(1, 0)}
	b.ReportAllocs()
	for b.Loop() {
		_ = Encode(nil, m)
	}
}
