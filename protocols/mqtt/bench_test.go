package mqtt

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/protocols/message"
)

// groupCommitSink simulates the spool's writer: Accepts that arrive while a
// commit runs wait for the next one, and each commit (fsync included) takes
// d however many messages it holds.
type groupCommitSink struct {
	d       time.Duration
	mu      sync.Mutex
	pending []chan struct{}
	kick    chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
	commits int
}

func newGroupCommitSink(d time.Duration) *groupCommitSink {
	g := &groupCommitSink{d: d, kick: make(chan struct{}, 1), done: make(chan struct{})}
	g.wg.Add(1)
	go g.loop()
	return g
}

func (g *groupCommitSink) Accept(ctx context.Context, _ *message.Message) error {
	ch := make(chan struct{})
	g.mu.Lock()
	g.pending = append(g.pending, ch)
	g.mu.Unlock()
	select {
	case g.kick <- struct{}{}:
	default:
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *groupCommitSink) loop() {
	defer g.wg.Done()
	for {
		select {
		case <-g.done:
			return
		case <-g.kick:
		}
		g.mu.Lock()
		batch := g.pending
		g.pending = nil
		g.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		time.Sleep(g.d)
		g.commits++
		for _, ch := range batch {
			close(ch)
		}
	}
}

func (g *groupCommitSink) close() {
	close(g.done)
	g.wg.Wait()
}

// BenchmarkIngestQoS1: paho clients each publishing 256-byte QoS 1 messages
// one at a time (wait for the PUBACK, then the next), into a simulated 2 ms
// group-commit sink, into the real spool (sync durability) and, to show the
// CPU ceiling of clients and server sharing the machine, into a sink that
// returns at once.
func BenchmarkIngestQoS1(b *testing.B) {
	for _, kind := range []string{"instant", "sim2ms", "spool"} {
		for _, n := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("sink=%s/clients=%d", kind, n), func(b *testing.B) {
				var sink message.Sink
				switch kind {
				case "instant": // no commit cost: the CPU ceiling of mochi + paho in one process
					sink = message.SinkFunc(func(context.Context, *message.Message) error { return nil })
				case "sim2ms":
					g := newGroupCommitSink(2 * time.Millisecond)
					b.Cleanup(g.close)
					sink = g
				case "spool":
					sp := openSpool(b, filepath.Join(b.TempDir(), "spool.db"))
					b.Cleanup(func() { _ = sp.Close() })
					sink = spoolSink(sp)
					before := sp.Stats()
					defer func() {
						after := sp.Stats()
						if c := after.Commits - before.Commits; c > 0 {
							b.ReportMetric(float64(after.CommitOps-before.CommitOps)/float64(c), "msgs/commit")
							b.ReportMetric(float64((after.CommitTime-before.CommitTime).Microseconds())/float64(c), "µs/commit")
						}
					}()
				}
				benchIngest(b, sink, n)
			})
		}
	}
}

func benchIngest(b *testing.B, sink message.Sink, clients int) {
	s, _ := startServer(b, testOptions{Sink: sink})
	payload := strings.Repeat("x", 256)
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		c, _, err := pahoConnect(s.Addr("tcp"), fmt.Sprintf("bench-%d", i), func(o *paho.ClientOptions) { o.SetWriteTimeout(10 * time.Second) })
		if err != nil {
			b.Fatal(err)
		}
		defer c.Disconnect(0)
		topic := fmt.Sprintf("bench/%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				tok := c.Publish(topic, 1, false, payload)
				if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					errs <- fmt.Errorf("publish: %w", tok.Error())
					for range jobs { // drain so that the loop ends
					}
					return
				}
			}
		}()
	}
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}

