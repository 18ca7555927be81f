package bridge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ferrymq/ferry/protocols/message"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// runBridge starts b.Run and returns a stop function that cancels and
// waits.
func runBridge(t *testing.T, b *Bridge) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newTestBridge(t *testing.T, q Queue, u Upstream, o Options) *Bridge {
	t.Helper()
	o.Upstream = u
	if o.BackoffBase == 0 {
		o.BackoffBase = 10 * time.Millisecond
		o.BackoffMax = 100 * time.Millisecond
	}
	b, err := New(q, o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// firstSeen checks the broker's log: per topic, the first arrival of each
// sequence number comes in order, and all n[topic] arrived.
func firstSeen(t *testing.T, log []fakePub, want map[string]int) (dups int) {
	t.Helper()
	next := map[string]int{}
	seen := map[string]bool{}
	for _, p := range log {
		seq, err := strconv.Atoi(p.payload)
		if err != nil {
			continue
		}
		k := p.topic + "#" + p.payload
		if seen[k] {
			dups++
			continue
		}
		seen[k] = true
		if seq != next[p.topic] {
			t.Fatalf("topic %s: first arrival of %d, want %d (reordered)", p.topic, seq, next[p.topic])
		}
		next[p.topic]++
	}
	for topic, n := range want {
		if next[topic] != n {
			t.Fatalf("topic %s: %d of %d arrived", topic, next[topic], n)
		}
	}
	return dups
}

func TestBackoffFullJitter(t *testing.T) {
	var asked []int64
	b := backoff{base: time.Second, max: 60 * time.Second, rand: func(n int64) int64 { asked = append(asked, n); return n - 1 }}
	var got []time.Duration
	for range 9 {
		got = append(got, b.next())
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("delay %d: got %v want %v (all %v)", i, got[i], want[i]*time.Second, got)
		}
	}
	b.reset()
	if d := b.next(); d != time.Second {
		t.Fatalf("after reset: %v", d)
	}
	// Full jitter: the whole range [0, ceiling] is possible.
	b = backoff{base: time.Second, max: time.Minute, rand: func(int64) int64 { return 0 }}
	if d := b.next(); d != 0 {
		t.Fatalf("lowest draw: %v", d)
	}
}

func TestConnectFailureBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newFakeQueue()
		u := newFakeUpstream(true)
		var mu sync.Mutex
		var at []time.Time
		u.fail = func(int) error {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
			return errors.New("x509: certificate signed by unknown authority")
		}
		b := newTestBridge(t, q, u, Options{BackoffBase: time.Second, BackoffMax: 8 * time.Second})
		stop := runBridge(t, b)
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		s := b.Stats()
		if s.State != StateBackoff || !strings.Contains(s.LastError, "unknown authority") {
			t.Fatalf("state %v, last error %q", s.State, s.LastError)
		}
		stop()
		mu.Lock()
		defer mu.Unlock()
		// Mean delay at the cap is 4s: about 150 attempts in 10 minutes; a
		// crash loop would make millions, no backoff at all would hang.
		if len(at) < 60 || len(at) > 400 {
			t.Fatalf("%d connect attempts in 10 minutes", len(at))
		}
		for i := 1; i < len(at); i++ {
			if d := at[i].Sub(at[i-1]); d > 8*time.Second {
				t.Fatalf("gap %d is %v, above the 8s cap", i, d)
			}
		}
	})
}

func TestBackoffResetsAfterStableConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newFakeQueue()
		u := newFakeUpstream(true)
		b := newTestBridge(t, q, u, Options{BackoffBase: time.Second, BackoffMax: time.Hour, StableAfter: 30 * time.Second})
		runBridge(t, b)
		// Ten quick drops grow the ceiling to 2^10 s; then a stable
		// connection must bring it back to ~1s.
		for range 10 {
			c := <-u.newConn
			c.drop(errors.New("reset by peer"))
		}
		c := <-u.newConn
		time.Sleep(time.Minute)
		c.drop(errors.New("reset by peer"))
		start := time.Now()
		<-u.newConn
		if d := time.Since(start); d > time.Second {
			t.Fatalf("reconnect after a stable connection took %v, want <= base 1s", d)
		}
	})
}

func TestStallDetectedAndResentInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newFakeQueue()
		q.putN(5, "a")
		u := newFakeUpstream(false) // never acks: a blackhole
		b := newTestBridge(t, q, u, Options{StallTimeout: 5 * time.Second, Window: 8})
		runBridge(t, b)
		c1 := <-u.newConn
		synctest.Wait()
		if s := b.Stats(); s.InFlight != 5 || s.State != StateUp {
			t.Fatalf("in flight %d state %v", s.InFlight, s.State)
		}
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if s := b.Stats(); s.Stalls != 0 {
			t.Fatal("stalled before the timeout")
		}
		start := time.Now()
		c2 := <-u.newConn
		if d := time.Since(start); d < time.Second || d > 2*time.Second {
			t.Fatalf("stall detected after %v, want 5s", d+4*time.Second)
		}
		select {
		case <-c1.Lost():
		default:
			t.Fatal("stalled connection not closed")
		}
		synctest.Wait()
		s := b.Stats()
		if s.Stalls != 1 || !strings.Contains(s.LastError, "stalled") {
			t.Fatalf("stalls %d last error %q", s.Stalls, s.LastError)
		}
		q.putN(2, "a") // newer: payloads 0,1 again but ids 6,7 and after the resends
		synctest.Wait()
		c2.ackAll()
		synctest.Wait()
		log := u.log()
		var second []string
		for _, p := range log {
			if p.conn == 1 {
				second = append(second, p.payload)
			}
		}
		if got := strings.Join(second, ","); !strings.HasPrefix(got, "0,1,2,3,4") {
			t.Fatalf("second connection sent %s; want the 5 stalled ones first, in order", got)
		}
		if s := b.Stats(); s.Resent != 5 {
			t.Fatalf("resent %d", s.Resent)
		}
	})
}

func TestCutNacksInFlightAndResendsFirst(t *testing.T) {
	for _, window := range []int{1, 4, 64} {
		t.Run(fmt.Sprintf("window=%d", window), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				q := newFakeQueue()
				q.putN(200, "a", "b", "c")
				u := newFakeUpstream(false)
				b := newTestBridge(t, q, u, Options{Window: window})
				runBridge(t, b)
				// Each connection: ack what is pending, then drop with some
				// unacked; repeat until drained.
				for q.remaining() > 0 {
					c := <-u.newConn
					synctest.Wait()
					c.ackAll()
					synctest.Wait()
					c.drop(errors.New("cut"))
					synctest.Wait()
				}
				firstSeen(t, u.log(), map[string]int{"a": 67, "b": 67, "c": 66})
				if len(q.deadLetters()) != 0 {
					t.Fatalf("dead letters: %v", q.deadLetters())
				}
			})
		})
	}
}

func TestPoisonIsolatedAndDeadLettered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newFakeQueue()
		for i := range 100 {
			p := fmt.Sprint(i)
			if i == 37 {
				p = "poison"
			}
			q.put(&message.Message{ID: fmt.Sprint(i), Topic: "t", Payload: []byte(p)})
		}
		u := newFakeUpstream(true)
		u.dropIf = func(_ string, p []byte) bool { return string(p) == "poison" }
		b := newTestBridge(t, q, u, Options{Window: 16, MaxAttempts: 5})
		runBridge(t, b)
		for q.remaining() > 0 {
			time.Sleep(time.Second)
		}
		dead := q.deadLetters()
		if len(dead) != 1 || !strings.Contains(dead[38], "delivery failed 5 times") {
			t.Fatalf("dead letters %v; want only id 38 (the poison)", dead)
		}
		if s := b.Stats(); s.DeadLettered != 1 {
			t.Fatalf("stats dead-lettered %d", s.DeadLettered)
		}
		// The poison was sent alone once suspect: at most 2 connections
		// carried its neighbours.
		sent := map[string]int{}
		for _, p := range u.log() {
			sent[p.payload]++
		}
		if sent["poison"] != 5 {
			t.Fatalf("poison sent %d times, want 5", sent["poison"])
		}
		for i := 38; i < 100; i++ {
			if n := sent[fmt.Sprint(i)]; n > 2 {
				t.Fatalf("message %d behind the poison sent %d times", i, n)
			}
		}
	})
}

