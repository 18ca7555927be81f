package mqtt

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
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
	s, _ := startServer(b, Options{Sink: sink})
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
				s, _ := startServer(b, Options{Sink: sink})
				payload := []byte(strings.Repeat("x", 256))
				clients := make([]*rawPublisher, n)
				for i := range clients {
					c, err := dialBench(s.Addr("tcp"), fmt.Sprintf("raw-%d", i))
					if err != nil {
						b.Fatal(err)
					}
					defer c.close()
					clients[i] = c
				}
				jobs := make(chan struct{}, n)
				errs := make(chan error, n)
				var wg sync.WaitGroup
				for i, c := range clients {
					topic := fmt.Sprintf("bench/%d", i)
					wg.Go(func() {
						for range jobs {
							if err := c.publish(topic, payload); err != nil {
								errs <- err
								for range jobs {
								}
								return
							}
						}
					})
				}
				start := time.Now()
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
			})
		}
	}
}

// rawPublisher is a minimal MQTT 3.1.1 QoS 1 publisher: one message in
// flight, PUBACK awaited.
type rawPublisher struct {
	c   net.Conn
	r   *bufio.Reader
	id  uint16
	buf []byte
}

func dialBench(addr, clientID string) (*rawPublisher, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	vh := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60}, mqttString(clientID)...)
	pkt := append([]byte{0x10}, varint(len(vh))...)
	if _, err := c.Write(append(pkt, vh...)); err != nil {
		return nil, err
	}
	p := &rawPublisher{c: c, r: bufio.NewReader(c)}
	var ack [4]byte
	if _, err := io.ReadFull(p.r, ack[:]); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		_ = c.Close()
		return nil, fmt.Errorf("connack %x: %w", ack, err)
	}
	return p, nil
}

func (p *rawPublisher) publish(topic string, payload []byte) error {
	p.id++
	if p.id == 0 {
		p.id = 1
	}
	n := 2 + len(topic) + 2 + len(payload)
	b := append(p.buf[:0], 0x32)
	b = append(b, varint(n)...)
	b = append(b, mqttString(topic)...)
	b = append(b, byte(p.id>>8), byte(p.id))
	b = append(b, payload...)
	p.buf = b
	if _, err := p.c.Write(b); err != nil {
		return err
	}
	var ack [4]byte
	if _, err := io.ReadFull(p.r, ack[:]); err != nil {
		return fmt.Errorf("puback: %w", err)
	}
	if ack[0] != 0x40 || ack[2] != byte(p.id>>8) || ack[3] != byte(p.id) {
		return fmt.Errorf("unexpected packet %x waiting for PUBACK %d", ack, p.id)
	}
	return nil
}

func (p *rawPublisher) close() { _ = p.c.Close() }
