package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

// buildFerry builds the ferry binary into the test's temp dir.
func buildFerry(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
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

// TestRunLogging runs the binary: every listener is logged at start (STOMP
// and HTTP were not), -v logs at debug, SIGHUP applies log.level (it needed
// a restart) unless -v chose the level, and no line repeats a key.
func TestRunLogging(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildFerry(t)
	for _, c := range []struct {
		name     string
		args     []string
		reloadTo string // log.level written before SIGHUP
		after    string // the line the reload logs
	}{
		{"log.level", nil, "debug", `msg="log level changed" from=INFO to=DEBUG`},
		{"-v", []string{"-v"}, "warn", `msg="log.level not applied: the level given at start stays until a restart" log_level=DEBUG configured=WARN`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, addrs := devConfig(t)
			cmd := exec.Command(bin, append(append([]string{"run"}, c.args...), path)...)
			logs := &syncBuffer{}
			cmd.Stdout, cmd.Stderr = logs, logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			guard := testkit.Timeout(testkit.DefaultWait)
			t.Cleanup(func() {
				_ = cmd.Process.Signal(os.Interrupt)
				select {
				case <-exited:
				case <-time.After(guard):
					_ = cmd.Process.Kill()
					t.Errorf("hang guard: ferry did not stop within %v of SIGINT", guard)
				}
			})
			waitPort(t, addrs["8080"], exited, logs)
			testkit.Wait(t, "the start line", func() bool { return strings.Contains(logs.String(), `msg="gateway started"`) })
			for _, want := range []string{
				`msg="mqtt listening" component=mqtt listener=mqtt kind=tcp addr=` + addrs["1883"],
				`msg="mqtt listening" component=mqtt listener=websocket kind=ws addr=` + addrs["1882"],
				`msg="stomp listening" component=stomp listener=stomp kind=tcp addr=` + addrs["61613"],
				`msg="http listening" component=http listener=http addr=` + addrs["8080"] + " auth=none",
			} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("start log lacks %q:\n%s", want, logs.String())
				}
			}
			if debug := strings.Contains(logs.String(), "level=DEBUG"); debug != (c.args != nil) {
				t.Errorf("debug lines at start: %v, want %v:\n%s", debug, c.args != nil, logs.String())
			}

			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			y := strings.Replace(string(b), "  level: info\n", "  level: "+c.reloadTo+"\n", 1)
			if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			testkit.Wait(t, "the reload", func() bool { return strings.Contains(logs.String(), `msg="configuration reloaded`) })
			if !strings.Contains(logs.String(), c.after) {
				t.Errorf("reload did not log %q:\n%s", c.after, logs.String())
			}
			// At debug now either way: a connection that ends says so.
			conn, err := net.Dial("tcp", addrs["1883"])
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.Close()
			testkit.Wait(t, "a debug line after the reload", func() bool {
				return strings.Contains(logs.String(), `level=DEBUG msg="mqtt connection ended"`)
			})

			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				if !strings.HasPrefix(l, "time=") {
					continue // the start banner
				}
				keys, err := textKeys(l)
				if err != nil {
					t.Errorf("%v: %s", err, l)
				}
				seen := map[string]bool{}
				for _, k := range keys {
					if seen[k] {
						t.Errorf("key %q repeated: %s", k, l)
					}
					seen[k] = true
				}
			}
		})
	}
}

// TestRunLogLevelFlag: a bad --log-level, or -v with another level, is a
// usage error before anything starts.
func TestRunLogLevelFlag(t *testing.T) {
	path, _ := devConfig(t)
	for _, args := range [][]string{
		{"run", "--log-level", "verbose", path},
		{"run", "-v", "--log-level", "warn", path},
	} {
		if code, _, errs := runCLI(t, "", args...); code != exitUsage || !strings.Contains(errs, "log-level") {
			t.Errorf("%v: exit %d %q, want a usage error", args, code, errs)
		}
	}
}