func TestDeadLettersBadMessages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newFakeQueue()
		q.put(&message.Message{Topic: "ok", Payload: []byte("0")})
		q.put(&message.Message{Topic: "bad/+/wild", Payload: []byte("x")})
		q.mu.Lock()
		q.next++
		q.items[q.next] = &itemGarbage
		q.avail.Push(q.next)
		q.mu.Unlock()
		q.put(&message.Message{Topic: "ok", Payload: []byte("1")})
		u := newFakeUpstream(true)
		b := newTestBridge(t, q, u, Options{})
		runBridge(t, b)
		for q.remaining() > 0 {
			time.Sleep(time.Second)
		}
		dead := q.deadLetters()
		if !strings.Contains(dead[2], "invalid upstream topic") || !strings.Contains(dead[3], "undecodable") || len(dead) != 2 {
			t.Fatalf("dead letters: %v", dead)
		}
		firstSeen(t, u.log(), map[string]int{"ok": 2})
	})
}

// TestRandomCutsKeepOrder is a model-style test: random windows, partitions
// and cuts (before or after the broker got a publish); the broker's first
// arrivals must stay in per-topic order and complete.
func TestRandomCutsKeepOrder(t *testing.T) {
	for seed := range uint64(12) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := rand.New(rand.NewPCG(seed, 7))
				window := []int{1, 2, 16, 64, 256}[r.IntN(5)]
				parts := 1 + r.IntN(4)
				q := newFakeQueue()
				topics := []string{"a", "b", "c", "d", "e", "f", "g"}
				want := map[string]int{}
				for i := range 2000 {
					tp := topics[r.IntN(len(topics))]
					q.put(&message.Message{ID: fmt.Sprint(i), Topic: tp, Payload: fmt.Appendf(nil, "%d", want[tp])})
					want[tp]++
				}
				u := newFakeUpstream(false)
				b := newTestBridge(t, q, u, Options{Window: window, Partitions: parts, StallTimeout: time.Second})
				runBridge(t, b)
				var mu sync.Mutex
				var conns []*fakeConn
				go func() {
					for c := range u.newConn {
						mu.Lock()
						conns = append(conns, c)
						mu.Unlock()
					}
				}()
				for i := 0; q.remaining() > 0 && i < 100000; i++ {
					time.Sleep(time.Duration(1+r.IntN(5)) * time.Millisecond)
					mu.Lock()
					live := append([]*fakeConn(nil), conns...)
					mu.Unlock()
					for _, c := range live {
						if r.IntN(30) == 0 {
							c.drop(errors.New("random cut"))
						} else {
							c.ackAll()
						}
					}
				}
				if q.remaining() > 0 {
					t.Fatalf("%d not delivered", q.remaining())
				}
				firstSeen(t, u.log(), want)
				if d := q.deadLetters(); len(d) > 0 {
					t.Fatalf("window %d parts %d: dead letters %v", window, parts, d)
				}
				close(u.newConn)
			})
		})
	}
}

func TestDownstreamAckAfterSink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var got []string
		var mu sync.Mutex
		sink := message.SinkFunc(func(ctx context.Context, m *message.Message) error {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
			mu.Lock()
			got = append(got, m.Topic+"="+string(m.Payload))
			mu.Unlock()
			return nil
		})
		u := newFakeUpstream(true)
		b := newTestBridge(t, newFakeQueue(), u, Options{GatewayID: "gw1", Downstream: []string{"cmd/{gateway_id}/#"}, DownstreamSink: sink})
		runBridge(t, b)
		c := <-u.newConn
		if fmt.Sprint(c.cfg.Subscriptions) != "[cmd/gw1/#]" {
			t.Fatalf("subscriptions %v", c.cfg.Subscriptions)
		}
		acked := make(chan string, 2)
		c.cfg.OnMessage(Incoming{Topic: "cmd/gw1/reboot", Payload: []byte("now"), QoS: 1, Ack: func() { acked <- "reboot" }})
		c.cfg.OnMessage(Incoming{Topic: "cmd/gw1/led", Payload: []byte("on"), QoS: 1, Ack: func() { acked <- "led" }})
		synctest.Wait()
		select {
		case a := <-acked:
			t.Fatalf("%s acked before the sink accepted", a)
		default:
		}
		close(release)
		synctest.Wait()
		if a, b := <-acked, <-acked; a != "reboot" || b != "led" {
			t.Fatalf("acks %s, %s", a, b)
		}
		mu.Lock()
		defer mu.Unlock()
		if strings.Join(got, ",") != "cmd/gw1/reboot=now,cmd/gw1/led=on" {
			t.Fatalf("sink got %v", got)
		}
	})
}

