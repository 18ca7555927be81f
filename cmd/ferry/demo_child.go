package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/gateway"
)

// gatewayChild is the gateway under demonstration: this binary re-executed
// as `ferry run -c CONFIG`, its output appended to a log file, so that it
// can be SIGKILLed (nothing of it survives but its spool file) and started
// again on the same spool and ports.
type gatewayChild struct {
	exe, cfg, logPath, httpAddr string

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the current process ended
	starts   int
	stopping bool // we are ending it: its exit is expected
	exitErr  error
	client   http.Client
}

// childReadyGuard bounds the wait for a (re)started gateway to serve.
const childReadyGuard = 30 * time.Second

// start runs the gateway and waits until /readyz answers 200.
func (g *gatewayChild) start(ctx context.Context) error {
	logf, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(g.exe, "run", "-c", g.cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The gateway must not outlive the demo, however the demo ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start the gateway (%s run -c %s): %w", g.exe, g.cfg, err)
	}
	exited := make(chan struct{})
	g.mu.Lock()
	g.cmd, g.exited, g.stopping, g.exitErr = cmd, exited, false, nil
	g.starts++
	g.mu.Unlock()
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		g.mu.Lock()
		g.exitErr = err
		g.mu.Unlock()
		close(exited)
	}()

	deadline := time.Now().Add(childReadyGuard)
	for {
		select {
		case <-exited:
			err := g.exitError()
			if err == nil {
				err = errors.New("exit status 0")
			}
			return fmt.Errorf("the gateway exited while starting (%w); last lines of %s:\n%s", err, g.logPath, tail(g.logPath, 15))
		default:
		}
		if g.ready(ctx) {
			return nil
		}
		if time.Now().After(deadline) {
			g.kill()
			return fmt.Errorf("the gateway was not ready after %v; last lines of %s:\n%s", childReadyGuard, g.logPath, tail(g.logPath, 15))
		}
		select {
		case <-ctx.Done():
			g.kill()
			return ctx.Err()
		case <-exited:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (g *gatewayChild) ready(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.httpAddr+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (g *gatewayChild) exitError() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.exitErr
}

// pid is the current process id, 0 when none runs.
func (g *gatewayChild) pid() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil || g.cmd.Process == nil || isClosed(g.exited) {
		return 0
	}
	return g.cmd.Process.Pid
}

// unexpectedExit reports an exit the demo did not cause.
func (g *gatewayChild) unexpectedExit() (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil || g.stopping || !isClosed(g.exited) {
		return false, nil
	}
	return true, g.exitErr
}

// kill ends the gateway with SIGKILL and waits for it.
func (g *gatewayChild) kill() {
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

// stop ends the gateway gracefully (SIGTERM), with SIGKILL after timeout.
// It may be called more than once.
func (g *gatewayChild) stop(timeout time.Duration) error {
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
		if err := g.exitError(); err != nil {
			return fmt.Errorf("gateway exit after SIGTERM: %w", err)
		}
		return nil
	case <-time.After(timeout):
		g.kill()
		return fmt.Errorf("the gateway did not stop within %v of SIGTERM (killed)", timeout)
	}
}

// status reads the running gateway's /api/status.
func (g *gatewayChild) status(ctx context.Context) (*gateway.Status, error) {
	if g.pid() == 0 {
		return nil, errors.New("gateway not running")
	}
	return gateway.FetchStatus(ctx, &g.client, g.httpAddr)
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

// tail returns the last n lines of a file, for an error message.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
