package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/internal/testkit"
)

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--qos", "3"}, {"--mix", "amqp"}, {"--devices", "0"}, {"--log-level", "loud"}, {"extra"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, errOut.String())
		}
	}
}

// TestRunAgainstMosquitto uses one mosquitto as both the "gateway" and the
// upstream: readings published to sensors/… arrive on sensors/#, so the
// report is OK and the exit code 0; a verifier watching another filter sees
// nothing, reports every acknowledged reading lost and exits 1.
func TestRunAgainstMosquitto(t *testing.T) {
	m := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	// The run ends when the 60 readings are acknowledged (and, with
	// --settle, arrived): --duration (plus --drain) and the settle of the
	// delivered case are hang guards only. In the lost case nothing can
	// arrive on elsewhere/#, so its settle is waited out in full: short,
	// and a slow machine cannot change its verdict.
	guard := testkit.Timeout(testkit.DefaultWait)
	tests := []struct {
		name     string
		filter   string
		settle   time.Duration
		wantCode int
		want     []string
	}{
		{"delivered", "sensors/#", guard, 0, []string{"verdict: OK", "acked: 60", "lost: 0", "order violations: 0"}},
		{"lost", "elsewhere/#", 2 * time.Second, 1, []string{"verdict: FAILED", "acked: 60", "lost: 60"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*guard) // above duration+drain+settle
			defer cancel()
			var out, errOut bytes.Buffer
			code := run(ctx, []string{
				"--mqtt", m.Addr(), "--upstream", m.Addr(), "--filter", tc.filter,
				"--devices", "3", "--count", "20", "--rate", "200", "--window", "4", "--qos", "1",
				"--duration", guard.String(), "--drain", "2s", "--settle", tc.settle.String(), "--progress", "100ms",
			}, &out, &errOut)
			if ctx.Err() != nil {
				t.Fatalf("hang guard: firmware-sim still running after %v (%s=%g)", 3*guard, testkit.ScaleEnv, testkit.Scale())
			}
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, out.String(), errOut.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if !strings.Contains(out.String(), "sent=60 acked=60") {
				t.Errorf("no final progress line:\n%s", out.String())
			}
		})
	}
}
