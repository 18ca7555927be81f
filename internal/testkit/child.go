package testkit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// WrapperEnv names a command that runs the test binary's children, for
// tests run under emulation: `make test-arm` runs an ARM test binary under
// qemu-user, and a child that re-executes os.Args[0] must go through qemu
// too ("qemu-arm-static"). Empty: children are executed directly.
const WrapperEnv = "FERRY_TEST_EXEC_WRAPPER"

// Child is the test binary re-run as a child process, the way the crash
// tests kill a gateway part with SIGKILL: TestMain sees the child's
// environment variable and runs the child's job instead of the tests. The
// child talks to the test through lines on its stdout.
type Child struct {
	t   testing.TB
	cmd *exec.Cmd

	mu      sync.Mutex
	lines   []string
	more    chan struct{} // cap 1: a line arrived or stdout ended
	eof     bool
	waitErr error // of cmd.Wait, once exited is closed
	stderr  bytes.Buffer
	exited  chan struct{}
	killed  bool
}

// StartChild starts os.Args[0] with -test.run=^$ (so no test runs in it)
// and env added to the environment; TestMain must recognise env and run
// the child. The child is killed in Cleanup if the test has not.
func StartChild(t testing.TB, env ...string) *Child {
	t.Helper()
	cmd := Command("-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c := &Child{t: t, cmd: cmd, more: make(chan struct{}, 1), exited: make(chan struct{})}
	cmd.Stderr = &lockedWriter{mu: &c.mu, b: &c.stderr}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	go func() {
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil { // a torn last line (no '\n', cut by a kill) is not a line
				break
			}
			c.mu.Lock()
			c.lines = append(c.lines, strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r"))
			c.mu.Unlock()
			signal(c.more)
		}
		err := cmd.Wait() // after the last read from the pipe, as Wait requires
		c.mu.Lock()
		c.eof, c.waitErr = true, err
		c.mu.Unlock()
		signal(c.more)
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			t.Logf("child stderr:\n%s", c.Stderr())
		}
	})
	return c
}

// WaitLine waits (hang guard: DefaultWait) for the first line of the
// child's stdout that starts with prefix and returns the rest of it. It
// fails the test when the child ends first or the guard passes.
func (c *Child) WaitLine(prefix string) string {
	c.t.Helper()
	deadline := time.Now().Add(Timeout(DefaultWait))
	for i := 0; ; i++ {
		line, err := c.line(i, deadline)
		switch {
		case errors.Is(err, io.EOF):
			c.t.Fatalf("child ended before printing %q; stderr:\n%s", prefix, c.Stderr())
		case err != nil:
			c.t.Fatalf("hang guard: child printed no %q line after %v (%s=%g); stderr:\n%s", prefix, Timeout(DefaultWait), ScaleEnv, Scale(), c.Stderr())
		}
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			return rest
		}
	}
}

// Line waits for line i (the first is 0) of the child's stdout and
// returns it, for a test to which the child's end or hang is an outcome
// and not a failure (WaitLine fails the test on both). The error is io.EOF
// when stdout ended before line i, and os.ErrDeadlineExceeded when the
// hang guard Timeout(guard) passed first; the child still runs then, and
// the caller decides (mostly: Kill).
func (c *Child) Line(i int, guard time.Duration) (string, error) {
	return c.line(i, time.Now().Add(Timeout(guard)))
}

func (c *Child) line(i int, deadline time.Time) (string, error) {
	for {
		c.mu.Lock()
		if i < len(c.lines) {
			line := c.lines[i]
			c.mu.Unlock()
			return line, nil
		}
		eof := c.eof
		c.mu.Unlock()
		if eof {
			return "", io.EOF
		}
		left := time.Until(deadline)
		if left <= 0 {
			return "", os.ErrDeadlineExceeded
		}
		select {
		case <-c.more:
		case <-time.After(left):
		}
	}
}

// Kill ends the child with SIGKILL (nothing of it survives but what it
// wrote to files and the kernel already has) and waits for it. It may be
// called more than once.
func (c *Child) Kill() {
	c.mu.Lock()
	c.killed = true
	c.mu.Unlock()
	if c.cmd.Process != nil {
		_ = c.cmd.Process.Kill()
	}
	<-c.exited
}

// Wait waits (hang guard: DefaultWait) for the child to end and returns
// what exec.Cmd.Wait returned: nil for exit status 0, an *exec.ExitError
// for another status or a signal (after Kill: SIGKILL, unless the child had
// ended on its own before). On the hang guard it kills the child and fails
// the test.
func (c *Child) Wait() error {
	c.t.Helper()
	select {
	case <-c.exited:
	case <-After(DefaultWait):
		c.Kill()
		c.t.Fatalf("hang guard: child did not end after %v (%s=%g); stderr:\n%s", Timeout(DefaultWait), ScaleEnv, Scale(), c.Stderr())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waitErr
}

// Lines returns the lines the child printed to stdout so far, each without
// its newline; a last line without one (cut by a kill) is not among them.
// After Kill or Wait they are all of them.
func (c *Child) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// Stderr is what the child wrote to stderr so far.
func (c *Child) Stderr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Command is exec.Command for the test binary itself (os.Args[0]) with
// args, through the FERRY_TEST_EXEC_WRAPPER when one is set: every test
// that re-runs its binary as a child starts it with this, CommandContext
// or StartChild, so that the children of an emulated ARM test binary run
// under qemu too.
func Command(args ...string) *exec.Cmd {
	name, args := wrapped(args)
	return exec.Command(name, args...)
}

// CommandContext is Command with a context that kills the child.
func CommandContext(ctx context.Context, args ...string) *exec.Cmd {
	name, args := wrapped(args)
	return exec.CommandContext(ctx, name, args...)
}

func wrapped(args []string) (string, []string) {
	if w := strings.Fields(os.Getenv(WrapperEnv)); len(w) > 0 {
		return w[0], append(append(w[1:], os.Args[0]), args...)
	}
	return os.Args[0], args
}
