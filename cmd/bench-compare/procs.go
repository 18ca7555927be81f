package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrymq/ferry/internal/freeport"

	"github.com/ferrymq/ferry/internal/sysbin"
)

// process is a child the harness owns (an edge or the upstream broker),
// with its output in a log file.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func startProcess(name, logPath, bin string, args ...string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// The child dies with the harness, even when the harness is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = f.Close(); close(p.exited) }()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// cpu is the user+system CPU time the process used so far, all threads
// (/proc/<pid>/stat utime+stime, in clock ticks of 10 ms).
func (p *process) cpu() (time.Duration, error) { return procCPU(p.pid()) }

// kill ends the process with SIGKILL and waits for it: nothing it holds is
// needed after a run, and a graceful stop (mosquitto saving a million queued
// messages) would only add time.
// With FERRY_CPUPROFILE set (a profile of the ferry edge, written at a
// graceful stop) it asks with SIGTERM first.
func (p *process) kill() {
	if os.Getenv("FERRY_CPUPROFILE") != "" {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
			return
		case <-time.After(10 * time.Second):
		}
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// tail returns the end of the process's log, for error messages.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// waitListening waits until addr accepts TCP connections, the process
// exits or ctx ends.
func (p *process) waitListening(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before listening on %s: %s", p.name, addr, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not listening on %s: %w; log: %s", p.name, addr, ctx.Err(), p.tail())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// clockTick is USER_HZ, the unit of utime and stime: 100 on every Linux
// architecture (the kernel ABI fixes it, whatever CONFIG_HZ is).
const clockTick = 10 * time.Millisecond

func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime (field 14) and stime (field 15) of a
// /proc/<pid>/stat line. The command name (field 2) may contain spaces and
// parentheses, so fields are counted after its last ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("cpu: malformed /proc stat line")
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, errors.New("cpu: short /proc stat line")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu: %w", err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) { return freeport.Loopback() }

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// mosquittoPath finds the mosquitto binary ("" if none): $MOSQUITTO, PATH,
// /usr/sbin/mosquitto (Debian installs it outside a normal user's PATH).
func mosquittoPath() string { return sysbin.Find("MOSQUITTO", "mosquitto") }

// mosquittoVersion is the first line of `mosquitto -h` ("mosquitto version
// 2.0.11"); mosquitto exits non-zero there, which is not an error here.
func mosquittoVersion(bin string) string {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// buildFerry builds ./cmd/ferry of the module at root into dir.
func buildFerry(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "ferry")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/ferry")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ferry: %w\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot walks up from dir to the directory holding Ferry's go.mod.
func moduleRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/ferrymq/ferry\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no Ferry checkout (go.mod of github.com/ferrymq/ferry) at or above %s", dir)
		}
	}
}
