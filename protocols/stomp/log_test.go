package stomp

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"
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

// matching returns the lines that contain every one of parts.
func (l *logBuffer) matching(parts ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range strings.Split(l.b.String(), "\n") {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRefusalsLogRateLimited: refused SENDs and oversized frames are
// logged at info with the client and destination, but a device that keeps
// sending them gets one line per reason and interval (every one was
// logged), the next saying how many were left out.
func TestRefusalsLogRateLimited(t *testing.T) {
	logs := &logBuffer{}
	_, addr := startServer(t, testOptions{Options: Options{
		Auth: users{}, MaxFrameSize: 1024,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}})
	for range 3 {
		c := connectRaw(t, addr, V12, "login", "u", "passcode", "p")
		c.send(fr(frame.SEND, "x", frame.Destination, "/topic/secret.valve", frame.Receipt, "r"))
		c.expectError("not authorized")
	}
	for range 3 {
		c := connectRaw(t, addr, V12, "login", "u", "passcode", "p")
		c.write([]byte("SEND\ndestination:/queue/a\n\n" + strings.Repeat("x", 4096) + "\x00"))
		c.expectError("frame too large")
	}
	denied := logs.matching("level=INFO", "reason=not_authorized", "client_id=", "user=u", "secret.valve", "suppressed=0")
	if len(denied) != 1 {
		t.Errorf("denied SENDs: %d info lines, want 1 (3 refused):\n%s", len(denied), logs)
	}
	big := logs.matching("level=INFO", `msg="stomp frame refused"`, "reason=too_large", "client_id=", "remote=127.0.0.1:")
	if len(big) != 1 {
		t.Errorf("oversized frames: %d info lines, want 1 (3 refused):\n%s", len(big), logs)
	}
}
