package stomp

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// groupCommitSink simulates the spool's writer: every message waiting when
// a commit starts is made durable by that commit, which takes latency.
type groupCommitSink struct {
	latency time.Duration
	mu      sync.Mutex
	batch   []chan struct{}
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	commits int
}

func newGroupCommitSink(latency time.Duration) *groupCommitSink {
	g := &groupCommitSink{latency: latency, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go g.loop()
	return g
}

func (g *groupCommitSink) loop() {
	defer close(g.done)
	for {
		select {
		case <-g.kick:
		case <-g.stop:
			return
		}
		g.mu.Lock()
		batch := g.batch
		g.batch = nil
		g.commits++
		g.mu.Unlock()
		time.Sleep(g.latency)
		for _, ch := range batch {
			close(ch)
		}
	}
}

func (g *groupCommitSink) close() {
	close(g.stop)
	<-g.done
}

func (g *groupCommitSink) Submit(ctx context.Context, m *message.Message) func() error {
	ch := make(chan struct{})
	g.mu.Lock()
	g.batch = append(g.batch, ch)
	g.mu.Unlock()
	select {
	case g.kick <- struct{}{}:
	default:
	}
	return func() error {
		select {
		case <-ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (g *groupCommitSink) Accept(ctx context.Context, m *message.Message) error {
	return g.Submit(ctx, m)()
}

// benchSend runs SENDs with receipts over conns connections, topics
// topics per connection, 256-byte bodies; each b.Loop iteration sends
// perIter messages in all and waits for every receipt.
func benchSend(b *testing.B, sink message.Sink, conns, topics int) {
	const perIter = 2000
	_, addr := startServer(b, testOptions{Sink: sink, Options: Options{MaxPipelined: 256}})
	clients := make([]*rawClient, conns)
	for i := range clients {
		clients[i] = connectRaw(b, addr, V12)
	}
	body := strings.Repeat("x", 256)
	frames := make([][]byte, conns)
	for ci := range conns {
		for i := range perIter / conns {
			dest := fmt.Sprintf("/queue/bench.c%d.t%d", ci, i%topics)
			frames[ci] = AppendFrame(frames[ci], fr(frame.SEND, body, frame.Destination, dest, frame.ContentLength, "256", frame.Receipt, strconv.Itoa(i)), V12)
		}
	}
	b.SetBytes(int64(perIter * 256))
	start := time.Now()
	iters := 0
	for b.Loop() {
		iters++
		var wg sync.WaitGroup
		for ci, c := range clients {
			wg.Go(func() {
				go func() { _, _ = c.nc.Write(frames[ci]) }()
				for i := range perIter / conns {
					f, err := c.nextErr(30 * time.Second)
					if err != nil || f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != strconv.Itoa(i) {
						b.Errorf("receipt %d: %v %v", i, err, f)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	b.ReportMetric(float64(iters*perIter)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkSendReceipts: SEND with receipts into a simulated 2 ms group
// commit. "ordered" sinks implement message.OrderedSink (all of one
// connection's SENDs in flight); "plain" sinks get one Accept in flight
// per topic and connection (order per topic, G3).
func BenchmarkSendReceipts(b *testing.B) {
	for _, tc := range []struct {
		name          string
		ordered       bool
		conns, topics int
	}{
		{"conns=1/topics=1/ordered", true, 1, 1},
		{"conns=8/topics=1/ordered", true, 8, 1},
		{"conns=1/topics=1/plain", false, 1, 1},
		{"conns=1/topics=16/plain", false, 1, 16},
		{"conns=8/topics=1/plain", false, 8, 1},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g := newGroupCommitSink(2 * time.Millisecond)
			defer g.close()
			var sink message.Sink = g
			if !tc.ordered {
				sink = message.SinkFunc(g.Accept)
			}
			benchSend(b, sink, tc.conns, tc.topics)
		})
	}
}

// BenchmarkSendReceiptsSpool: the same into a real spool (sync
// durability: every receipt after fsync), through the ordered sink the
// gateway uses (spool.PutAsync): all SENDs of a connection in flight.
func BenchmarkSendReceiptsSpool(b *testing.B) {
	for _, tc := range []struct {
		name          string
		conns, topics int
	}{
		{"conns=1/topics=1", 1, 1},
		{"conns=1/topics=16", 1, 16},
		{"conns=8/topics=1", 8, 1},
		{"conns=8/topics=16", 8, 16},
	} {
		b.Run(tc.name, func(b *testing.B) {
			sp, err := spool.Open(filepath.Join(b.TempDir(), "spool.db"), spool.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = sp.Close() }()
			benchSend(b, spoolSink(sp), tc.conns, tc.topics)
		})
	}
}
