package mqtt

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
)

// pipeServer runs a real server (mochi with our hooks) whose only listener
// hands out net.Pipe connections, outside a synctest bubble: for fuzzing,
// where a socket per input would be slow. Closed in Cleanup.
func pipeServer(t testing.TB, to testOptions) (*Server, *testkit.PipeListener, *recsink.Sink) {
	t.Helper()
	sink := &recsink.Sink{}
	to.Sink = sink
	opts := to.Options
	opts.Ingest = newCore(t, to)
	if opts.Auth == nil {
		opts.Auth = &testAuth{anonymous: true}
	}
	opts.Listeners = nil
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln := testkit.NewPipeListener()
	if err := s.ms.AddListener(pipeMochi{newListener(Listener{Name: "pipe", Kind: KindTCP, Address: "pipe"}, &s.opts, s.pre, &s.hook.stats), ln}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard())
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s, ln, sink
}

// FuzzPublishTopic fuzzes the hook's topic check end to end: an MQTT 5
// client publishes (QoS 1) to the fuzzed topic through a real server. The
// publish is acknowledged with success exactly when ingest.CheckTopic
// accepts the topic and its first level is not $share, and then the Sink
// has it under that topic; otherwise
// the client gets a failure code, a DISCONNECT, or a closed connection.
func FuzzPublishTopic(f *testing.F) {
	for _, s := range []string{"a/b", "", "/", "a//b", "$SYS/x", "$sys/x", "$ferry/x", "a/+", "a/#", "#", "a\x00b",
		"\xff\xfe", "é/ü", "\uFEFF", "a/\U0010FFFF", "\xed\xa0\x80", "a b", "$share/g/t"} {
		f.Add(s)
	}
	s, ln, sink := pipeServer(f, testOptions{Options: Options{MaxTopicLength: 64, MaxTopicLevels: 6,
		ConnectTimeout: guard(), ReadTimeout: guard(), AcceptTimeout: guard()}})
	f.Fuzz(func(t *testing.T, topic string) {
		if len(topic) > 256 {
			t.Skip("the limit is 64 bytes: longer topics add nothing but time")
		}
		rc, code := connectOn(t, ln.Dial(), "fuzz", connectOpts{v5: true})
		if code != 0 {
			t.Fatalf("CONNACK %#x", code)
		}
		defer func() { _ = rc.c.Close() }()
		rc.publish(topic, []byte("p"), 1, 7)
		want := ingest.CheckTopic(topic, s.opts.MaxTopicLength, s.opts.MaxTopicLevels)
		if first, _, _ := strings.Cut(topic, "/"); want == nil && strings.EqualFold(first, "$share") {
			want = errors.New("$share is reserved")
		}
		p, err := rc.read(guard())
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			t.Fatalf("topic %q: no answer (CheckTopic: %v)", topic, want)
		case err != nil: // closed: a refusal
			if want == nil {
				t.Fatalf("topic %q is valid, connection closed: %v", topic, err)
			}
		case p.typ == 4 && len(p.body) >= 2 && binary.BigEndian.Uint16(p.body) == 7:
			ok := len(p.body) == 2 || p.body[2] < 0x80
			if ok != (want == nil) {
				t.Fatalf("topic %q: PUBACK %x, CheckTopic: %v", topic, p.body, want)
			}
			if ok {
				msgs := sink.Messages()
				if got := msgs[len(msgs)-1].Topic; got != topic {
					t.Fatalf("stored under %q, published to %q", got, topic)
				}
			}
		case p.typ == 14: // DISCONNECT
			if want == nil {
				t.Fatalf("topic %q is valid, got DISCONNECT %x", topic, p.body)
			}
		default:
			t.Fatalf("topic %q: unexpected packet type %d body %x", topic, p.typ, p.body)
		}
	})
}

// FuzzPackets feeds arbitrary bytes, in two writes, to a real server (mochi
// with our hooks) over net.Pipe, before or after a valid CONNECT. No input
// may panic the server or keep it from serving the next client.
func FuzzPackets(f *testing.F) {
	connect := func(v5 bool) []byte {
		ver := byte(4)
		if v5 {
			ver = 5
		}
		body := append(mqttString("MQTT"), ver, 0x02, 0, 30)
		if v5 {
			body = append(body, 0)
		}
		return packet(0x10, append(body, mqttString("fz")...))
	}
	pub := packet(0x32, append(append(mqttString("a/b"), 0, 1), "x"...))
	pub5 := packet(0x32, append(append(mqttString("a/b"), 0, 1, 0), "x"...))
	for _, seed := range []struct {
		connect, v5 bool
		data        []byte
	}{
		{true, false, pub},
		{true, true, pub5},
		{true, true, packet(0x32, append(append(mqttString(""), 0, 1, 3, 0x23, 0, 1), "x"...))}, // topic alias 1, unknown
		{true, false, packet(0x82, append([]byte{0, 1}, append(mqttString("a/#"), 1)...))},
		{true, false, []byte{0x30, 0xff, 0xff, 0xff, 0x7f}},
		{true, false, []byte{0xe0, 0}},
		{true, true, []byte{0x62, 2, 0, 1}},
		{false, false, connect(false)[:9]},
		{false, false, append([]byte{0x10}, varint(1<<20)...)},
		{false, true, connect(true)},
		{false, false, []byte("GET / HTTP/1.1\r\n\r\n")},
	} {
		f.Add(seed.connect, seed.v5, seed.data)
	}
	_, ln, _ := pipeServer(f, testOptions{Options: Options{ConnectTimeout: time.Second, ReadTimeout: time.Second,
		AcceptTimeout: time.Second, MaxPacketSize: 4096, MaxConnectSize: 1024}})
	f.Fuzz(func(t *testing.T, withConnect, v5 bool, data []byte) {
		if len(data) > 8192 {
			t.Skip("max_packet_size is 4 KiB")
		}
		c := ln.Dial()
		defer func() { _ = c.Close() }()
		in := data
		if withConnect {
			in = append(connect(v5), data...)
		}
		go func() { // net.Pipe writes wait for the reader
			half := len(in) / 2
			if _, err := c.Write(in[:half]); err == nil {
				_, _ = c.Write(in[half:])
			}
		}()
		// Read what the server answers until it closes or falls silent.
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()

		// The server still serves a well-behaved client.
		rc, code := connectOn(t, ln.Dial(), "after", connectOpts{})
		if code != 0 {
			t.Fatalf("CONNACK %#x after input %x", code, in)
		}
		rc.publish("ok", []byte("x"), 1, 1)
		if got := rc.ack(4, 1); got != 0 {
			t.Fatalf("PUBACK %#x after input %x", got, in)
		}
		_ = rc.c.Close()
	})
}
