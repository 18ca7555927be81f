package mqtt

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
	"github.com/ferrymq/ferry/spool/spooltest"
)

// childEnv switches the test binary into the durability child: the value is
// the spool path (see TestMain).
const childEnv = "FERRY_MQTT_DURABILITY_CHILD"

// spoolSink is the Sink the gateway wires.
func spoolSink(sp *spool.Spool) message.Sink { return spoolsink.New(sp, spoolsink.Options{}) }

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
	// The guard as AcceptTimeout: a slow fsync on a loaded machine must not
	// turn into refusals that end the clients' streams early.
	core, err := ingest.New(ingest.Options{Sink: spoolSink(sp), Timeout: guard()})
	if err != nil {
		fail("ingest", err)
	}
	s, err := New(Options{Ingest: core, Auth: message.AllowAll{}, AcceptTimeout: guard(), ConnectTimeout: guard(),
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

// G1: every message whose PUBACK or PUBREC a client saw is in the spool
// after the gateway process is killed with SIGKILL in the middle of the
// stream, with pipelining clients of both versions and both QoS levels.
func TestDurabilityAckedMessagesSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test")
	}
	dir := t.TempDir()
	if err := openSpool(t, filepath.Join(dir, "probe.db")).Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "spool.db")

	child := testkit.StartChild(t, childEnv+"="+path)
	addr := child.WaitLine("ADDR ")

	// Pipelining clients, as real devices are: many publishes in flight on
	// each connection, MQTT 3.1.1 and 5, QoS 1 and 2. G1 must hold for each
	// acknowledgement (PUBACK, PUBREC) although the server answers many
	// messages per commit.
	kinds := []struct {
		v5  bool
		qos byte
	}{{false, 1}, {false, 2}, {true, 1}, {true, 2}}
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	for i, k := range kinds {
		c, err := dialPipe(addr, fmt.Sprintf("dur-%d", i), k.v5, k.qos, 32)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer c.close()
			for seq := 0; ; seq++ {
				if !c.publish(fmt.Sprintf("dur/%d", i), fmt.Appendf(nil, "c%d-%d", i, seq), false, stop) {
					return
				}
			}
		})
		wg.Go(func() {
			_ = c.readAcks(func(m pipeMsg) { // ends when the child is gone
				mu.Lock()
				acked[string(m.payload)] = true
				mu.Unlock()
			})
			c.close() // the sender's next write fails
		})
	}
	// Let the stream run, then kill the child in the middle of it: after
	// 300 acks however long they take (a slow machine used to get killed
	// after 10s with few or none).
	waitFor(t, "2000 acknowledged publishes", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 2000
	})
	child.Kill()
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	spooltest.RequireAcknowledgedStored(t, path, acked, "PUBACK/PUBREC")
}
