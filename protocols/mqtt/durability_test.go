package mqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spooltest"
)

// childEnv switches the test binary into the durability child: the value is
// the spool path (see TestMain).
const childEnv = "FERRY_MQTT_DURABILITY_CHILD"

// spoolSink is the Sink the gateway wires: encode, Put, map the spool's
// errors to the message package's.
func spoolSink(sp *spool.Spool) message.Sink { return spooltest.Sink(sp) }

// openSpool opens a spool or fails the test.
func openSpool(tb testing.TB, path string) *spool.Spool {
	tb.Helper()
	sp, err := spool.Open(path, spool.Options{})
	if err != nil {
		tb.Fatalf("spool.Open: %v", err)
	}
	return sp
}

// runDurabilityChild runs a server over a real spool until it is killed.
func runDurabilityChild() {
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "child: %s: %v\n", what, err)
		os.Exit(2)
	}
	sp, err := spool.Open(os.Getenv(childEnv), spool.Options{Durability: spool.Sync})
	if err != nil {
		fail("spool open", err)
	}
	s, err := New(Options{Sink: spoolSink(sp), Auth: message.AllowAll{},
		Listeners: []Listener{{Name: "tcp", Kind: KindTCP, Address: "127.0.0.1:0"}}})
	if err != nil {
		fail("new", err)
	}
	if err := s.Start(); err != nil {
		fail("start", err)
	}
	fmt.Printf("ADDR %s\n", s.Addr("tcp"))
	select {} // until SIGKILL
}

// G1: every message whose PUBACK a client saw is in the spool after the
// gateway process is killed with SIGKILL in the middle of the stream.
func TestDurabilityAckedMessagesSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test")
	}
	dir := t.TempDir()
	if err := openSpool(t, filepath.Join(dir, "probe.db")).Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "spool.db")

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addrc <- a
			}
		}
		close(addrc)
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-time.After(15 * time.Second):
	}
	if addr == "" {
		t.Fatalf("child did not start: %s", stderr.String())
	}

	const clients = 4
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	for i := range clients {
		c, _, err := pahoConnect(addr, fmt.Sprintf("dur-%d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Disconnect(0)
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("c%d-%d", i, seq)
				tok := c.Publish(fmt.Sprintf("dur/%d", i), 1, false, id)
				if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
					return // the child is gone
				}
				mu.Lock()
				acked[id] = true
				mu.Unlock()
			}
		}()
	}
	// Let the stream run, then kill the child in the middle of it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 300 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	killed = true
	_ = cmd.Wait()
	close(stop)
	wg.Wait()

	sp, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer func() { _ = sp.Close() }()
	stored := map[string]bool{}
	for {
		items, err := sp.TryLease(1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			m, err := message.Decode(it.Data)
			if err != nil {
				t.Fatalf("stored message %d: %v", it.ID, err)
			}
			stored[string(m.Payload)] = true
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acked) == 0 {
		t.Fatalf("no message was acknowledged; child stderr: %s", stderr.String())
	}
	var missing []string
	for id := range acked {
		if !stored[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged messages are not in the spool after SIGKILL, e.g. %v", len(missing), len(acked), missing[:min(5, len(missing))])
	}
	t.Logf("acked %d, stored %d (the extra ones were in flight at the kill)", len(acked), len(stored))
}
