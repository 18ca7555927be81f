package stomp

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
	"github.com/ferrymq/ferry/spool/spooltest"
)

// childEnv switches the test binary into the durability child: it serves
// STOMP over a real spool at the path in the variable until killed.
const childEnv = "FERRY_STOMP_DURABILITY_CHILD"

// spoolSink is the Sink the gateway wires.
func spoolSink(sp *spool.Spool) message.Sink { return spoolsink.New(sp, spoolsink.Options{}) }

func runChild() {
	path := os.Getenv(childEnv)
	sp, err := spool.Open(path, spool.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open spool:", err)
		os.Exit(3)
	}
	// The guard for the server's timers: a slow fsync or a slow reader on a
	// loaded machine must not end the streams early.
	g := guard()
	core, err := ingest.New(ingest.Options{Sink: spoolSink(sp), Timeout: g})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(3)
	}
	s, err := NewServer(Options{Ingest: core, Auth: message.AllowAll{}, AcceptTimeout: g, ReadTimeout: g, WriteTimeout: g, ConnectTimeout: g})
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

	child := testkit.StartChild(t, childEnv+"="+path)
	addr := child.WaitLine("ADDR ")

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
					_ = c.nc.SetWriteDeadline(time.Now().Add(guard()))
					if _, sendErr = c.nc.Write(AppendFrame(nil, f, V12)); sendErr != nil {
						return
					}
				}
			}()
			for {
				f, err := c.nextErr(guard()) // ends at the kill
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
	// Let receipts flow, then kill: after 2000 receipts however long they
	// take (it was "or after 10s", which on a slow machine killed with few
	// or none).
	waitFor(t, "2000 receipts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(receipted) >= 2000
	})
	child.Kill()
	wg.Wait()
	spooltest.RequireAcknowledgedStored(t, path, receipted, "RECEIPT")
}

// TestDurabilityTransactionKill9: a gateway process SIGKILLed between a
// transaction's SENDs and its COMMIT leaves none of them in the spool; one
// killed after the COMMIT's RECEIPT leaves all of them; one killed while
// the COMMIT is on its way leaves all or none.
func TestDurabilityTransactionKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test; skipped under -short")
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	const n = 200
	// run starts a child, sends a transaction of n SENDs (bodies
	// phase-i), and kills the child at the moment the phase says.
	run := func(phase string) {
		t.Helper()
		child := testkit.StartChild(t, childEnv+"="+path)
		addr := strings.TrimSpace(child.WaitLine("ADDR "))
		c := connectRaw(t, addr, V12)
		c.send(fr(frame.BEGIN, "", frame.Transaction, "t"))
		var b []byte
		for i := range n {
			b = AppendFrame(b, fr(frame.SEND, phase+"-"+strconv.Itoa(i), frame.Destination, "/queue/txdur", frame.Transaction, "t"), V12)
		}
		c.write(b)
		switch phase {
		case "uncommitted":
			// A receipt after the last SEND: the child holds all of them.
			c.send(fr(frame.SEND, "x", frame.Destination, "/queue/txdur", frame.Transaction, "t", frame.Receipt, "held"))
			c.expectReceipt("held")
		case "committed":
			c.send(fr(frame.COMMIT, "", frame.Transaction, "t", frame.Receipt, "c"))
			c.expectReceipt("c")
		case "racing":
			c.send(fr(frame.COMMIT, "", frame.Transaction, "t", frame.Receipt, "c"))
		}
		child.Kill()
	}
	count := func() map[string]int {
		t.Helper()
		sp, err := spool.Open(path, spool.Options{LowerLaneShare: -1})
		if err != nil {
			t.Fatalf("reopen spool: %v", err)
		}
		defer func() { _ = sp.Close() }()
		items, err := sp.TryLease(10 * n)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		next := map[string]int{}
		for _, it := range items {
			m, err := message.Decode(it.Data)
			if err != nil {
				t.Fatal(err)
			}
			phase, seq, _ := strings.Cut(string(m.Payload), "-")
			if seq != strconv.Itoa(next[phase]) {
				t.Fatalf("%s stored out of order (expected %s-%d)", m.Payload, phase, next[phase])
			}
			next[phase]++
			got[phase]++
		}
		return got
	}

	run("uncommitted")
	if got := count(); len(got) != 0 {
		t.Fatalf("after a kill before COMMIT the spool holds %v, want nothing", got)
	}
	run("committed")
	if got := count(); got["committed"] != n || len(got) != 1 {
		t.Fatalf("after a kill after the COMMIT's receipt the spool holds %v, want committed: %d", got, n)
	}
	run("racing")
	got := count()
	if r := got["racing"]; r != 0 && r != n {
		t.Fatalf("a kill while the COMMIT was on its way left %d of %d messages: not all or nothing", r, n)
	}
	t.Logf("kill racing the COMMIT: %d of %d stored", got["racing"], n)
}
