package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/internal/testkit"
)

// buildFerry returns the ferry binary the campaign runs: FERRY_CHAOS_BIN
// when set, else a fresh `go build ./cmd/ferry` (with -race when
// FERRY_CHAOS_RACE=1) into a temporary directory. The child is built
// without -race by default even under `go test -race`: the campaign's
// heavy work is in the child, and a race-instrumented gateway is several
// times slower.
func buildFerry(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("FERRY_CHAOS_BIN"); p != "" {
		return p
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(t.TempDir(), "ferry")
	args := []string{"build", "-o", bin}
	if os.Getenv("FERRY_CHAOS_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/ferry")...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ferry: %v\n%s", err, b)
	}
	return bin
}

// gatewayProc is the gateway under test: `ferry run -c CONFIG` as a child
// process, its stdout and stderr appended to one log file across restarts,
// so that it can be SIGKILLed and started again on the same spool and
// ports.
type gatewayProc struct {
	bin, cfg string
	logPath  string
	httpAddr string
	client   http.Client

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	exitErr  error
	stopping bool // we ended it: its exit is expected
	starts   int
	startAt  []time.Time
	first    *gateway.Status // first status of the current lifetime
}

// startGuard bounds the wait for a (re)started gateway to serve.
const startGuard = 60 * time.Second

// start runs the gateway and waits until it serves /api/status with the
// spool open and, when needReady, /readyz answers 200. It returns an error
// (with the log's tail) when the gateway exits first or the hang guard
// passes; the caller decides whether that is fatal.
func (g *gatewayProc) start(needReady bool) error {
	logf, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	g.mu.Lock()
	n := g.starts + 1
	g.mu.Unlock()
	fmt.Fprintf(logf, "=== chaos: start %d at %s ===\n", n, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(g.bin, "run", "-c", g.cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start %s run -c %s: %w", g.bin, g.cfg, err)
	}
	exited := make(chan struct{})
	g.mu.Lock()
	g.cmd, g.exited, g.stopping, g.exitErr, g.first = cmd, exited, false, nil, nil
	g.starts = n
	g.startAt = append(g.startAt, time.Now())
	g.mu.Unlock()
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		g.mu.Lock()
		g.exitErr = err
		g.mu.Unlock()
		close(exited)
	}()

	guard := testkit.Timeout(startGuard)
	deadline := time.Now().Add(guard)
	for {
		select {
		case <-exited:
			return fmt.Errorf("the gateway exited while starting (%w); log tail:\n%s", g.exitError(), g.tail(20))
		default:
		}
		if st, err := g.status(); err == nil && st.Spool != nil && (!needReady || st.Ready) {
			g.mu.Lock()
			g.first = st
			g.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			g.kill()
			return fmt.Errorf("hang guard: the gateway was not serving (ready=%v) after %v (%s=%g); log tail:\n%s",
				needReady, guard, testkit.ScaleEnv, testkit.Scale(), g.tail(20))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (g *gatewayProc) exitError() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.exitErr == nil {
		return errors.New("exit status 0")
	}
	return g.exitErr
}

// startTimes are when each lifetime began.
func (g *gatewayProc) startTimes() []time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.startAt)
}

// firstStatus is the first status of the current lifetime, read as soon
// as it served.
func (g *gatewayProc) firstStatus() *gateway.Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.first
}

// unexpectedExit reports an exit the campaign did not cause.
func (g *gatewayProc) unexpectedExit() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil || g.stopping || !isClosed(g.exited) {
		return nil
	}
	if g.exitErr == nil {
		return errors.New("exit status 0")
	}
	return g.exitErr
}

// kill ends the gateway with SIGKILL and waits for it.
func (g *gatewayProc) kill() {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.stopping = true
	g.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// stopGuard bounds a graceful stop (DESIGN: shutdown finishes within its
// bound; issue 9 defect 6 was a writer that never let it).
const stopGuard = 30 * time.Second

// stop ends the gateway with SIGTERM. An error means it did not exit
// cleanly within the guard (it is killed then).
func (g *gatewayProc) stop() error {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.stopping = true
	g.mu.Unlock()
	if cmd == nil || isClosed(exited) {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		g.mu.Lock()
		err := g.exitErr
		g.mu.Unlock()
		if err != nil {
			return fmt.Errorf("gateway exit after SIGTERM: %w; log tail:\n%s", err, g.tail(20))
		}
		return nil
	case <-testkit.After(stopGuard):
		g.kill()
		return fmt.Errorf("hang guard: the gateway did not stop within %v of SIGTERM (killed); log tail:\n%s", testkit.Timeout(stopGuard), g.tail(20))
	}
}

func (g *gatewayProc) get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+g.httpAddr+path, nil)
	if err != nil {
		return nil, err
	}
	return g.client.Do(req)
}

// status reads /api/status.
func (g *gatewayProc) status() (*gateway.Status, error) {
	return gateway.FetchStatus(context.Background(), &g.client, g.httpAddr)
}

// readyz returns the status code of /readyz (0 when it does not answer).
func (g *gatewayProc) readyz() int {
	resp, err := g.get("/readyz")
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// metrics scrapes /metrics.
func (g *gatewayProc) metrics() (metricSet, error) {
	resp, err := g.get("/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("/metrics: %w", err)
	}
	return metricSet(fams), nil
}

// metricSet is one scrape.
type metricSet map[string]*dto.MetricFamily

// value sums the series of name whose labels include every pair of
// labels ("k", "v", ...); 0 when there is none.
func (m metricSet) value(name string, labels ...string) float64 {
	f := m[name]
	if f == nil {
		return 0
	}
	sum := 0.0
next:
	for _, s := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range s.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			sum += s.GetCounter().GetValue()
		case s.Gauge != nil:
			sum += s.GetGauge().GetValue()
		case s.Untyped != nil:
			sum += s.GetUntyped().GetValue()
		}
	}
	return sum
}

// byLabel returns name's series summed by the value of one label.
func (m metricSet) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	f := m[name]
	if f == nil {
		return out
	}
	for _, s := range f.GetMetric() {
		for _, lp := range s.GetLabel() {
			if lp.GetName() == label {
				v := s.GetCounter().GetValue() + s.GetGauge().GetValue()
				out[lp.GetValue()] += v
			}
		}
	}
	return out
}

// logSize is the log's current length: pass it to logSince to read what a
// lifetime or a spell wrote.
func (g *gatewayProc) logSize() int64 {
	fi, err := os.Stat(g.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logEntry is one JSON log line of the gateway.
type logEntry map[string]any

func (e logEntry) str(k string) string {
	s, _ := e[k].(string)
	return s
}

// logSince returns the JSON log lines written after offset from (lines that
// are not JSON, such as the start banner, are skipped).
func (g *gatewayProc) logSince(from int64) []logEntry {
	b, err := os.ReadFile(g.logPath)
	if err != nil || from > int64(len(b)) {
		return nil
	}
	var out []logEntry
	sc := bufio.NewScanner(bytes.NewReader(b[from:]))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e logEntry
		if json.Unmarshal(line, &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// tail returns the last n lines of the log, for a failure message.
func (g *gatewayProc) tail(n int) string {
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "…"
		}
	}
	return "  " + strings.Join(lines, "\n  ")
}

func isClosed(c chan struct{}) bool {
	if c == nil {
		return true
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}
