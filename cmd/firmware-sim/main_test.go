package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/bridgetest"
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
	tests := []struct {
		name     string
		filter   string
		wantCode int
		want     []string
	}{
		{"delivered", "sensors/#", 0, []string{"verdict: OK", "acked: 60", "lost: 0", "order violations: 0"}},
		{"lost", "elsewhere/#", 1, []string{"verdict: FAILED", "acked: 60", "lost: 60"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			var out, errOut bytes.Buffer
			code := run(ctx, []string{
				"--mqtt", m.Addr(), "--upstream", m.Addr(), "--filter", tc.filter,
				"--devices", "3", "--count", "20", "--rate", "200", "--window", "4", "--qos", "1",
				"--duration", "20s", "--drain", "2s", "--settle", "2s", "--progress", "100ms",
			}, &out, &errOut)
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
