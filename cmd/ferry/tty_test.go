//go:build linux

package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// openPTY returns a pseudo-terminal: the terminal side (what ferry gets as
// stdin/stdout/stderr) and everything written to it, as the user would see
// it.
func openPTY(t *testing.T) (tty *os.File, master *os.File, screen *syncBuffer) {
	t.Helper()
	master, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	screen = &syncBuffer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		tty.Close()
		master.Close()
		<-done
	})
	return tty, master, screen
}

// echoOff reports whether the terminal has echo switched off.
func echoOff(tty *os.File) bool {
	st, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	return err == nil && st.Lflag&unix.ECHO == 0
}

// TestPasswdPrompts: on a terminal, ferry passwd prompts, does not echo
// what is typed, and asks again to confirm (it used to wait silently and
// echo the password).
func TestPasswdPrompts(t *testing.T) {
	for _, c := range []struct {
		name          string
		first, second string
		code          int
		want          string
	}{
		{"confirmed", "s3cret-pw", "s3cret-pw", exitOK, ""},
		{"mismatch", "s3cret-pw", "s3cret-px", exitUsage, "the passwords do not match"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tty, master, screen := openPTY(t)
			var out bytes.Buffer
			exited := make(chan int, 1)
			go func() { exited <- run([]string{"passwd", "-cost", "10"}, tty, &out, tty) }()
			// Type each answer only once the prompt is shown and echo is
			// off, as a person would (typed earlier, the terminal would echo
			// it before ferry switched echo off).
			testkit.Wait(t, "the password prompt", func() bool {
				return strings.Contains(screen.String(), "Password: ") && echoOff(tty)
			})
			master.WriteString(c.first + "\n")
			testkit.Wait(t, "the confirmation prompt", func() bool {
				return strings.Contains(screen.String(), "Confirm password: ") && echoOff(tty)
			})
			master.WriteString(c.second + "\n")
			var code int
			select {
			case code = <-exited:
			case <-testkit.After(testkit.DefaultWait):
				t.Fatalf("hang guard: ferry passwd did not return; screen:\n%s", screen.String())
			}
			testkit.Wait(t, "the last output on the screen", func() bool { return strings.Contains(screen.String(), c.want) })
			if code != c.code {
				t.Fatalf("exit %d, want %d; screen:\n%s", code, c.code, screen.String())
			}
			if c.code == exitOK && !strings.HasPrefix(out.String(), "$2") {
				t.Fatalf("stdout %q, want a bcrypt hash", out.String())
			}
			if s := screen.String(); strings.Contains(s, "s3cret") {
				t.Fatalf("the password was echoed:\n%s", s)
			}
			if echoOff(tty) {
				t.Fatal("echo left off after ferry passwd returned")
			}
		})
	}
}

var noTotal = regexp.MustCompile(`(^|[^0-9])0/0([^0-9]|$)`)

// TestSpoolProgressOnTerminal: on a terminal, replay and compact show what
// they work on (they drew "replaying 0/0"): replay counts against the
// retained messages, compact names the file's size; the line is cleared
// before the result.
func TestSpoolProgressOnTerminal(t *testing.T) {
	path, _ := devConfig(t)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	y := strings.Replace(string(b), "  max_bytes: 256MiB\n", "  max_bytes: 256MiB\n  retain_delivered: 1h\n", 1)
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := spool.Open(cfg.Spool.Path, cfg.SpoolOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 300
	for i := range n {
		if _, err := s.Put(ctx, spool.Entry{Priority: 5, Data: message.Encode(nil, &message.Message{Topic: "t", Payload: []byte{byte(i)}})}); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.Lease(ctx, n)
	if err != nil || len(items) != n {
		t.Fatalf("lease: %d, %v", len(items), err)
	}
	for _, it := range items {
		if err := s.Ack(ctx, it.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(cfg.Spool.Path)
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"spool", "replay", "-since", "1h", "-c", path}, []string{
			"\r\033[K[", "replaying: 0 of at most 300 retained messages re-enqueued",
			"\r\033[K" + cfg.Spool.Path + ": 300 delivered messages re-enqueued\r\n",
		}},
		{[]string{"spool", "compact", "-c", path}, []string{
			"\r\033[Kcompacting a " + human(fi.Size()) + " file: ",
			"\r\033[K" + cfg.Spool.Path + ": " + human(fi.Size()) + " -> ",
		}},
	} {
		tty, _, screen := openPTY(t)
		var errb bytes.Buffer
		if code := run(c.args, strings.NewReader(""), tty, &errb); code != exitOK {
			t.Fatalf("%v: exit %d: %s", c.args, code, errb.String())
		}
		last := c.want[len(c.want)-1]
		testkit.Wait(t, "the result on the terminal", func() bool { return strings.Contains(screen.String(), last) })
		for _, w := range c.want {
			if !strings.Contains(screen.String(), w) {
				t.Errorf("%v: the terminal lacks %q:\n%q", c.args, w, screen.String())
			}
		}
		// A progress count without a total (" 0/0"), not a temporary
		// directory's name (…1280/001) that contains one.
		if noTotal.MatchString(screen.String()) {
			t.Errorf("%v: progress without a total:\n%q", c.args, screen.String())
		}
	}
}
