package gateway

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/gateway/config"
)

// TestReloadLogLevel: a reload applies log.level to the running logger
// (it needed a restart); a level given at start stays; log.format still
// needs a restart and is named as such.
func TestReloadLogLevel(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.yaml")
	y := func(level, format string) []byte {
		return []byte("gateway_id: gw\nallow_anonymous: true\nlog: {level: " + level + ", format: " + format + "}\n" +
			"listeners: {mqtt: {address: \"127.0.0.1:0\"}, stomp: {address: \"\"}, http: {address: \"\"}}\n" +
			"spool: {path: " + filepath.Join(dir, "s.db") + "}\nbridge: {upstream: [embedded], embedded_address: \"127.0.0.1:0\"}\n")
	}
	for _, pinned := range []bool{false, true} {
		if err := os.WriteFile(path, y("info", "text"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		level := new(slog.LevelVar)
		level.Set(cfg.Log.SlogLevel())
		g, err := New(cfg, Options{Logger: cfg.Log.NewLogger(&buf, level), LogLevel: level, LogLevelPinned: pinned})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, y("debug", "text"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := g.Reload(path); err != nil {
			t.Fatal(err)
		}
		want, line := slog.LevelDebug, `"log level changed" from=INFO to=DEBUG`
		if pinned {
			want, line = slog.LevelInfo, "log.level not applied"
		}
		if level.Level() != want || !strings.Contains(buf.String(), line) {
			t.Errorf("pinned=%v: level %v after reload, want %v; log:\n%s", pinned, level.Level(), want, buf.String())
		}
		if strings.Contains(buf.String(), "need a restart") {
			t.Errorf("pinned=%v: log.level reported as needing a restart:\n%s", pinned, buf.String())
		}
		_ = g.sp.Close()
	}

	old, _ := config.Parse("a.yaml", y("info", "text"), nil)
	for _, c := range []struct {
		level, format string
		want          []string
	}{
		{"debug", "text", nil},
		{"info", "json", []string{"log.format"}},
	} {
		nc, err := config.Parse("b.yaml", y(c.level, c.format), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := config.RestartRequired(old, nc); !reflect.DeepEqual(got, c.want) {
			t.Errorf("log %s/%s: config.RestartRequired = %v, want %v", c.level, c.format, got, c.want)
		}
	}
}
