package stomp

import (
	"bufio"
	"fmt"
	"io"
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

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spooltest"
)

// childEnv switches the test binary into the durability child: it serves
// STOMP over a real spool at the path in the variable until killed.
const childEnv = "FERRY_STOMP_DURABILITY_CHILD"

// spoolSink is the gateway's wiring in miniature: message.Encode into a
// spool.Entry, spool errors mapped to message errors.
func spoolSink(sp *spool.Spool) message.Sink { return spooltest.Sink(sp) }

func runChild() {
	path := os.Getenv(childEnv)
	sp, err := spool.Open(path, spool.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open spool:", err)
		os.Exit(3)
	}
	s, err := NewServer(Options{Sink: spoolSink(sp), Auth: message.AllowAll{}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(3)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(3)
	}
	fmt.Println("ADDR", ln.Addr().String())
	err = s.Serve(ln)
	fmt.Fprintln(os.Stderr, "child: serve:", err)
	os.Exit(4)
}

// TestDurabilityKill9 (G1): every SEND that got a RECEIPT is in the spool
// after the server process is SIGKILLed mid-stream.
func TestDurabilityKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test; skipped under -short")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	sp, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("open spool: %v", err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
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
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ADDR ") {
		t.Fatalf("child did not report its address: %q %v", line, err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))

	// Four pipelined connections, each SENDing with receipts until the
	// child dies; every receipted body is recorded.
	const conns = 4
	var mu sync.Mutex
	receipted := map[string]bool{}
	var wg sync.WaitGroup
	for ci := range conns {
		c := connectRaw(t, addr, V12)
		wg.Go(func() {
			var sendErr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < 1_000_000; i++ {
					body := fmt.Sprintf("c%d-m%d", ci, i)
					f := fr(frame.SEND, body, frame.Destination, "/queue/dur."+strconv.Itoa(ci), frame.Receipt, body)
					_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if _, sendErr = c.nc.Write(AppendFrame(nil, f, V12)); sendErr != nil {
						return
					}
				}
			}()
			for {
				f, err := c.nextErr(20 * time.Second)
				if err != nil {
					break
				}
				if f.Command == frame.RECEIPT {
					mu.Lock()
					receipted[f.Header.Get(frame.ReceiptId)] = true
					mu.Unlock()
				}
			}
			_ = c.nc.Close()
			<-done
		})
	}
	// Let receipts flow, then kill.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(receipted)
		mu.Unlock()
		if n >= 2000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	_ = cmd.Wait()
	wg.Wait()
	_, _ = io.Copy(io.Discard, stdout)
	if len(receipted) == 0 {
		t.Fatal("no receipts before the kill")
	}

	sp, err = spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("reopen spool: %v", err)
	}
	defer func() { _ = sp.Close() }()
	stored := map[string]bool{}
	for range 1_000_000 {
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
				t.Fatalf("decode stored message %d: %v", it.ID, err)
			}
			stored[string(m.Payload)] = true
		}
	}
	var missing []string
	for body := range receipted {
		if !stored[body] {
			missing = append(missing, body)
		}
	}
	t.Logf("receipted %d, stored %d (stored without receipt: in flight at the kill)", len(receipted), len(stored))
	if len(missing) > 0 {
		t.Fatalf("%d receipted messages missing from the spool, e.g. %v", len(missing), missing[:min(5, len(missing))])
	}
}
