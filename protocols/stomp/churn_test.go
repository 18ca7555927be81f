package stomp

import (
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
)

// TestChurn runs publishers, subscribers with every ack mode (acking,
// NACKing or ignoring at random) and abrupt disconnects at once, under the
// race detector: every receipt must match a stored message, nothing may
// panic, deadlock or leak (goleak in TestMain).
func TestChurn(t *testing.T) {
	sink := &recsink.Sink{Delay: 200 * time.Microsecond}
	s, addr := startServer(t, testOptions{Sink: sink, Options: Options{SubscriptionQueue: 20, MaxPipelined: 16, HeartBeat: [2]time.Duration{200 * time.Millisecond, 200 * time.Millisecond}}})
	// One hang guard for every connection of the run: a slow machine makes
	// the churn slower, and only a hang may reach it (it was 10s).
	deadline := time.Now().Add(guard())
	dial := func(v Version, hb string) (net.Conn, *Reader, bool) {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, nil, false
		}
		_ = nc.SetDeadline(deadline)
		r := NewReader(nc, Limits{})
		_, _ = nc.Write(AppendFrame(nil, frame.New(frame.CONNECT, frame.AcceptVersion, v.String(), frame.HeartBeat, hb), V10))
		for {
			f, err := r.Read()
			if err != nil {
				_ = nc.Close()
				return nil, nil, false
			}
			if f != nil {
				r.SetVersion(v)
				return nc, r, f.Command == frame.CONNECTED
			}
		}
	}
	var receipts atomic.Int64
	var wg sync.WaitGroup
	for p := range 6 {
		wg.Go(func() {
			nc, r, ok := dial(V12, "0,0")
			if !ok {
				t.Error("publisher could not connect")
				return
			}
			defer func() { _ = nc.Close() }()
			const n = 200
			var buf []byte
			for i := range n {
				dest := "/topic/churn." + strconv.Itoa(rand.IntN(4))
				buf = AppendFrame(buf, fr(frame.SEND, strconv.Itoa(p)+"-"+strconv.Itoa(i), frame.Destination, dest, frame.Receipt, strconv.Itoa(i)), V12)
			}
			if p == 0 {
				buf = append(buf, "GARBAGE\n\n\x00"...) // ends this connection after its receipts
			}
			go func() { _, _ = nc.Write(buf) }()
			for i := 0; ; {
				f, err := r.Read()
				if err != nil {
					if i != n {
						t.Errorf("publisher %d: %d receipts, then %v", p, i, err)
					}
					return
				}
				if f == nil {
					continue
				}
				if f.Command == frame.ERROR {
					if p != 0 || i != n {
						t.Errorf("publisher %d: ERROR after %d: %v", p, i, headerList(f))
					}
					return
				}
				if f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != strconv.Itoa(i) {
					t.Errorf("publisher %d: frame %d: %s %v", p, i, f.Command, headerList(f))
					return
				}
				receipts.Add(1)
				i++
				if i == n && p != 0 {
					return
				}
			}
		})
	}
	modes := []string{"auto", "client", "client-individual"}
	for sb := range 6 {
		wg.Go(func() {
			for round := 0; round < 3; round++ {
				nc, r, ok := dial(Version(sb%3), "100,100")
				if !ok {
					t.Error("subscriber could not connect")
					return
				}
				kind := "/topic/"
				if sb%2 == 1 {
					kind = "/queue/"
				}
				mode := modes[(sb+round)%3]
				if sb%3 == 0 && mode == "client-individual" {
					mode = "client"
				}
				v := Version(sb % 3)
				_, _ = nc.Write(AppendFrame(nil, frame.New(frame.SUBSCRIBE, frame.Destination, kind+"churn.*", frame.Id, "s", frame.Ack, mode), v))
				// How long this subscriber stays: part of the churn, not a
				// bound (a slow machine only means fewer messages in it).
				stop := time.Now().Add(time.Duration(200+rand.IntN(400)) * time.Millisecond)
				for time.Now().Before(stop) {
					_ = nc.SetReadDeadline(stop)
					f, err := r.Read()
					if err != nil {
						break
					}
					if f == nil || f.Command != frame.MESSAGE || mode == "auto" {
						continue
					}
					cmd := frame.ACK
					switch x := rand.IntN(10); {
					case x == 0 && v != V10:
						cmd = frame.NACK
					case x == 1:
						continue // never acked
					}
					var ack *frame.Frame
					if v == V12 {
						ack = frame.New(cmd, frame.Id, f.Header.Get(frame.Ack))
					} else {
						ack = frame.New(cmd, frame.MessageId, f.Header.Get(frame.MessageId), frame.Subscription, "s")
					}
					if _, err := nc.Write(AppendFrame(nil, ack, v)); err != nil {
						break
					}
				}
				_ = nc.Close() // abrupt: no DISCONNECT
			}
		})
	}
	wg.Wait()
	if got := int64(len(sink.Messages())); got != receipts.Load() {
		t.Errorf("sink has %d messages, %d receipts were sent", got, receipts.Load())
	}
	waitFor(t, "connections to end", func() bool { return s.Stats().ConnectionsCurrent == 0 })
	st := s.Stats()
	t.Logf("stats: %+v", st)
	if st.Errors[ingest.ReasonMalformed] != 1 || st.ReceiptsSent != uint64(receipts.Load()) {
		t.Errorf("stats %+v", st)
	}
}
