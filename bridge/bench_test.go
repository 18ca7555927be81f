package bridge

import (
	"context"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/protocols/message"
)

// benchBacklog is the backlog drained per benchmark iteration.
const benchBacklog = 20_000

// multiUpstream sends partition p to brokers[p % len]: K partitions against
// K mosquittos, so that the single-threaded broker is not the ceiling.
type multiUpstream struct{ ups []*Paho }

func (m multiUpstream) Connect(ctx context.Context, cfg ConnConfig) (Conn, error) {
	return m.ups[cfg.Partition%len(m.ups)].Connect(ctx, cfg)
}

// BenchmarkDrain drains a backlog of benchBacklog messages (64-byte
// payloads, 16 topics) per iteration to local mosquitto(s) and reports
// msgs/s, mosquitto's CPU use (1.0 = one core) and the CPU this process
// spent per drained message (bridge, queue and the benchmark's polling;
// with queue=fake that is the bridge's cost). Raw format, except the
// format=envelope cases (the gateway's default; a JSON payload).
func BenchmarkDrain(b *testing.B) {
	type drainCase struct {
		kind           string
		parts, brokers int
		window         int
		format         Format
	}
	var cases []drainCase
	for _, kind := range []string{"fake", "spool"} {
		for _, pb := range [][2]int{{1, 1}, {4, 1}, {4, 4}} {
			for _, window := range []int{1, 16, 64, 256} {
				cases = append(cases, drainCase{kind, pb[0], pb[1], window, FormatRaw})
			}
		}
		cases = append(cases, drainCase{kind, 1, 1, 64, FormatEnvelope}, drainCase{kind, 4, 4, 64, FormatEnvelope})
	}
	for _, tc := range cases {
		name := fmt.Sprintf("queue=%s/partitions=%d/brokers=%d/window=%d", tc.kind, tc.parts, tc.brokers, tc.window)
		if tc.format == FormatEnvelope {
			name += "/format=envelope"
		}
		b.Run(name, func(b *testing.B) {
			var mqs []*bridgetest.Mosquitto
			ups := multiUpstream{}
			for range tc.brokers {
				mq := bridgetest.StartMosquitto(b, bridgetest.MosquittoOptions{})
				mqs = append(mqs, mq)
				ups.ups = append(ups.ups, &Paho{Brokers: []string{mq.URL()}, KeepAlive: 30 * time.Second, ConnectTimeout: 5 * time.Second})
			}
			q := newTestQueue(b, tc.kind)
			msgs := make([]*message.Message, benchBacklog)
			for i := range msgs {
				payload := make([]byte, 64)
				if tc.format == FormatEnvelope {
					payload = fmt.Appendf(nil, `{"seq":%d,"t":21.5,"rh":40.1,"dev":"sensor-%02d","ok":true}`, i, i%16)
				}
				msgs[i] = &message.Message{ID: message.NewID(time.Now()), Topic: fmt.Sprintf("bench/t%d", i%16), Payload: payload,
					AcceptedAt: time.Now(), Source: message.Source{Protocol: message.ProtoMQTT, ClientID: "bench"}}
			}
			var total int
			var elapsed, cpu, self time.Duration
			for b.Loop() {
				// The backlog is spooled while no bridge runs; each
				// iteration drains it with a fresh bridge (connect
				// included).
				b.StopTimer()
				q.putAll(b, msgs)
				br, err := New(q, Options{Upstream: ups, Window: tc.window, Partitions: tc.parts, Format: tc.format, GatewayID: "gw1"})
				if err != nil {
					b.Fatal(err)
				}
				runtime.GC() // the garbage of putAll is not the drain's
				b.StartTimer()
				start := time.Now()
				cpu0, self0 := mosqCPU(mqs), selfCPU()
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = br.Run(ctx) }()
				for q.left(b) > 0 {
					time.Sleep(time.Millisecond)
				}
				elapsed += time.Since(start)
				cpu += mosqCPU(mqs) - cpu0
				self += selfCPU() - self0
				total += benchBacklog
				cancel()
				<-done
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "mosq_cpu")
			b.ReportMetric(float64(self.Microseconds())/float64(total), "cpu_us/msg")
		})
	}
}

