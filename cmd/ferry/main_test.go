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

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", bridgetest.FreePort(t)) // never the same port twice
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
	for _, args := range [][]string{{"-h"}, {"run", "-h"}, {"check", "-h"}, {"passwd", "-h"}, {"spool", "-h"}, {"spool", "stats", "-h"}, {"spool", "dlq", "-h"}, {"spool", "dlq", "--help"}, {"spool", "replay", "-h"}} {
		code, out, errs := runCLI(t, "", args...)
		if code != exitOK || (out+errs) == "" {
			t.Errorf("%v: exit %d, no help", args, code)
		}
	}
}

// TestConfigPath: `ferry check FILE` checks FILE (it used to ignore it and
// check /etc/ferry/ferry.yaml); -c still works, flags may follow the file,
// and two different files are a usage error.
func TestConfigPath(t *testing.T) {
	path, _ := devConfig(t)
	other := filepath.Join(t.TempDir(), "other.yaml")
	if err := os.WriteFile(other, []byte("gateway_id: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"check", path}, exitOK, path + ": ok", ""},
		{[]string{"check", "-c", path}, exitOK, path + ": ok", ""},
		{[]string{"check", "-c", path, path}, exitOK, path + ": ok", ""},
		{[]string{"check", path, "-print"}, exitOK, "gateway_id: dev", ""},
		{[]string{"check", other}, exitUsage, "", other + ":2:1:"},
		{[]string{"check", "-c", path, other}, exitUsage, "", "two configuration files: -c " + path + " and " + other},
		{[]string{"check", path, other}, exitUsage, "", "one configuration file, got 2"},
		{[]string{"run", other}, exitUsage, "", other + ":2:1:"},
		{[]string{"run", "-c", path, other}, exitUsage, "", "two configuration files"},
	} {
		code, out, errs := runCLI(t, "", c.args...)
		if code != c.code || !strings.Contains(out, c.out) || !strings.Contains(errs, c.err) {
			t.Errorf("ferry %s: exit %d, want %d\nstdout: %s\nstderr: %s\nwant stdout with %q, stderr with %q",
				strings.Join(c.args, " "), code, c.code, out, errs, c.out, c.err)
		}
	}
}

func TestPasswd(t *testing.T) {
	code, out, _ := runCLI(t, "s3cret\n", "passwd", "-cost", "10")
	if code != exitOK || !strings.HasPrefix(out, "$2a$10$") {
		t.Fatalf("passwd: %d %q", code, out)
	}
	// A cost the configuration would refuse is refused here too.
	if code, _, errOut := runCLI(t, "s3cret\n", "passwd", "-cost", "4"); code != exitUsage || !strings.Contains(errOut, "10..13") {
		t.Fatalf("passwd -cost 4: exit %d %q", code, errOut)
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
	cfg, err := config.Load(path)
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
		r, err := s.Put(ctx, spool.Entry{Priority: 5, Data: message.Encode(nil, &message.Message{Topic: fmt.Sprintf("sensors/dev%d/temp", i), Payload: []byte{byte(i)}})})
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
	// Each dead letter with its topic and age (decoded from the record).
	if !regexp.MustCompile(`(?m)^ID\s+LANE\s+TOPIC\s+BYTES\s+AGE\s`).MatchString(out) {
		t.Errorf("dlq ls header lacks TOPIC and AGE:\n%s", out)
	}
	for i := range 4 {
		if !regexp.MustCompile(fmt.Sprintf(`(?m)^%d\s+5\s+sensors/dev%d/temp\s+1\s+\d+s\s`, ids[i], i)).MatchString(out) {
			t.Errorf("dlq ls: no line for dead letter %d with its topic, size and age:\n%s", ids[i], out)
		}
	}
	// Without ids (or -all) requeue and purge refuse, and change nothing.
	code, _, errs = runCLI(t, "", "spool", "dlq", "requeue", "-c", path)
	if code != exitUsage || !strings.Contains(errs, "-all for every one") {
		t.Fatalf("requeue without ids: exit %d %q, want a usage error naming -all", code, errs)
	}
	if _, out, _ := runCLI(t, "", "spool", "stats", "-c", path); !regexp.MustCompile(`dlq\s+4 messages`).MatchString(out) {
		t.Fatalf("requeue without ids changed the DLQ:\n%s", out)
	}
	code, out, _ = runCLI(t, "", "spool", "dlq", "requeue", fmt.Sprint(ids[0]), "-c", path)
	if code != exitOK || !strings.Contains(out, "1 dead letters requeued") {
		t.Fatalf("dlq requeue ID -c FILE: %d %q", code, out)
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

// TestSpoolStatsShowsSalvage (issue 9, defect 5): after a damaged spool
// file was salvaged (by a gateway that has stopped since), `ferry spool
// stats` says when, what was kept and lost, why, and where the damaged file
// went.
func TestSpoolStatsShowsSalvage(t *testing.T) {
	path, _ := devConfig(t)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := spool.Open(cfg.Spool.Path, cfg.SpoolOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := s.Put(context.Background(), spool.Entry{Data: message.Encode(nil, &message.Message{Topic: "t", Payload: []byte{byte(i)}})}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfg.Spool.Path)
	if err != nil {
		t.Fatal(err)
	}
	clear(b[:4096]) // a damaged meta page
	if err := os.WriteFile(cfg.Spool.Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = spool.Open(cfg.Spool.Path, cfg.SpoolOptions(nil)) // the gateway's start: salvage
	if err != nil {
		t.Fatal(err)
	}
	rep := s.Salvaged()
	if rep == nil {
		t.Fatal("not salvaged")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI(t, "", "spool", "stats", "-c", path)
	if code != exitOK {
		t.Fatalf("stats: %d\n%s%s", code, out, errs)
	}
	for _, want := range []string{"salvaged", "kept 20 messages", "lost unknown, at least 0", rep.Damaged, "meta page damaged"} {
		if !strings.Contains(out, want) {
			t.Errorf("stats output lacks %q:\n%s", want, out)
		}
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
	guard := testkit.Timeout(testkit.DefaultWait) // every wait below is a hang guard only
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(guard):
			_ = cmd.Process.Kill()
			t.Errorf("hang guard: ferry did not stop within %v of SIGINT", guard)
		}
	})
	waitPort(t, addrs["1883"], exited, logs)

	got := make(chan string, 1)
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addrs["1884"]).SetClientID("smoke-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(guard) || tok.Error() != nil {
		t.Fatalf("connect to the embedded upstream (hang guard %v): %v\n%s", guard, tok.Error(), logs.String())
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
	if !tok.WaitTimeout(guard) || tok.Error() != nil {
		t.Fatalf("subscribe on the embedded upstream (hang guard %v): %v", guard, tok.Error())
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
	case <-time.After(guard):
		t.Fatalf("hang guard: nothing arrived upstream after %v (%s=%g); gateway log:\n%s", guard, testkit.ScaleEnv, testkit.Scale(), logs.String())
	}
	if !strings.Contains(logs.String(), "mosquitto_sub") {
		t.Errorf("start banner does not say how to watch upstream:\n%s", logs.String())
	}
}

// waitPort waits (a hang guard only) until ferry listens on addr.
func waitPort(t *testing.T, addr string, exited <-chan error, logs *syncBuffer) {
	t.Helper()
	guard := testkit.Timeout(testkit.DefaultWait)
	deadline := time.Now().Add(guard)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			t.Fatalf("ferry exited: %v\n%s", err, logs.String())
		default:
		}
		// A dial that times out is only retried: its bound is no verdict.
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("hang guard: ferry did not listen on %s after %v (%s=%g)\n%s", addr, guard, testkit.ScaleEnv, testkit.Scale(), logs.String())
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

// TestSpoolCommandsLogIn: with listeners.http.auth, the spool commands
// against a running gateway log in with FERRY_HTTP_PASSWORD or
// FERRY_HTTP_TOKEN, and without them say which variable to set.
func TestSpoolCommandsLogIn(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a gateway")
	}
	// bcrypt("secret") at the minimum cost.
	const hash = "$2a$04$77og0tde3kc353pfuKN9semMFqgEWeTxMlzEJCAIHVamDRxcnEXdm"
	for _, c := range []struct {
		auth, env, user, secret string
	}{
		{"{username: ops, password_hash: '" + hash + "'}", envHTTPPassword, "", "secret"},
		{"{token_hash: '" + hash + "'}", envHTTPToken, "", "secret"},
	} {
		path, addrs := devConfig(t)
		b, _ := os.ReadFile(path)
		y := strings.Replace(string(b), "    address: "+addrs["8080"]+"\n", "    address: "+addrs["8080"]+"\n    auth: "+c.auth+"\n", 1)
		// The link is down (nothing listens upstream), so that the message
		// the test dead-letters below is not delivered, and gone, first.
		y = strings.Replace(y, "upstream: embedded\n  embedded_address: "+addrs["1884"], "upstream: tcp://"+freeAddr(t), 1)
		if !strings.Contains(y, "upstream: tcp://") {
			t.Fatal("devConfig no longer writes the embedded upstream as this test expects")
		}
		if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		g, err := gateway.New(cfg, gateway.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()
		testkit.Wait(t, "the gateway to be ready", g.Ready)

		t.Setenv(envHTTPPassword, "")
		t.Setenv(envHTTPToken, "")
		code, _, errs := runCLI(t, "", "spool", "dlq", "purge", "-all", "-c", path)
		if code != exitFailure || !strings.Contains(errs, "refused the login") || !strings.Contains(errs, c.env) {
			t.Errorf("%s: purge without a login: exit %d %q", c.env, code, errs)
		}
		t.Setenv(c.env, "wrong")
		if code, _, errs := runCLI(t, "", "spool", "stats", "-c", path); code != exitFailure || !strings.Contains(errs, "refused the login") {
			t.Errorf("%s: stats with a wrong login: exit %d %q", c.env, code, errs)
		}
		t.Setenv(c.env, c.secret)
		// dlq ls through the HTTP API: the same fields as on the file.
		sp := g.Spool()
		r, err := sp.Put(ctx, spool.Entry{Priority: 7, Data: message.Encode(nil, &message.Message{Topic: "meters/m1/kwh", Payload: []byte("12.5")})})
		if err != nil {
			t.Fatal(err)
		}
		if err := sp.DeadLetter(ctx, r.ID, "poison: too large"); err != nil {
			t.Fatal(err)
		}
		code, out, errs := runCLI(t, "", "spool", "dlq", "ls", "-c", path)
		if code != exitOK || !regexp.MustCompile(fmt.Sprintf(`(?m)^%d\s+7\s+meters/m1/kwh\s+4\s+\d+s\s+\d+s\s+0\s+poison: too large$`, r.ID)).MatchString(out) {
			t.Errorf("%s: dlq ls through the gateway: exit %d\n%s%s", c.env, code, out, errs)
		}
		code, out, errs = runCLI(t, "", "spool", "dlq", "purge", "-all", "-c", path)
		if code != exitOK || !strings.Contains(out, "running gateway") || !strings.Contains(out, "1 dead letters purged") {
			t.Errorf("%s: purge with the login: exit %d %q %q", c.env, code, out, errs)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-testkit.After(testkit.DefaultWait):
			t.Fatal("hang guard: gateway did not stop")
		}
	}
}

// TestSpoolStatsFileSize: spool stats reports the spool file's size on
// disk, the number ls shows and compact starts from (it printed bbolt's
// pages in use, megabytes below both).
func TestSpoolStatsFileSize(t *testing.T) {
	path, _ := devConfig(t)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := spool.Open(cfg.Spool.Path, cfg.SpoolOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	waits := make([]func() (spool.PutResult, error), 0, 20000)
	for range cap(waits) {
		waits = append(waits, s.PutAsync(ctx, spool.Entry{Priority: 5, Data: bytes.Repeat([]byte{'x'}, 300)}))
	}
	for _, w := range waits {
		if _, err := w(); err != nil {
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
	code, out, errs := runCLI(t, "", "spool", "stats", "-c", path)
	if want := "file size on disk  " + human(fi.Size()) + "\n"; code != exitOK || !strings.Contains(out, want) {
		t.Fatalf("stats: exit %d, want %q (ls: %d bytes):\n%s%s", code, want, fi.Size(), out, errs)
	}
	code, out, _ = runCLI(t, "", "spool", "compact", "-c", path)
	if code != exitOK || !strings.Contains(out, ": "+human(fi.Size())+" -> ") {
		t.Fatalf("compact does not start from the size stats reported (%s): %q", human(fi.Size()), out)
	}
}

func TestGCFloor(t *testing.T) {
	for _, c := range []struct {
		env     map[string]string
		want    uint64
		wantErr string
	}{
		{env: nil, want: defaultGCFloorMiB << 20},
		{env: map[string]string{"FERRY_GC_FLOOR_MIB": "64"}, want: 64 << 20},
		{env: map[string]string{"FERRY_GC_FLOOR_MIB": "0"}, want: 0},
		{env: map[string]string{"GOGC": "200"}, want: 0},
		{env: map[string]string{"GOMEMLIMIT": "64MiB"}, want: 0},
		{env: map[string]string{"FERRY_GC_FLOOR_MIB": "16MiB"}, wantErr: `"16MiB" is not a whole number of MiB`},
		{env: map[string]string{"FERRY_GC_FLOOR_MIB": "-1"}, wantErr: "not a whole number"},
		{env: map[string]string{"FERRY_GC_FLOOR_MIB": "70000"}, wantErr: "0 to 65535"},
		{env: map[string]string{"FERRY_GC_FLOOR_MIB": "8", "GOGC": "100"}, wantErr: "together with GOGC or GOMEMLIMIT"},
	} {
		got, err := gcFloor(func(k string) string { return c.env[k] })
		switch {
		case c.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%v: error %v, want one containing %q", c.env, err, c.wantErr)
			}
		case err != nil:
			t.Errorf("%v: %v", c.env, err)
		case got != c.want:
			t.Errorf("%v: floor %d, want %d", c.env, got, c.want)
		}
	}
}
