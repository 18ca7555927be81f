package message

import (
	"bytes"
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
	for name, m := range map[string]*Message{"full": sample(), "zero": {}, "topic only": {Topic: "a"}} {
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
		})
	}
}

func equal(a, b *Message) bool {
	return a.ID == b.ID && a.Topic == b.Topic && bytes.Equal(a.Payload, b.Payload) && a.QoS == b.QoS &&
		a.Priority == b.Priority && a.Retain == b.Retain && a.ContentType == b.ContentType &&
		(len(a.Headers) == 0 && len(b.Headers) == 0 || reflect.DeepEqual(a.Headers, b.Headers)) &&
		a.Source == b.Source && a.AcceptedAt.Equal(b.AcceptedAt) && a.ExpiresAt.Equal(b.ExpiresAt) &&
		a.DedupeKey == b.DedupeKey && a.UpstreamTopic == b.UpstreamTopic && a.UpstreamQoS == b.UpstreamQoS
}

func TestDecodeRejects(t *testing.T) {
	good := Encode(nil, sample())
	for name, b := range map[string][]byte{
		"empty":          nil,
		"future version": append([]byte{2}, good[1:]...),
		"truncated":      good[:len(good)-1],
		"trailing":       append(append([]byte(nil), good...), 0),
		"bad flags":      append([]byte{1, 0x80}, good[2:]...),
		"bad priority":   append([]byte{1, 0, 1, 10}, good[4:]...),
		"huge length":    {1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
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
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to the same bytes.
		if again := Encode(nil, m); !bytes.Equal(again, b) {
			t.Fatalf("decode/encode not stable:\n in %x\nout %x", b, again)
		}
	})
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
	for _, bad := range []string{"json", "md5", "json:"} {
		if _, err := ParseDedupe(bad); err == nil {
			t.Errorf("ParseDedupe(%q) accepted", bad)
		}
	}
}

func TestRouteApply(t *testing.T) {
	m := &Message{Topic: "a", AcceptedAt: time.Unix(100, 0), Headers: []Header{{"msg-id", "x"}}}
	Route{Priority: 4, TTL: time.Minute, Dedupe: Dedupe{Kind: DedupeProperty}, UpstreamTopic: "up/a", UpstreamQoS: 1}.Apply(m)
	if m.Priority != 4 || !m.ExpiresAt.Equal(time.Unix(160, 0)) || m.DedupeKey != "x" || m.UpstreamTopic != "up/a" || m.UpstreamQoS != 1 {
		t.Fatalf("Apply: %+v", m)
	}
	if !m.Expired(time.Unix(160, 0)) || m.Expired(time.Unix(159, 0)) {
		t.Fatal("Expired boundary")
	}
}

func TestNewIDSortsByTime(t *testing.T) {
	a, b := NewID(time.Unix(1, 0)), NewID(time.Unix(2, 0))
	if len(a) != 32 || a >= b || NewID(time.Unix(1, 0)) == a {
		t.Fatalf("ids %s %s", a, b)
	}
}
