package testkit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

const childTestEnv = "FERRY_TESTKIT_CHILD"

func TestMain(m *testing.M) {
	if v := os.Getenv(childTestEnv); v != "" {
		fmt.Printf("HELLO %s\n", v)
		if v == "exit" {
			fmt.Print("torn") // no newline: not a line
			os.Exit(3)
		}
		select {} // until killed
	}
	os.Exit(m.Run())
}

// TestChild: the child runs its job, the test reads its line and kills it.
func TestChild(t *testing.T) {
	c := StartChild(t, childTestEnv+"=42")
	if got := c.WaitLine("HELLO "); got != "42" {
		t.Fatalf("child said %q, want 42", got)
	}
	c.Kill()
	c.Kill() // twice is fine
}

// TestChildWait: Wait returns how the child ended (its exit status, or
// SIGKILL after Kill), and Lines holds what it printed, without a last line
// that has no newline.
func TestChildWait(t *testing.T) {
	c := StartChild(t, childTestEnv+"=exit")
	var ee *exec.ExitError
	if err := c.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Wait: %v, want exit status 3", err)
	}
	if got := c.Lines(); !slices.Equal(got, []string{"HELLO exit"}) {
		t.Fatalf("lines %q", got)
	}
	k := StartChild(t, childTestEnv+"=wait")
	k.WaitLine("HELLO ")
	k.Kill()
	if err := k.Wait(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("Wait after Kill: %v, want SIGKILL", err)
	}
}

// TestChildLine: Line hands out the child's lines by number, io.EOF past
// the last one once the child has ended, and os.ErrDeadlineExceeded (the
// child still running) when the next line does not come within the guard.
func TestChildLine(t *testing.T) {
	c := StartChild(t, childTestEnv+"=exit")
	if got, err := c.Line(0, DefaultWait); err != nil || got != "HELLO exit" {
		t.Fatalf("Line(0) = %q, %v; want HELLO exit", got, err)
	}
	if got, err := c.Line(1, DefaultWait); !errors.Is(err, io.EOF) {
		t.Fatalf("Line(1) after the child ended = %q, %v; want io.EOF (a torn last line is no line)", got, err)
	}
	h := StartChild(t, childTestEnv+"=hang")
	if got, err := h.Line(0, DefaultWait); err != nil || got != "HELLO hang" {
		t.Fatalf("Line(0) = %q, %v; want HELLO hang", got, err)
	}
	if got, err := h.Line(1, 50*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Line(1) of a child that prints no more = %q, %v; want os.ErrDeadlineExceeded", got, err)
	}
}
