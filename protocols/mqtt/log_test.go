package mqtt

import (
	"bytes"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// logBuffer collects log lines written concurrently.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.b.String()), "\n")
}

// textKeys returns the keys of one slog text line, in order.
func textKeys(line string) ([]string, error) {
	var keys []string
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " ") {
		k, rest, ok := strings.Cut(s, "=")
		if !ok || strings.ContainsAny(k, " \"") {
			return keys, fmt.Errorf("no key=value at %q", s)
		}
		keys = append(keys, k)
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return keys, err
			}
			s = rest[len(q):]
		} else if i := strings.IndexByte(rest, ' '); i >= 0 {
			s = rest[i:]
		} else {
			s = ""
		}
	}
	return keys, nil
}

// withLine returns the lines that contain every one of parts.
func withLine(lines []string, parts ...string) []string {
	var out []string
next:
	for _, l := range lines {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// TestRefusalsLogged: denied publishes and oversized packets are logged at
// info (they were at debug, invisible at the default level) with the
// client and topic, at most one line per reason per interval; at debug no
// line repeats a key (component=mqtt component=mochi) or dumps a packet
// (mochi logs whole packets.Packet values, payload included).
func TestRefusalsLogged(t *testing.T) {
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", "mqtt")
	s, _ := startServer(t, testOptions{Options: Options{
		Logger: log, MaxPacketSize: 16 << 10,
		Auth: &testAuth{anonymous: true, denyPub: []string{"secret/"}},
	}})
	addr := s.Addr("tcp")

	denied, _ := dialRaw(t, addr, "dev-denied", connectOpts{v5: true})
	for id := uint16(1); id <= 3; id++ {
		denied.publish("secret/valve", []byte("open"), 1, id)
		if code := denied.ack(4, id); code != packets.ErrNotAuthorized.Code {
			t.Fatalf("publish %d: PUBACK 0x%02x, want 0x87", id, code)
		}
	}
	// An invalid topic with a big payload: mochi logs the packet it
	// rejects ("packet rejected", packet=…).
	bad, _ := dialRaw(t, addr, "dev-bad-topic", connectOpts{v5: true})
	bad.publish("sensors/+/temp", bytes.Repeat([]byte("p"), 8<<10), 1, 1)
	bad.expectClosed()
	big, _ := dialRaw(t, addr, "dev-big", connectOpts{})
	big.publish("sensors/big", bytes.Repeat([]byte("x"), 32<<10), 1, 1)
	big.expectClosed()
	waitFor(t, "the oversized packet logged", func() bool {
		return len(withLine(logs.lines(), "mqtt client dropped for a bad packet", "client_id=dev-big")) > 0
	})

	lines := logs.lines()
	if got := withLine(lines, "level=INFO", `msg="mqtt publish refused"`, "client_id=dev-denied", "topic=secret/valve", "reason=not_authorized"); len(got) != 1 {
		t.Errorf("denied publishes: %d info lines, want 1 (3 refused, rate-limited):\n%s", len(got), strings.Join(lines, "\n"))
	}
	if got := withLine(lines, "level=INFO", "mqtt client dropped for a bad packet", "client_id=dev-big", "reason=too_large"); len(got) != 1 {
		t.Errorf("oversized packet: %d info lines, want 1:\n%s", len(got), strings.Join(lines, "\n"))
	}
	if got := withLine(lines, "level=INFO", `msg="mqtt publish refused"`, "client_id=dev-bad-topic", "reason=invalid_topic"); len(got) != 1 {
		t.Errorf("invalid topic: %d info lines, want 1 (a reason of its own):\n%s", len(got), strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if len(l) > 1024 {
			t.Errorf("a %d-byte log line:\n%.300s…", len(l), l)
		}
		keys, err := textKeys(l)
		if err != nil {
			t.Errorf("%v in %s", err, l)
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Errorf("key %q repeated: %s", k, l)
			}
			seen[k] = true
		}
	}
	if len(withLine(lines, "lib=mochi")) == 0 {
		t.Errorf("no mochi lines at debug: the test did not exercise them:\n%s", strings.Join(lines, "\n"))
	}
}

// TestMochiLogAttrs: a packet or will that mochi logs becomes a one-line
// summary without the payload or a CONNECT password; mochi's keys are ours.
func TestMochiLogAttrs(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(mochiLogHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})})
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7, TopicName: "a/b", Payload: bytes.Repeat([]byte("z"), 5000)}
	conn := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{ClientIdentifier: "c1", Password: []byte("hunter2")}}
	l.Warn("error processing packet", "error", fmt.Errorf("boom"), "client", "c1", "pk", pk, "connect", &conn,
		"will", mochi.Will{TopicName: "w", Payload: []byte("bye")}, "blob", struct{ B []byte }{make([]byte, 4000)})
	out := buf.String()
	for _, want := range []string{"level=DEBUG", "err=boom", "client_id=c1", `pk="Publish id=7 topic=\"a/b\" qos=1 payload_bytes=5000"`,
		`connect="Connect client_id=\"c1\""`, `will="will topic=\"w\" payload_bytes=3"`, `blob="struct`} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q: %s", want, out)
		}
	}
	if strings.Contains(out, "zzzz") || strings.Contains(out, "hunter2") || len(out) > 600 {
		t.Errorf("a payload or password in the log (%d bytes): %.400s", len(out), out)
	}
}
