package firmwaresim

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func reading(run, dev string, seq int64) Reading {
	return Reading{ID: ReadingID(run, dev, seq), Run: run, Dev: dev, Seq: seq, TS: time.Unix(1000, 0).UnixNano()}
}

// envelope wraps payload as Ferry's bridge does (docs/design.md §5).
func envelope(t *testing.T, id string, payload []byte, b64 bool) []byte {
	t.Helper()
	e := map[string]any{
		"id": id, "type": "application/json", "timestamp": "2026-11-27T12:00:00Z",
		"source":  map[string]string{"protocol": "mqtt", "topic": "sensors/x"},
		"headers": map[string]string{"k": "v"},
	}
	if b64 {
		e["payload"] = base64.StdEncoding.EncodeToString(payload)
		e["encoding"] = "base64"
		e["type"] = "application/octet-stream"
	} else {
		e["payload"] = json.RawMessage(payload)
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadingEncodeSizeAndRoundTrip(t *testing.T) {
	r := reading("run1", "dev3", 42)
	for _, size := range []int{0, 10, 100, 256, 4096} {
		b := r.Encode(size)
		if size > 100 && len(b) != size {
			t.Errorf("size %d: encoded %d bytes", size, len(b))
		}
		got, env, err := DecodeArrival(b)
		if err != nil || env != "" {
			t.Fatalf("size %d: decode: %v env=%q", size, err, env)
		}
		got.Pad = ""
		if got != r {
			t.Errorf("size %d: got %+v want %+v", size, got, r)
		}
	}
	if id := ReadingID("", "dev3", 42); id != "dev3-000042" {
		t.Errorf("ReadingID without run = %q", id)
	}
}

func TestDecodeArrival(t *testing.T) {
	r := reading("r", "dev1", 7)
	raw := r.Encode(64)
	tests := []struct {
		name    string
		payload []byte
		wantEnv string
		wantErr bool
	}{
		{"raw", raw, "", false},
		{"envelope json", envelope(t, "env-1", raw, false), "env-1", false},
		{"envelope base64", envelope(t, "env-2", raw, true), "env-2", false},
		{"not json", []byte("hello"), "", true},
		{"json without reading", []byte(`{"temp":21.5}`), "", true},
		{"envelope of non-reading", envelope(t, "env-3", []byte(`{"temp":1}`), false), "env-3", true},
		{"envelope base64 of garbage", envelope(t, "env-4", []byte{0xff, 0, 1}, true), "env-4", true},
		{"bad base64", []byte(`{"id":"e","payload":"%%%","encoding":"base64"}`), "e", true},
		{"seq zero", []byte(`{"id":"x","dev":"d","seq":0}`), "", true},
		{"array", []byte(`[1,2]`), "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, env, err := DecodeArrival(tc.payload)
			if tc.wantErr {
				if !errors.Is(err, ErrNotReading) {
					t.Fatalf("err = %v, want ErrNotReading", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if env != tc.wantEnv {
				t.Errorf("envelope id %q, want %q", env, tc.wantEnv)
			}
			if got.ID != r.ID || got.Seq != 7 || got.Dev != "dev1" || got.TS != r.TS {
				t.Errorf("got %+v", got)
			}
		})
	}
}

// arrival is one synthetic upstream delivery.
type feed struct {
	topic   string
	dev     string
	seq     int64
	envID   string // "" raw
	base64  bool
	payload []byte // overrides the reading
	run     string
}

func TestVerifierAccounting(t *testing.T) {
	t0 := time.Unix(2000, 0)
	const run = "run9"
	ackAll := func(dev string, seqs ...int64) map[string]time.Time {
		m := map[string]time.Time{}
		for _, s := range seqs {
			m[ReadingID(run, dev, s)] = t0
		}
		return m
	}
	tests := []struct {
		name  string
		acked map[string]time.Time
		feed  []feed
		check func(t *testing.T, r Report)
	}{
		{
			name:  "all arrived once in order",
			acked: ackAll("d1", 1, 2, 3),
			feed:  []feed{{topic: "a", dev: "d1", seq: 1}, {topic: "a", dev: "d1", seq: 2}, {topic: "a", dev: "d1", seq: 3}},
			check: func(t *testing.T, r Report) {
				if !r.OK() || r.Lost != 0 || r.Arrived != 3 || r.Duplicates != 0 || r.OrderViolations != 0 {
					t.Errorf("report: %+v", r)
				}
			},
		},
		{
			name:  "loss detected",
			acked: ackAll("d1", 1, 2, 3, 4),
			feed:  []feed{{topic: "a", dev: "d1", seq: 1}, {topic: "a", dev: "d1", seq: 3}},
			check: func(t *testing.T, r Report) {
				want := []string{ReadingID(run, "d1", 2), ReadingID(run, "d1", 4)}
				if r.OK() || r.Lost != 2 || !reflect.DeepEqual(r.LostIDs, want) {
					t.Errorf("lost=%d ids=%v ok=%v, want 2 %v", r.Lost, r.LostIDs, r.OK(), want)
				}
				if r.OrderViolations != 0 {
					t.Errorf("a gap is not a reordering: %+v", r)
				}
			},
		},
		{
			name:  "duplicates split by envelope id",
			acked: ackAll("d1", 1, 2),
			feed: []feed{
				{topic: "a", dev: "d1", seq: 1, envID: "e1"},
				{topic: "a", dev: "d1", seq: 2, envID: "e2"},
				{topic: "a", dev: "d1", seq: 1, envID: "e1"},                // bridge resend
				{topic: "a", dev: "d1", seq: 2, envID: "e2b", base64: true}, // device retransmit, new spool message
				{topic: "a", dev: "d1", seq: 2, envID: "e2"},                // bridge resend again
			},
			check: func(t *testing.T, r Report) {
				if !r.OK() || r.Duplicates != 3 || r.DupSameEnvelope != 2 || r.DupNewEnvelope != 1 || r.DupNoEnvelope != 0 {
					t.Errorf("report: %+v", r)
				}
				if r.Deliveries != 5 || r.Arrived != 2 {
					t.Errorf("deliveries %d arrived %d", r.Deliveries, r.Arrived)
				}
			},
		},
		{
			name:  "raw duplicates",
			acked: ackAll("d1", 1),
			feed:  []feed{{topic: "a", dev: "d1", seq: 1}, {topic: "a", dev: "d1", seq: 1}},
			check: func(t *testing.T, r Report) {
				if !r.OK() || r.Duplicates != 1 || r.DupNoEnvelope != 1 {
					t.Errorf("report: %+v", r)
				}
			},
		},
		{
			name:  "reorder detected per device and topic",
			acked: ackAll("d1", 1, 2, 3, 4),
			feed: []feed{
				{topic: "a", dev: "d1", seq: 1}, {topic: "a", dev: "d1", seq: 3},
				{topic: "a", dev: "d1", seq: 2}, // backwards
				{topic: "a", dev: "d1", seq: 3}, // a duplicate of 3 is not a violation
				{topic: "a", dev: "d1", seq: 4},
			},
			check: func(t *testing.T, r Report) {
				if r.OK() || r.OrderViolations != 1 || r.Lost != 0 || len(r.OrderSamples) != 1 {
					t.Errorf("report: %+v", r)
				}
				if !strings.Contains(r.OrderSamples[0], "seq 2 after 3") {
					t.Errorf("sample %q", r.OrderSamples[0])
				}
			},
		},
		{
			name:  "independent devices and topics do not interfere",
			acked: map[string]time.Time{ReadingID(run, "d1", 5): t0, ReadingID(run, "d2", 1): t0, ReadingID(run, "d1", 1): t0},
			feed:  []feed{{topic: "a", dev: "d1", seq: 5}, {topic: "b", dev: "d2", seq: 1}, {topic: "c", dev: "d1", seq: 1}},
			check: func(t *testing.T, r Report) {
				if !r.OK() || r.OrderViolations != 0 {
					t.Errorf("report: %+v", r)
				}
			},
		},
		{
			name:  "malformed, foreign and unacked arrivals",
			acked: ackAll("d1", 1),
			feed: []feed{
				{topic: "a", payload: []byte("garbage")},
				{topic: "a", dev: "d1", seq: 1, run: "old"},
				{topic: "a", dev: "d1", seq: 1},
				{topic: "a", dev: "d1", seq: 2}, // QoS 0: never acked
			},
			check: func(t *testing.T, r Report) {
				if r.OK() || r.Malformed != 1 || r.Foreign != 1 || r.Unacked != 1 || r.Lost != 0 || r.Arrived != 2 {
					t.Errorf("report: %+v", r)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := NewVerifier(VerifierOptions{RunID: run})
			for i, f := range tc.feed {
				p := f.payload
				if p == nil {
					r := f.run
					if r == "" {
						r = run
					}
					rd := reading(r, f.dev, f.seq)
					rd.TS = t0.Add(-time.Second).UnixNano()
					p = rd.Encode(0)
					if f.envID != "" {
						p = envelope(t, f.envID, p, f.base64)
					}
				}
				v.ObserveAt(f.topic, p, t0.Add(time.Duration(i+1)*time.Millisecond))
			}
			r := v.Report(tc.acked)
			tc.check(t, r)
			s := r.String()
			if wantVerdict := map[bool]string{true: "verdict: OK", false: "verdict: FAILED"}[r.OK()]; !strings.Contains(s, wantVerdict) {
				t.Errorf("String() lacks %q:\n%s", wantVerdict, s)
			}
		})
	}
}

func TestReportLatencyAndThroughput(t *testing.T) {
	t0 := time.Unix(3000, 0)
	v := NewVerifier(VerifierOptions{})
	acked := map[string]time.Time{}
	// 100 readings, reading i acked at t0+i ms and arriving i ms later
	// (i+1 ms for the 100th): latencies 1..100 ms.
	for i := int64(1); i <= 100; i++ {
		rd := reading("", "d", i)
		rd.TS = t0.UnixNano()
		ackAt := t0.Add(time.Duration(i) * time.Millisecond)
		acked[rd.ID] = ackAt
		v.ObserveAt("t", rd.Encode(0), ackAt.Add(time.Duration(i)*time.Millisecond))
	}
	// One arrived before its ack (direct to a broker): clamped to 0.
	early := reading("", "e", 1)
	early.TS = t0.UnixNano()
	acked[early.ID] = t0.Add(time.Hour)
	v.ObserveAt("t2", early.Encode(0), t0.Add(200*time.Millisecond))

	r := v.Report(acked)
	want := Percentiles{N: 101, P50: 50 * time.Millisecond, P95: 95 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}
	if r.AckToArrival != want {
		t.Errorf("ack->arrival %+v, want %+v", r.AckToArrival, want)
	}
	if r.SendToArrival.Max != 200*time.Millisecond || r.SendToArrival.N != 101 {
		t.Errorf("send->arrival %+v", r.SendToArrival)
	}
	if r.Span != 198*time.Millisecond {
		t.Errorf("span %v", r.Span)
	}
	if wantTP := 101 / 0.198; r.Throughput < wantTP-1 || r.Throughput > wantTP+1 {
		t.Errorf("throughput %.1f, want %.1f", r.Throughput, wantTP)
	}
}

func TestPercentiles(t *testing.T) {
	if p := percentiles(nil); p.N != 0 || p.String() != "n=0" {
		t.Errorf("empty: %+v", p)
	}
	p := percentiles([]time.Duration{3 * time.Second})
	if p.P50 != 3*time.Second || p.P99 != 3*time.Second || p.Max != 3*time.Second {
		t.Errorf("one: %+v", p)
	}
}

func TestParseMix(t *testing.T) {
	tests := []struct {
		in      string
		want    []Protocol
		wantErr string
	}{
		{"mqtt311", []Protocol{MQTT311}, ""},
		{"mqtt311:3,stomp:1", []Protocol{MQTT311, STOMP, MQTT311, MQTT311}, ""},
		{"stomp, mqtt", []Protocol{STOMP, MQTT311}, ""},
		{"stomp:0,mqtt:2", []Protocol{MQTT311, MQTT311}, ""},
		{"mqtt5:1,mqtt311", []Protocol{MQTT5, MQTT311}, ""},
		{"amqp", nil, "unknown protocol"},
		{"mqtt:x", nil, "weight"},
		{"stomp:0", nil, "no protocol"},
		{"", nil, "no protocol"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseMix(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v %v, want %v", got, err, tc.want)
			}
		})
	}
}

func TestFleetAndDeviceValidation(t *testing.T) {
	if _, err := NewFleet(FleetOptions{}); err == nil {
		t.Error("zero devices accepted")
	}
	_, err := NewDevice(DeviceConfig{Name: "d", Protocol: MQTT311, QoS: 3, Window: -1})
	if err == nil || !strings.Contains(err.Error(), "addr is required") || !strings.Contains(err.Error(), "qos") {
		t.Errorf("want every problem reported, got %v", err)
	}
	f, err := NewFleet(FleetOptions{Devices: 5, Mix: []Protocol{MQTT311, STOMP}, MQTTAddr: "m:1", STOMPAddr: "s:2", RunID: "r",
		Template: DeviceConfig{Topic: "x/{device}/{proto}/{n}"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range f.Devices() {
		got = append(got, fmt.Sprintf("%s %s %s %s", d.Name(), d.cfg.Protocol, d.cfg.Addr, d.Topic()))
	}
	want := []string{
		"dev0 mqtt311 m:1 x/dev0/mqtt311/0", "dev1 stomp s:2 x/dev1/stomp/1", "dev2 mqtt311 m:1 x/dev2/mqtt311/2",
		"dev3 stomp s:2 x/dev3/stomp/3", "dev4 mqtt311 m:1 x/dev4/mqtt311/4",
	}
	if !slices.Equal(got, want) {
		t.Errorf("devices:\n%v\nwant\n%v", got, want)
	}
}
