package bridge

import (
	"context"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

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
// msgs/s and mosquitto's CPU use (1.0 = one core).
func BenchmarkDrain(b *testing.B) {
	for _, kind := range []string{"fake", "spool"} {
		for _, tc := range []struct {
			parts, brokers int
		}{{1, 1}, {4, 1}, {4, 4}} {
			for _, window := range []int{1, 16, 64, 256} {
				name := fmt.Sprintf("queue=%s/partitions=%d/brokers=%d/window=%d", kind, tc.parts, tc.brokers, window)
				b.Run(name, func(b *testing.B) {
					var mqs []*bridgetest.Mosquitto
					ups := multiUpstream{}
					for range tc.brokers {
						mq := bridgetest.StartMosquitto(b, bridgetest.MosquittoOptions{})
						mqs = append(mqs, mq)
						ups.ups = append(ups.ups, &Paho{Brokers: []string{mq.URL()}, KeepAlive: 30 * time.Second, ConnectTimeout: 5 * time.Second})
					}
					q := newTestQueue(b, kind)
					payload := make([]byte, 64)
					msgs := make([]*message.Message, benchBacklog)
					for i := range msgs {
						msgs[i] = &message.Message{ID: fmt.Sprint(i), Topic: fmt.Sprintf("bench/t%d", i%16), Payload: payload}
					}
					var total int
					var elapsed, cpu time.Duration
					for b.Loop() {
						// The backlog is spooled while no bridge runs; each
						// iteration drains it with a fresh bridge (connect
						// included).
						b.StopTimer()
						q.putAll(b, msgs)
						br, err := New(q, Options{Upstream: ups, Window: window, Partitions: tc.parts})
						if err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
						start := time.Now()
						cpu0 := mosqCPU(mqs)
						ctx, cancel := context.WithCancel(context.Background())
						done := make(chan struct{})
						go func() { defer close(done); _ = br.Run(ctx) }()
						for q.left(b) > 0 {
							time.Sleep(time.Millisecond)
						}
						elapsed += time.Since(start)
						cpu += mosqCPU(mqs) - cpu0
						total += benchBacklog
						cancel()
						<-done
					}
					b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
					b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "mosq_cpu")
				})
			}
		}
	}
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
			var elapsed, cpu time.Duration
			for b.Loop() {
				start := time.Now()
				cpu0 := mq.CPUTime()
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
				total += benchBacklog
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "mosq_cpu")
		})
	}
}