func TestPartitionsStableAndClientIDs(t *testing.T) {
	b, err := New(newFakeQueue(), Options{Brokers: []string{"tcp://127.0.0.1:1"}, GatewayID: "gw7", Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range b.parts {
		if want := fmt.Sprintf("ferry-gw7-p%d", i); p.clientID != want {
			t.Fatalf("client id %q want %q", p.clientID, want)
		}
	}
	// Stable: another bridge (another process, after a restart) maps every
	// topic to the same partition, so a topic's order survives restarts.
	b2, err := New(newFakeQueue(), Options{Brokers: []string{"tcp://127.0.0.1:1"}, GatewayID: "gw7", Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		topic := fmt.Sprint("sensors/", i, "/temp")
		if b.partitionOf(topic).idx != b2.partitionOf(topic).idx {
			t.Fatalf("%s: partition %d in one bridge, %d in another", topic, b.partitionOf(topic).idx, b2.partitionOf(topic).idx)
		}
	}
	used := map[int]bool{}
	for i := range 100 {
		used[b.partitionOf(fmt.Sprint("t/", i)).idx] = true
	}
	if len(used) != 4 {
		t.Fatalf("100 topics used partitions %v", used)
	}
}

func TestOptionsValidation(t *testing.T) {
	_, err := New(newFakeQueue(), Options{Window: 70000, Partitions: -1, MaxAttempts: 2, Downstream: []string{"a/#/b"}})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"window", "partitions", "max_attempts", "brokers", "downstream[0]", "sink"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := ParseFormat("xml"); err == nil {
		t.Fatal("format xml accepted")
	}
}

func TestEnvelope(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, tc := range []struct {
		payload  string
		encoding string
		typ      string
	}{
		{`{"temp":21.5}`, "", "application/json"},
		{`42`, "", "application/json"},
		{"\x00\x01binary", "base64", "application/octet-stream"},
		{"", "base64", "application/octet-stream"},
	} {
		m := &message.Message{ID: "abc", Topic: "s/1", Payload: []byte(tc.payload), AcceptedAt: at,
			Source: message.Source{Protocol: message.ProtoMQTT, ClientID: "dev1"}, Headers: []message.Header{{Key: "k", Value: "v"}}}
		e, p, err := DecodeEnvelope(EncodeEnvelope(m, "gw"))
		if err != nil {
			t.Fatal(err)
		}
		if e.ID != "abc" || e.Encoding != tc.encoding || e.Type != tc.typ || string(p) != tc.payload ||
			!e.Timestamp.Equal(at) || e.Source.Topic != "s/1" || e.Source.Protocol != "mqtt" || e.Headers["k"] != "v" {
			t.Fatalf("payload %q: envelope %+v payload %q", tc.payload, e, p)
		}
	}
}

func TestMaxRatePacesDrain(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		size int
		want time.Duration // for 200 messages of size bytes, after the burst
	}{
		// 50 msgs/s, burst 5: 195 / 50.
		{"msgs", Options{MaxRate: 50}, 10, 3900 * time.Millisecond},
		// 20,000 B/s, burst 64 KiB: (200,000 - 65,536) / 20,000.
		{"bytes", Options{MaxByteRate: 20000}, 1000, 6723 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				q := newFakeQueue()
				for i := range 200 {
					q.put(&message.Message{Topic: "t", Payload: fmt.Appendf(nil, "%0*d", tc.size, i)})
				}
				u := newFakeUpstream(true)
				b := newTestBridge(t, q, u, tc.o)
				start := time.Now()
				runBridge(t, b)
				for q.remaining() > 0 {
					time.Sleep(10 * time.Millisecond)
				}
				if el := time.Since(start); el < tc.want-100*time.Millisecond || el > tc.want+200*time.Millisecond {
					t.Fatalf("200 messages took %v, want %v", el, tc.want)
				}
			})
		})
	}
}