// BenchmarkIngestQoS1Raw is BenchmarkIngestQoS1 with minimal hand-written
// MQTT 3.1.1 clients instead of paho, whose CPU cost on the same two cores
// otherwise caps the figure: what is measured is the server and the spool.
func BenchmarkIngestQoS1Raw(b *testing.B) {
	for _, kind := range []string{"instant", "spool"} {
		for _, n := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("sink=%s/clients=%d", kind, n), func(b *testing.B) {
				var sink message.Sink = message.SinkFunc(func(context.Context, *message.Message) error { return nil })
				if kind == "spool" {
					sp := openSpool(b, filepath.Join(b.TempDir(), "spool.db"))
					b.Cleanup(func() { _ = sp.Close() })
					sink = spoolSink(sp)
					defer func() {
						st := sp.Stats()
						if st.Commits > 0 {
							b.ReportMetric(float64(st.CommitOps)/float64(st.Commits), "msgs/commit")
							b.ReportMetric(float64(st.Syncs)/float64(max(1, st.Accepted)), "fsyncs/msg")
							b.ReportMetric(float64(st.CommitTime.Microseconds())/float64(st.Commits), "µs/commit")
						}
					}()
				}
				benchPipelined(b, sink, n, 1)
			})
		}
	}
}

// BenchmarkIngestPipelined: minimal MQTT 3.1.1 clients that keep up to
// window QoS 1 publishes in flight each (a pipelining device, as a real
// load generator is), into the real spool with sync durability: what one
// connection gets now that it shares group commits with itself.
func BenchmarkIngestPipelined(b *testing.B) {
	for _, n := range []int{1, 8, 64} {
		for _, window := range []int{16, 64} {
			b.Run(fmt.Sprintf("clients=%d/window=%d", n, window), func(b *testing.B) {
				sp := openSpool(b, filepath.Join(b.TempDir(), "spool.db"))
				b.Cleanup(func() { _ = sp.Close() })
				defer func() {
					st := sp.Stats()
					if st.Commits > 0 {
						b.ReportMetric(float64(st.CommitOps)/float64(st.Commits), "msgs/commit")
						b.ReportMetric(float64(st.Syncs)/float64(max(1, st.Accepted)), "fsyncs/msg")
					}
				}()
				benchPipelined(b, spoolSink(sp), n, window)
			})
		}
	}
}

// BenchmarkIngestPipelinedInstant is BenchmarkIngestPipelined into a Sink
// that answers at once: the CPU cost of the MQTT path and the ingest core
// alone (8 clients, 64 in flight each).
func BenchmarkIngestPipelinedInstant(b *testing.B) {
	benchPipelined(b, message.SinkFunc(func(context.Context, *message.Message) error { return nil }), 8, 64)
}

// benchPipelined runs n pipelining clients (pipeClient, window in flight
// each) into a server over sink, one message per b.Loop iteration, and
// reports msgs/s once every message is acknowledged.
func benchPipelined(b *testing.B, sink message.Sink, n, window int) {
	s, _ := startServer(b, testOptions{Sink: sink})
	payload := []byte(strings.Repeat("x", 256))
	jobs := make(chan struct{}, n*window)
	errs := make(chan error, n)
	stop := make(chan struct{})
	defer close(stop)
	var wg sync.WaitGroup
	for i := range n {
		c, err := dialPipe(s.Addr("tcp"), fmt.Sprintf("pipe-%d", i), false, 1, window)
		if err != nil {
			b.Fatal(err)
		}
		defer c.close()
		topic := fmt.Sprintf("bench/%d", i)
		var acked atomic.Int64
		ackc := make(chan struct{}, 1)
		go func() {
			err := c.readAcks(func(pipeMsg) { // in publish order: readAcks checks
				acked.Add(1)
				signalRoom(ackc)
			})
			select {
			case <-stop:
			default:
				errs <- err
			}
		}()
		wg.Go(func() {
			sent := int64(0)
			for range jobs {
				if !c.publish(topic, payload, false, stop) {
					return
				}
				sent++
			}
			for acked.Load() < sent {
				select {
				case <-ackc:
				case <-stop:
					return
				}
			}
		})
	}
	start, cpu0 := time.Now(), processCPU()
	for b.Loop() {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	// The CPU of the whole process (server and clients) per message: on a
	// shared machine steadier than msgs/s, which other jobs' load moves.
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu_us/msg")
}

// processCPU is the user+system CPU this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