// selfCPU is the user+system CPU this process used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func mosqCPU(mqs []*bridgetest.Mosquitto) time.Duration {
	var d time.Duration
	for _, m := range mqs {
		d += m.CPUTime()
	}
	return d
}

// BenchmarkPahoBare is the ceiling: one plain paho client publishing QoS 1
// with at most window messages outstanding, into the same kind of mosquitto.
func BenchmarkPahoBare(b *testing.B) {
	for _, window := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			mq := bridgetest.StartMosquitto(b, bridgetest.MosquittoOptions{})
			c := paho.NewClient(paho.NewClientOptions().AddBroker(mq.URL()).SetClientID("bare").
				SetCleanSession(true).SetAutoReconnect(false).SetStore(paho.NewMemoryStore()))
			if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			defer c.Disconnect(0)
			payload := make([]byte, 64)
			var total int
			var elapsed, cpu, self time.Duration
			for b.Loop() {
				start := time.Now()
				cpu0, self0 := mq.CPUTime(), selfCPU()
				// Exactly window outstanding: publish i waits for the ack
				// of i-window.
				toks := make([]paho.Token, benchBacklog)
				for i := range benchBacklog {
					if i >= window {
						if t := toks[i-window]; t.Wait() && t.Error() != nil {
							b.Fatal(t.Error())
						}
					}
					toks[i] = c.Publish(fmt.Sprintf("bench/t%d", i%16), 1, false, payload)
				}
				for _, t := range toks[max(0, benchBacklog-window):] {
					if t.Wait() && t.Error() != nil {
						b.Fatal(t.Error())
					}
				}
				elapsed += time.Since(start)
				cpu += mq.CPUTime() - cpu0
				self += selfCPU() - self0
				total += benchBacklog
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "mosq_cpu")
			b.ReportMetric(float64(self.Microseconds())/float64(total), "cpu_us/msg")
		})
	}
}

// BenchmarkDrainKind drains benchBacklog messages (64-byte raw payloads, 16
// topics, window 64, one connection) per iteration into each upstream
// kind: mosquitto over MQTT 3.1.1 and MQTT 5, and a JetStream stream
// (file storage) on nats-server. msgs/s counts messages acknowledged by
// the upstream (PUBACK, PubAck).
func BenchmarkDrainKind(b *testing.B) {
	for _, kind := range []string{"fake", "spool"} {
		for _, up := range []string{"mqtt311", "mqtt5", "jetstream"} {
			b.Run(fmt.Sprintf("queue=%s/upstream=%s", kind, up), func(b *testing.B) {
				o := Options{Window: 64, GatewayID: "gw1"}
				switch up {
				case "jetstream":
					ns := bridgetest.StartNATS(b)
					createStream(b, ns.URL(), jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage})
					o.Brokers, o.JetStream = []string{ns.URL()}, JetStreamOptions{SubjectPrefix: "bench", Stream: "BENCH"}
				default:
					mq := bridgetest.StartMosquitto(b, bridgetest.MosquittoOptions{})
					o.Brokers = []string{mq.URL()}
					if up == "mqtt5" {
						o.Protocol = 5
					}
				}
				q := newTestQueue(b, kind)
				msgs := make([]*message.Message, benchBacklog)
				for i := range msgs {
					msgs[i] = &message.Message{ID: message.NewID(time.Now()), Topic: fmt.Sprintf("bench/t%d", i%16), Payload: make([]byte, 64),
						UpstreamQoS: 1, AcceptedAt: time.Now(), Source: message.Source{Protocol: message.ProtoMQTT, ClientID: "bench"}}
				}
				var total int
				var elapsed, self time.Duration
				for b.Loop() {
					b.StopTimer()
					q.putAll(b, msgs)
					br, err := New(q, o)
					if err != nil {
						b.Fatal(err)
					}
					runtime.GC()
					b.StartTimer()
					start, self0 := time.Now(), selfCPU()
					ctx, cancel := context.WithCancel(context.Background())
					done := make(chan struct{})
					go func() { defer close(done); _ = br.Run(ctx) }()
					for q.left(b) > 0 {
						time.Sleep(time.Millisecond)
					}
					elapsed += time.Since(start)
					self += selfCPU() - self0
					total += benchBacklog
					cancel()
					<-done
				}
				b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
				b.ReportMetric(float64(self.Microseconds())/float64(total), "cpu_us/msg")
			})
		}
	}
}
