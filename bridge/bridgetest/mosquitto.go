package bridgetest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/freeport"

	"github.com/ferrymq/ferry/internal/sysbin"

	"github.com/ferrymq/ferry/internal/testkit"
)

// MosquittoOptions shape the generated mosquitto.conf.
type MosquittoOptions struct {
	// TLS turns the listener into a TLS listener with certificates from
	// NewCerts (see Mosquitto.Certs).
	TLS bool
	// RequireCertificate makes mosquitto demand a client certificate signed
	// by the test CA (mutual TLS). Implies TLS.
	RequireCertificate bool
	// Users, when set, turns off anonymous access and writes a password
	// file with mosquitto_passwd.
	Users map[string]string
	// MaxPacketSize: mosquitto disconnects a client that sends a bigger
	// packet (any protocol version). 0: unlimited.
	MaxPacketSize int
	// MessageSizeLimit: payloads above are dropped by mosquitto. 0: unlimited.
	MessageSizeLimit int
	// Persistence keeps sessions and queued messages across a graceful
	// Restart (SIGTERM): what a persistent subscriber needs to lose nothing
	// while the broker restarts.
	Persistence bool
	// Extra lines appended to the config.
	Extra []string
}

// Mosquitto is a mosquitto process owned by a test.
type Mosquitto struct {
	t     testing.TB
	bin   string
	dir   string
	conf  string
	Port  int
	Certs *Certs // set with TLS

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// MosquittoPath finds the mosquitto binary ("" if none): $MOSQUITTO, PATH,
// /usr/sbin/mosquitto.
func MosquittoPath() string { return sysbin.Find("MOSQUITTO", "mosquitto") }

// RequireMosquitto skips t under -short or without mosquitto (failing
// instead when CI=true) and returns the binary.
func RequireMosquitto(t testing.TB) string {
	t.Helper()
	return requireProgram(t, "mosquitto", MosquittoPath, "mosquitto mosquitto-clients", "MOSQUITTO")
}

// requireProgram skips t under -short or when find finds no name (failing
// instead when CI=true, where .ci/run installs it), and returns its path.
func requireProgram(t testing.TB, name string, find func() string, packages, env string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("integration test against %s: skipped with -short", name)
	}
	p := find()
	if p == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (CI=true): apt-get install %s", name, packages)
		}
		t.Skipf("%s not found: apt-get install %s (or set %s=/path)", name, packages, env)
	}
	return p
}

// StartMosquitto runs mosquitto on a free 127.0.0.1 port and waits until it
// accepts connections. Cleanup kills it.
func StartMosquitto(t testing.TB, o MosquittoOptions) *Mosquitto {
	t.Helper()
	bin := RequireMosquitto(t)
	m := &Mosquitto{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
	var conf []string
	conf = append(conf,
		fmt.Sprintf("listener %d 127.0.0.1", m.Port),
		"user root", // stay as the test's user so the temp files are readable
		"max_queued_messages 0", "max_queued_bytes 0", "max_inflight_messages 0",
		"log_dest file "+filepath.Join(m.dir, "mosquitto.log"),
		"log_type error", "log_type warning", "log_type notice",
		"connection_messages true",
	)
	if o.RequireCertificate {
		o.TLS = true
	}
	if o.TLS {
		m.Certs = NewCerts(t, m.dir)
		conf = append(conf, "cafile "+m.Certs.CAFile, "certfile "+m.Certs.ServerCert, "keyfile "+m.Certs.ServerKey)
		if o.RequireCertificate {
			conf = append(conf, "require_certificate true")
		}
	}
	if len(o.Users) > 0 {
		pw := filepath.Join(m.dir, "passwd")
		if err := os.WriteFile(pw, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		for u, p := range o.Users {
			if out, err := exec.Command("mosquitto_passwd", "-b", pw, u, p).CombinedOutput(); err != nil {
				t.Skipf("mosquitto_passwd failed (%v): %s", err, out)
			}
		}
		conf = append(conf, "allow_anonymous false", "password_file "+pw)
	} else {
		conf = append(conf, "allow_anonymous true")
	}
	if o.MaxPacketSize > 0 {
		conf = append(conf, fmt.Sprintf("max_packet_size %d", o.MaxPacketSize))
	}
	if o.MessageSizeLimit > 0 {
		conf = append(conf, fmt.Sprintf("message_size_limit %d", o.MessageSizeLimit))
	}
	if o.Persistence {
		conf = append(conf, "persistence true", "persistence_location "+m.dir+"/", "autosave_interval 3600")
	} else {
		conf = append(conf, "persistence false")
	}
	conf = append(conf, o.Extra...)
	m.conf = filepath.Join(m.dir, "mosquitto.conf")
	if err := os.WriteFile(m.conf, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Start()
	t.Cleanup(m.Kill)
	return m
}

// Addr is host:port.
func (m *Mosquitto) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port)) }

// URL is tcp://… or ssl://… for paho.
func (m *Mosquitto) URL() string {
	if m.Certs != nil {
		return "ssl://" + m.Addr()
	}
	return "tcp://" + m.Addr()
}

// Start starts mosquitto (again) on its port and waits for it.
func (m *Mosquitto) Start() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		m.t.Fatal("bridgetest: mosquitto already running")
	}
	deadline := time.Now().Add(testkit.Timeout(30 * time.Second))
	for {
		cmd := exec.Command(m.bin, "-c", m.conf)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			m.t.Fatalf("bridgetest: start mosquitto: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if waitListening(m.Addr(), exited, testkit.Timeout(10*time.Second)) {
			m.cmd, m.exited = cmd, exited
			return
		}
		_ = cmd.Process.Kill()
		<-exited
		// The port may still be in TIME_WAIT from the previous run.
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(m.dir, "mosquitto.log"))
			m.t.Fatalf("bridgetest: mosquitto did not come up on %s; log:\n%s", m.Addr(), log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitListening(addr string, exited <-chan struct{}, d time.Duration) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		select {
		case <-exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// Stop ends mosquitto gracefully (SIGTERM: with Persistence it saves its
// sessions) and waits for it.
func (m *Mosquitto) Stop() { m.signal(syscall.SIGTERM) }

// Kill ends mosquitto with SIGKILL: whatever it held in memory is gone.
func (m *Mosquitto) Kill() { m.signal(syscall.SIGKILL) }

func (m *Mosquitto) signal(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(sig)
	select {
	case <-m.exited:
	case <-testkit.After(30 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	m.cmd = nil
}

// Restart is Stop then Start on the same port.
func (m *Mosquitto) Restart() {
	m.Stop()
	m.Start()
}

// PID of the running process, 0 if none.
func (m *Mosquitto) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// CPUTime is the user+system CPU mosquitto used so far (Linux /proc).
func (m *Mosquitto) CPUTime() time.Duration {
	pid := m.PID()
	if pid == 0 {
		return 0
	}
	return ProcCPUTime(pid)
}

// ProcCPUTime reads utime+stime of pid from /proc (0 when unavailable).
func ProcCPUTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// Log returns mosquitto's log so far.
func (m *Mosquitto) Log() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "mosquitto.log"))
	return string(b)
}

// FreePort returns a port that was free on 127.0.0.1 a moment ago, never
// the same one twice (freeport.Loopback).
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
