package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// devConfig is configs/dev.yaml with free ports and a private spool, so the
// test runs what `make run` runs without clashing with anything.
func devConfig(t *testing.T) (path string, addrs map[string]string) {
	t.Helper()
	b, err := os.ReadFile("../../configs/dev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	addrs = map[string]string{}
	y := string(b)
	for _, port := range []string{"1883", "1882", "61613", "8080"} {
		a := freeAddr(t)
		addrs[port] = a
		y = strings.ReplaceAll(y, "127.0.0.1:"+port, a)
	}
	up := freeAddr(t)
	addrs["1884"] = up
	dir := t.TempDir()
	y = strings.ReplaceAll(y, "./data/spool.db", filepath.Join(dir, "spool.db"))
	y = strings.Replace(y, "upstream: embedded", "upstream: embedded\n  embedded_address: "+up, 1)
	path = filepath.Join(dir, "ferry.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, addrs
}

func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheck(t *testing.T) {
	path, _ := devConfig(t)
	if code, out, errs := runCLI(t, "", "check", "-c", path); code != exitOK || !strings.Contains(out, "ok") {
		t.Fatalf("check dev.yaml: %d %q %q", code, out, errs)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("gateway_id: x\nbridge:\n  window: 0\n  upstream: [tcp://127.0.0.1:1]\nspool: {paht: x}\n"), 0o600)
	code, _, errs := runCLI(t, "", "check", "-c", bad)
	if code != exitUsage {
		t.Fatalf("bad config: exit %d, want %d", code, exitUsage)
	}
	for _, want := range []string{"bad.yaml:3:3: bridge.window: must be 1..65535 (got 0)", "bad.yaml:5:9: spool.paht: unknown key"} {
		if !strings.Contains(errs, want) {
			t.Errorf("check output lacks %q:\n%s", want, errs)
		}
	}
	if code, _, _ := runCLI(t, "", "nonsense"); code != exitUsage {
		t.Errorf("unknown command: exit %d", code)
	}
	if code, out, _ := runCLI(t, "", "version"); code != exitOK || !strings.HasPrefix(out, "ferry ") {
		t.Errorf("version: %d %q", code, out)
	}
	for _, args := range [][]string{{"-h"}, {"run", "-h"}, {"check", "-h"}, {"passwd", "-h"}, {"spool", "-h"}, {"spool", "stats", "-h"}, {"spool", "dlq", "-h"}, {"spool", "replay", "-h"}} {
		code, out, errs := runCLI(t, "", args...)
		if code != exitOK || (out+errs) == "" {
			t.Errorf("%v: exit %d, no help", args, code)
		}
	}
}

func TestPasswd(t *testing.T) {
	code, out, _ := runCLI(t, "s3cret\n", "passwd", "-cost", "4")
	if code != exitOK || !strings.HasPrefix(out, "$2") {
		t.Fatalf("passwd: %d %q", code, out)
	}
	if code, _, _ := runCLI(t, "\n", "passwd"); code != exitUsage {
		t.Fatalf("empty password: exit %d", code)
	}
}

// TestSpoolCommands runs stats, dlq ls/requeue/purge, replay and compact on
// a stopped gateway's spool file, then checks the "gateway is running"
// refusal when another holder has the file and no HTTP API is reachable.
func TestSpoolCommands(t *testing.T) {
	path, _ := devConfig(t)
	cfg, err := gateway.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := spool.Open(cfg.Spool.Path, cfg.SpoolOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ids []uint64
	for i := range 6 {
		r, err := s.Put(ctx, spool.Entry{Priority: 5, Data: message.Encode(nil, &message.Message{Topic: "t", Payload: []byte{byte(i)}})})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	for _, id := range ids[:4] {
		if err := s.DeadLetter(ctx, id, "poison: test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	code, out, errs := runCLI(t, "", "spool", "stats", "-c", path)
	if code != exitOK || !regexp.MustCompile(`queued\s+2 messages`).MatchString(out) || !regexp.MustCompile(`dlq\s+4 messages`).MatchString(out) {
		t.Fatalf("stats: %d\n%s%s", code, out, errs)
	}
	code, out, _ = runCLI(t, "", "spool", "dlq", "ls", "-c", path)
	if code != exitOK || strings.Count(out, "poison: test") != 4 {
		t.Fatalf("dlq ls: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "", "spool", "dlq", "requeue", "-c", path, fmt.Sprint(ids[0]))
	if code != exitOK || !strings.Contains(out, "1 dead letters requeued") {
		t.Fatalf("dlq requeue: %d %q", code, out)
	}
	code, out, _ = runCLI(t, "", "spool", "dlq", "purge", "-c", path, "-all")
	if code != exitOK || !strings.Contains(out, "3 dead letters purged") {
		t.Fatalf("dlq purge -all: %d %q", code, out)
	}
	if code, _, _ := runCLI(t, "", "spool", "dlq", "purge", "-c", path); code != exitUsage {
		t.Fatalf("purge without ids or -all: exit %d", code)
	}
	code, out, _ = runCLI(t, "", "spool", "compact", "-c", path)
	if code != exitOK || !strings.Contains(out, "->") {
		t.Fatalf("compact: %d %q", code, out)
	}
	code, out, _ = runCLI(t, "", "spool", "replay", "-c", path, "-since", "1h")
	if code != exitOK || !strings.Contains(out, "0 delivered messages re-enqueued") {
		t.Fatalf("replay (no retention): %d %q", code, out)
	}
	code, out, _ = runCLI(t, "", "spool", "stats", "-c", path)
	if code != exitOK || !regexp.MustCompile(`queued\s+3 messages`).MatchString(out) || !regexp.MustCompile(`dlq\s+0 messages`).MatchString(out) {
		t.Fatalf("stats after requeue and purge: %d\n%s", code, out)
	}

	// Another holder (a gateway) has the file; its HTTP address is not
	// answering: a clear error naming the file, exit code 3.
	holder, err := spool.Open(cfg.Spool.Path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	code, _, errs = runCLI(t, "", "spool", "stats", "-c", path)
	if code != exitLocked || !strings.Contains(errs, cfg.Spool.Path) || !strings.Contains(errs, "locked") {
		t.Fatalf("locked: exit %d %q", code, errs)
	}
}

// TestRunSmoke is `make run`: the real binary on configs/dev.yaml (ports
// moved to free ones) accepts a mosquitto_pub, and the message appears on
// the embedded upstream broker.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto_pub missing on CI: apt-get install mosquitto-clients")
		}
		t.Skip("mosquitto_pub not installed (apt-get install mosquitto-clients)")
	}
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	path, addrs := devConfig(t)
	cmd := exec.Command(bin, "run", "-c", path)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	waitPort(t, addrs["1883"], exited, logs)

	got := make(chan string, 1)
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addrs["1884"]).SetClientID("smoke-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to the embedded upstream: %v\n%s", tok.Error(), logs.String())
	}
	defer sub.Disconnect(100)
	// Wait for the SUBACK: a message bridged before the subscription exists
	// would not be delivered to it.
	tok := sub.Subscribe("sites/#", 1, func(_ paho.Client, m paho.Message) {
		select {
		case got <- m.Topic() + " " + string(m.Payload()):
		default:
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe on the embedded upstream: %v", tok.Error())
	}
	host, port, _ := net.SplitHostPort(addrs["1883"])
	if out, err := exec.Command(pub, "-h", host, "-p", port, "-q", "1", "-t", "sensors/room1/temp", "-m", "21.5").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	select {
	case m := <-got:
		if !strings.HasPrefix(m, "sites/dev/sensors/room1/temp ") || !strings.Contains(m, `"payload":21.5`) {
			t.Fatalf("upstream got %q", m)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("nothing arrived upstream; gateway log:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "mosquitto_sub") {
		t.Errorf("start banner does not say how to watch upstream:\n%s", logs.String())
	}
}

func waitPort(t *testing.T, addr string, exited <-chan error, logs *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			t.Fatalf("ferry exited: %v\n%s", err, logs.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("ferry did not listen on %s\n%s", addr, logs.String())
}

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
