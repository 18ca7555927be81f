package message

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sample() *Message {
	return &Message{
		ID:            NewID(time.Unix(1700000000, 0)),
		Topic:         "sensors/room1/temp",
		Payload:       []byte(`{"id":"a1","t":21.5}`),
		QoS:           1,
		Priority:      3,
		Retain:        true,
		ContentType:   "application/json",
		Headers:       []Header{{"msg-id", "a1"}, {"k", "v"}, {"k", "w"}},
		Source:        Source{Protocol: ProtoSTOMP, ClientID: "sess-1", Username: "dev"},
		AcceptedAt:    time.Unix(1700000000, 123456789),
		ExpiresAt:     time.Unix(1700003600, 0),
		DedupeKey:     "a1",
		UpstreamTopic: "sites/gw1/sensors/room1/temp",
		UpstreamQoS:   1,
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	routed := &Message{ID: NewID(time.Now()), Topic: "sensors/room1/temp", UpstreamTopic: "sites/gw1/sensors/room1/temp",
		Payload: make([]byte, 256), QoS: 1, UpstreamQoS: 1, Source: Source{Protocol: ProtoMQTT, ClientID: "sensor-0001"}, AcceptedAt: time.Now()}
	other := sample()
	other.ID, other.UpstreamTopic = "not-hex", "elsewhere"
	for name, m := range map[string]*Message{"full": sample(), "zero": {}, "topic only": {Topic: "a"}, "routed": routed, "text id, other upstream": other} {
		t.Run(name, func(t *testing.T) {
			b := Encode(nil, m)
			if len(b) != EncodedSize(m) {
				t.Fatalf("EncodedSize %d, encoded %d", EncodedSize(m), len(b))
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !equal(got, m) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
			}
			if got, err := DecodeOwned(bytes.Clone(b)); err != nil || !equal(got, m) {
				t.Fatalf("DecodeOwned: %v\n got %+v\nwant %+v", err, got, m)
			}
			if got, err := DecodeOwned(encodeV1(m)); err != nil || !equal(got, m) {
				t.Fatalf("DecodeOwned, version 1: %v\n got %+v\nwant %+v", err, got, m)
			}
			// Version 1, as files written before version 2 hold it.
			if got, err := Decode(encodeV1(m)); err != nil || !equal(got, m) {
				t.Fatalf("version 1: %v\n got %+v\nwant %+v", err, got, m)
			}
		})
	}
}

// TestEncodedSizeOfARoutedMessage: the spool stores this once per message
// (issue 9: bytes per message).
func TestEncodedSizeOfARoutedMessage(t *testing.T) {
	m := &Message{ID: NewID(time.Now()), Topic: "sensors/room1/temp", UpstreamTopic: "sites/gw1/sensors/room1/temp",
		Payload: make([]byte, 256), QoS: 1, UpstreamQoS: 1, Source: Source{Protocol: ProtoMQTT, ClientID: "sensor-0001"}, AcceptedAt: time.Now()}
	v1, v2 := len(encodeV1(m)), EncodedSize(m)
	t.Logf("256-byte payload: version 1 %d bytes, version 2 %d bytes", v1, v2)
	if v2 > 256+75 {
		t.Fatalf("version 2 takes %d bytes for a 256-byte payload, want at most %d", v2, 256+75)
	}
}

// TestDecodeVersion1Golden: bytes written by the version 1 encoder (the
// FuzzDecode seed "full") still decode to the message they held.
func TestDecodeVersion1Golden(t *testing.T) {
	b := []byte("\x01\x01\x01\x03\x01\x02\xaa\xb4\xae\xd8ǿΗ/\x80\x80\x95\ue311З/ 018bcfe56800577917d8aa6d443442e5\x12sensors/room1/temp\x1csites/gw1/sensors/room1/temp\x10application/json\x06sess-1\x03dev\x02a1\x03\x06msg-id\x02a1\x01k\x01v\x01k\x01w\x14{\"id\":\"a1\",\"t\":21.5}")
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := sample()
	want.ID = "018bcfe56800577917d8aa6d443442e5"
	if !equal(m, want) {
		t.Fatalf("got %+v\nwant %+v", m, want)
	}
}

func equal(a, b *Message) bool {
	return a.ID == b.ID && a.Topic == b.Topic && bytes.Equal(a.Payload, b.Payload) && a.QoS == b.QoS &&
		a.Priority == b.Priority && a.Retain == b.Retain && a.ContentType == b.ContentType &&
		(len(a.Headers) == 0 && len(b.Headers) == 0 || reflect.DeepEqual(a.Headers, b.Headers)) &&
		a.Source == b.Source && a.AcceptedAt.Equal(b.AcceptedAt) && a.ExpiresAt.Equal(b.ExpiresAt) &&
		a.DedupeKey == b.DedupeKey && a.UpstreamTopic == b.UpstreamTopic && a.UpstreamQoS == b.UpstreamQoS
}

// encodeV1 is the version 1 encoder, kept to test that Decode reads it.
func encodeV1(m *Message) []byte {
	var flags byte
	if m.Retain {
		flags |= 1
	}
	dst := []byte{encodingV1, flags, m.QoS, m.Priority, m.UpstreamQoS, byte(m.Source.Protocol)}
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

func TestDecodeRejects(t *testing.T) {
	good := Encode(nil, sample())
	good1 := encodeV1(sample())
	for name, b := range map[string][]byte{
		"empty":                nil,
		"future version":       append([]byte{3}, good[1:]...),
		"truncated v1":         good1[:len(good1)-1],
		"trailing v1":          append(append([]byte(nil), good1...), 0),
		"bad flags v1":         append([]byte{1, 0x80}, good1[2:]...),
		"bad priority v1":      append([]byte{1, 0, 1, 10}, good1[4:]...),
		"huge length v1":       {1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"short v2":             good[:12],
		"bad qos v2":           append([]byte{2, good[1], 3}, good[3:]...),
		"bad priority v2":      append([]byte{2, good[1], good[2], good[3], 10}, good[5:]...),
		"truncated v2 strings": good[:20],
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode(b); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode = %v, want ErrMalformed", err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode(nil, sample()))
	f.Add(Encode(nil, &Message{Topic: "a"}))
	f.Add(encodeV1(sample()))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		owned, oerr := DecodeOwned(bytes.Clone(b))
		if (err == nil) != (oerr == nil) || err != nil && err.Error() != oerr.Error() {
			t.Fatalf("Decode: %v, DecodeOwned: %v", err, oerr)
		}
		if err != nil {
			return
		}
		if !equal(owned, m) {
			t.Fatalf("DecodeOwned:\n got %+v\nwant %+v", owned, m)
		}
		again := Encode(nil, m)
		if b[0] == encodingV2 && !bytes.Equal(again, b) {
			// Whatever decodes must re-encode to the same bytes.
			t.Fatalf("decode/encode not stable:\n in %x\nout %x", b, again)
		}
		// Version 1 input: the same message in version 2.
		if m2, err := Decode(again); err != nil || !equal(m2, m) {
			t.Fatalf("version %d input re-encoded: %v\n got %+v\nwant %+v", b[0], err, m2, m)
		}
	})
}

// TestDecodeOwnedAliases: DecodeOwned's payload is the record's tail, and
// growing it does not write into the record's buffer.
func TestDecodeOwnedAliases(t *testing.T) {
	rec := Encode(nil, sample())
	b := append(make([]byte, 0, len(rec)+16), rec...) // room after the record
	m, err := DecodeOwned(b)
	if err != nil {
		t.Fatal(err)
	}
	if &m.Payload[0] != &b[len(b)-len(m.Payload)] {
		t.Fatal("payload is a copy, not the record's tail")
	}
	_ = append(m.Payload, 'X')
	if b[:len(b)+1][len(b)] == 'X' {
		t.Fatal("an append to the payload wrote into the record's buffer")
	}
	if m2, err := Decode(rec); err != nil || !equal(m, m2) {
		t.Fatalf("Decode of the same record: %v\n got %+v\nwant %+v", err, m2, m)
	}
}

// TestDecodeOwnedAllocations: the bridge decodes every message it sends
// with DecodeOwned; the message, one string for all its strings, the hex
// id and the joined upstream topic are its only allocations.
func TestDecodeOwnedAllocations(t *testing.T) {
	b := Encode(nil, routedSample())
	owned := testing.AllocsPerRun(100, func() {
		if _, err := DecodeOwned(b); err != nil {
			t.Fatal(err)
		}
	})
	copied := testing.AllocsPerRun(100, func() {
		if _, err := Decode(b); err != nil {
			t.Fatal(err)
		}
	})
	if owned > 4 || owned >= copied {
		t.Fatalf("DecodeOwned %.0f allocations, Decode %.0f: want at most 4 and fewer than Decode", owned, copied)
	}
}

func routedSample() *Message {
	return &Message{ID: NewID(time.Unix(1, 0)), Topic: "sensors/t1", UpstreamTopic: "sites/edge/sensors/t1", Payload: make([]byte, 256),
		QoS: 1, UpstreamQoS: 1, Source: Source{Protocol: ProtoMQTT, ClientID: "device-0042"}, AcceptedAt: time.Unix(1, 0),
		DedupeKey: "r:device-0042:4711"}
}

// BenchmarkDecode is the bridge's decoding of a leased message.
func BenchmarkDecode(b *testing.B) {
	rec := Encode(nil, routedSample())
	for _, c := range []struct {
		name   string
		decode func([]byte) (*Message, error)
	}{{"copy", Decode}, {"owned", DecodeOwned}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.decode(rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestTopicMapping(t *testing.T) {
	for _, tc := range []struct{ mqtt, stomp string }{
		{"sensors/room1/temp", "/topic/sensors.room1.temp"},
		{"a//b", "/topic/a..b"},
		{"/a", "/topic/.a"},
		{"a/", "/topic/a."},
		{"v1.2/x", "/topic/v1/2.x"},
		{"ümlaut/∆", "/topic/ümlaut.∆"},
		{"*/x", "/topic/*.x"},
	} {
		if got := ToSTOMP(tc.mqtt, DestTopic); got != tc.stomp {
			t.Errorf("ToSTOMP(%q) = %q, want %q", tc.mqtt, got, tc.stomp)
		}
		back, kind, err := FromSTOMP(tc.stomp)
		if err != nil || back != tc.mqtt || kind != DestTopic {
			t.Errorf("FromSTOMP(%q) = %q, %v, %v; want %q", tc.stomp, back, kind, err, tc.mqtt)
		}
	}
	for _, tc := range []struct{ mqtt, stomp string }{
		{"a/+/#", "/topic/a.*.#"},
		{"+", "/topic/*"},
		{"a*/v1.2/+", "/topic/a*.v1/2.*"},
	} {
		if got := FilterToSTOMP(tc.mqtt, DestTopic); got != tc.stomp {
			t.Errorf("FilterToSTOMP(%q) = %q, want %q", tc.mqtt, got, tc.stomp)
		}
		if back, _, err := FilterFromSTOMP(tc.stomp); err != nil || back != tc.mqtt {
			t.Errorf("FilterFromSTOMP(%q) = %q, %v; want %q", tc.stomp, back, err, tc.mqtt)
		}
	}
	if got, kind, err := FromSTOMP("/queue/jobs.a"); err != nil || got != "jobs/a" || kind != DestQueue {
		t.Errorf("queue: %q %v %v", got, kind, err)
	}
	for _, bad := range []string{"jobs", "/exchange/x", "/topic/", "topic/a"} {
		if _, _, err := FromSTOMP(bad); err == nil {
			t.Errorf("FromSTOMP(%q) accepted", bad)
		}
	}
}

func FuzzTopicRoundTrip(f *testing.F) {
	for _, s := range []string{"a/b", "a//b", "/", "v1.2/x", "a/+/#", ".", "%2E"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if topic == "" {
			return
		}
		back, _, err := FromSTOMP(ToSTOMP(topic, DestQueue))
		if err != nil || back != topic {
			t.Fatalf("%q -> %q -> %q (%v)", topic, ToSTOMP(topic, DestQueue), back, err)
		}
	})
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		s             string
		topic, filter bool
	}{
		{"a/b", true, true},
		{"a/+/c", false, true},
		{"a/#", false, true},
		{"#", false, true},
		{"a/#/b", false, false},
		{"a+/b", false, false},
		{"", false, false},
		{"a\x00b", false, false},
		{"\xff\xfe", false, false},
		{strings.Repeat("x", MaxTopicLen+1), false, false},
	} {
		if got := ValidateTopic(tc.s) == nil; got != tc.topic {
			t.Errorf("ValidateTopic(%.20q) ok=%v, want %v", tc.s, got, tc.topic)
		}
		if got := ValidateFilter(tc.s) == nil; got != tc.filter {
			t.Errorf("ValidateFilter(%.20q) ok=%v, want %v", tc.s, got, tc.filter)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"a/+/c", "a//c", true},
		{"a/b", "a/c", false},
		{"a", "a/b", false},
	} {
		if got := Match(tc.filter, tc.topic); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestDedupeKey(t *testing.T) {
	m := sample()
	for _, tc := range []struct {
		src  string
		want string
	}{
		{"none", ""},
		{"retransmit", ""}, // sample() has no send id
		{"property", "a1"},
		{"property:k", "v"},
		{"json:id", "a1"},
		{"json:t", "21.5"},
		{"json:missing", ""},
	} {
		d, err := ParseDedupe(tc.src)
		if err != nil {
			t.Fatal(err)
		}
		if got := DedupeKey(m, d); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.src, got, tc.want)
		}
	}
	h1 := DedupeKey(m, Dedupe{Kind: DedupeHash})
	m2 := sample()
	m2.Payload = []byte("other")
	if h1 == "" || h1 == DedupeKey(m2, Dedupe{Kind: DedupeHash}) {
		t.Error("hash key does not depend on payload")
	}
	if DedupeKey(&Message{Payload: []byte("not json")}, Dedupe{Kind: DedupeJSON, Name: "id"}) != "" {
		t.Error("non-JSON payload yielded a key")
	}
	for _, bad := range []string{"json", "md5", "json:", "retransmit:x"} {
		if _, err := ParseDedupe(bad); err == nil {
			t.Errorf("ParseDedupe(%q) accepted", bad)
		}
	}
}

func TestRouteApply(t *testing.T) {
	m := &Message{Topic: "a", AcceptedAt: time.Unix(100, 0), Headers: []Header{{"msg-id", "x"}}}
	r := Route{Name: "r", Priority: 4, TTL: time.Minute, Dedupe: Dedupe{Kind: DedupeProperty}, UpstreamTopic: "up/a", UpstreamQoS: 1}
	r.Apply(m)
	if m.Priority != 4 || !m.ExpiresAt.Equal(time.Unix(160, 0)) || m.DedupeKey != ScopedDedupeKey("r", m.Source, "x") || m.UpstreamTopic != "up/a" || m.UpstreamQoS != 1 {
		t.Fatalf("Apply: %+v", m)
	}
	if !m.Expired(time.Unix(160, 0)) || m.Expired(time.Unix(159, 0)) {
		t.Fatal("Expired boundary")
	}
}

// TestDedupeScoped: the same raw key from two clients, or on two routes,
// gives two keys: two devices whose counters collide never drop each
// other's messages (they used to: the key was global).
func TestDedupeScoped(t *testing.T) {
	r := Route{Name: "open", Dedupe: Dedupe{Kind: DedupeJSON, Name: "id"}}
	a := &Message{Topic: "open/dd/user-a", Payload: []byte(`{"id":"T-7"}`), Source: Source{Protocol: ProtoMQTT, ClientID: "user-a"}}
	b := &Message{Topic: "open/dd/user-b", Payload: []byte(`{"id":"T-7"}`), Source: Source{Protocol: ProtoMQTT, ClientID: "user-b"}}
	r.Apply(a)
	r.Apply(b)
	if a.DedupeKey == "" || a.DedupeKey == b.DedupeKey {
		t.Fatalf("keys %q %q: equal ids of two clients collide", a.DedupeKey, b.DedupeKey)
	}
	a2 := &Message{Topic: "open/dd/user-a", Payload: []byte(`{"id":"T-7"}`), Source: a.Source}
	Route{Name: "other", Dedupe: r.Dedupe}.Apply(a2)
	if a2.DedupeKey == a.DedupeKey {
		t.Fatal("two routes share dedupe keys")
	}
	again := &Message{Topic: "open/dd/user-a", Payload: []byte(`{"id":"T-7"}`), Source: a.Source}
	r.Apply(again)
	if again.DedupeKey != a.DedupeKey {
		t.Fatal("the same client's resend has another key")
	}
}

// TestDedupeRetransmitDefault: the default drops retransmits only. A first
// send (MQTT: no DUP) only records its key; a DUP of the same client and
// packet id is checked; a message without a send id has no key.
func TestDedupeRetransmitDefault(t *testing.T) {
	var r Route // the zero route: retransmit
	src := Source{Protocol: ProtoMQTT, ClientID: "dev"}
	first := &Message{Topic: "sensors/t", Payload: []byte("21.5"), Source: src, SendID: "7"}
	r.Apply(first)
	if first.DedupeKey == "" || !first.DedupeRecordOnly {
		t.Fatalf("first send: key %q record-only %v", first.DedupeKey, first.DedupeRecordOnly)
	}
	dup := &Message{Topic: "sensors/t", Payload: []byte("21.5"), Source: src, SendID: "7", Resend: true}
	r.Apply(dup)
	if dup.DedupeKey != first.DedupeKey || dup.DedupeRecordOnly {
		t.Fatalf("retransmit: key %q record-only %v", dup.DedupeKey, dup.DedupeRecordOnly)
	}
	qos0 := &Message{Topic: "sensors/t", Payload: []byte("21.5"), Source: src}
	r.Apply(qos0)
	if qos0.DedupeKey != "" {
		t.Fatal("a message without a send id got a dedupe key")
	}
	none := &Message{Topic: "sensors/t", Source: src, SendID: "7", Resend: true}
	Route{Dedupe: Dedupe{Kind: DedupeNone}}.Apply(none)
	if none.DedupeKey != "" {
		t.Fatal("dedupe none keyed a message")
	}
}

func TestNewIDSortsByTime(t *testing.T) {
	a, b := NewID(time.Unix(1, 0)), NewID(time.Unix(2, 0))
	if len(a) != 32 || a >= b || NewID(time.Unix(1, 0)) == a {
		t.Fatalf("ids %s %s", a, b)
	}
}

// TestRetransmitKeyNamesTheMessage: an MQTT packet id is reused once its
// message was acknowledged, so the id alone does not name a message. A new
// message under a reused id whose first send was lost (the gateway crashed
// before the commit) comes back as a DUP; keyed by the id alone it would
// match the older message's record and be acknowledged as a duplicate and
// never stored: lost. The key holds the topic and payload too; a real
// retransmit repeats both.
func TestRetransmitKeyNamesTheMessage(t *testing.T) {
	var r Route
	src := Source{Protocol: ProtoMQTT, ClientID: "dev"}
	older := &Message{Topic: "sensors/t", Payload: []byte("21.5"), Source: src, SendID: "7"}
	r.Apply(older)
	newer := &Message{Topic: "sensors/t", Payload: []byte("21.6"), Source: src, SendID: "7", Resend: true}
	r.Apply(newer)
	if newer.DedupeKey == older.DedupeKey {
		t.Fatalf("a DUP with a reused packet id and another payload has the older message's key %q: it would be dropped", older.DedupeKey)
	}
	other := &Message{Topic: "sensors/u", Payload: []byte("21.5"), Source: src, SendID: "7", Resend: true}
	r.Apply(other)
	if other.DedupeKey == older.DedupeKey {
		t.Fatal("a DUP with a reused packet id on another topic has the older message's key")
	}
	again := &Message{Topic: "sensors/t", Payload: []byte("21.5"), Source: src, SendID: "7", Resend: true}
	r.Apply(again)
	if again.DedupeKey != older.DedupeKey {
		t.Fatalf("a real retransmit has key %q, its first send %q", again.DedupeKey, older.DedupeKey)
	}
	// STOMP's message-id names the message itself: a repeat is a duplicate
	// whatever the body.
	s1 := &Message{Topic: "q", Payload: []byte("a"), Source: Source{Protocol: ProtoSTOMP, ClientID: "c"}, SendID: "m-1", Resend: true}
	s2 := &Message{Topic: "q", Payload: []byte("b"), Source: Source{Protocol: ProtoSTOMP, ClientID: "c"}, SendID: "m-1", Resend: true}
	r.Apply(s1)
	r.Apply(s2)
	if s1.DedupeKey != s2.DedupeKey {
		t.Fatal("a repeated STOMP message-id got two keys")
	}
}
