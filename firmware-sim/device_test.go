package firmwaresim

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeBroker stands in for the gateway: it logs every message it receives
// and, per connection, acknowledges the first ackPerConn messages (after a
// round trip); the next lostPerCut it receives but their acks are lost; the
// one after is lost with the connection, which breaks. With stall it
// receives everything but never answers after ackPerConn.
type fakeBroker struct {
	mu         sync.Mutex
	failDials  int // the first failDials dials fail
	dials      int
	ackPerConn int
	lostPerCut int // after the acked ones, this many lose their acks before the cut
	stall      bool
	log        []received // every message received, in order
}

type received struct {
	*outMsg
	conn int // which connection (dial number)
}

type fakeSession struct {
	b       *fakeBroker
	conn    int
	n       int
	mu      sync.Mutex
	pending []*inflight
	closed  bool
}

var errFakeCut = errors.New("fake cut")

func (b *fakeBroker) dial(context.Context, DeviceConfig, string) (session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dials++
	if b.dials <= b.failDials {
		return nil, errors.New("connection refused")
	}
	return &fakeSession{b: b, conn: b.dials}, nil
}

func (s *fakeSession) publish(m *outMsg) *inflight {
	f := &inflight{msg: m, done: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		f.err = errSessionClosed
		close(f.done)
		return f
	}
	s.b.mu.Lock()
	limit, stall, lost := s.b.ackPerConn, s.b.stall, s.b.lostPerCut
	s.n++
	if s.n <= limit+lost || stall {
		s.b.log = append(s.b.log, received{m, s.conn})
	} // else lost with the connection
	s.b.mu.Unlock()
	s.pending = append(s.pending, f)
	if s.n <= limit {
		// The ack comes back after a round trip, so several messages
		// are in flight when the cut comes.
		time.AfterFunc(ackDelay, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if i := slices.Index(s.pending, f); i >= 0 {
				s.pending = slices.Delete(s.pending, i, i+1)
				f.at = time.Now()
				close(f.done)
			}
		})
		return f
	}
	if !stall && s.n > limit+lost {
		s.closeLocked(errFakeCut)
	}
	return f
}

const ackDelay = 10 * time.Millisecond

func (s *fakeSession) closeLocked(err error) {
	s.closed = true
	for _, f := range s.pending {
		f.err = err
		close(f.done)
	}
	s.pending = nil
}

func (s *fakeSession) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked(errSessionClosed)
}

func newFakeDevice(t *testing.T, b *fakeBroker, c DeviceConfig) *Device {
	t.Helper()
	c.Name, c.Protocol, c.Addr, c.RunID = "d", MQTT311, "fake:1", "r"
	d, err := NewDevice(c)
	if err != nil {
		t.Fatal(err)
	}
	d.dial = b.dial
	return d
}

// checkRetransmits: every reading was acked; on each connection the
// device sent in seq order (re-sends first); the first receptions come in
// seq order; every re-sent copy is byte for byte the original.
func checkRetransmits(t *testing.T, d *Device, b *fakeBroker, count int) {
	t.Helper()
	if got := len(d.Acked()); got != count {
		t.Errorf("acked %d of %d", got, count)
	}
	first := map[string][]byte{}
	var next int64 = 1
	last := map[int]int64{}
	for _, m := range b.log {
		if m.seq <= last[m.conn] {
			t.Errorf("connection %d: seq %d sent after %d", m.conn, m.seq, last[m.conn])
		}
		last[m.conn] = m.seq
		if p, ok := first[m.id]; ok {
			if !bytes.Equal(p, m.payload) {
				t.Errorf("%s re-sent with different bytes", m.id)
			}
			continue
		}
		first[m.id] = m.payload
		if m.seq != next {
			t.Errorf("first reception of seq %d, want %d", m.seq, next)
		}
		next = m.seq + 1
	}
}

// TestDeviceRetransmitsAfterCut: the broker loses every 7th ack and drops
// the connection; the device reconnects (after failed dials and backoff)
// and re-sends the unacknowledged messages in order, with their bytes.
func TestDeviceRetransmitsAfterCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &fakeBroker{ackPerConn: 6, lostPerCut: 2}
		const count = 50
		d := newFakeDevice(t, b, DeviceConfig{QoS: 1, Count: count, Window: 4, Rate: 1000, Burst: 1,
			BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second})
		start := time.Now()
		if err := d.Run(t.Context(), start.Add(time.Minute), start.Add(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
		checkRetransmits(t, d, b, count)
		st := d.Stats()
		if st.Cuts == 0 || st.Retransmits == 0 || st.Unacked != 0 || st.Sent != count {
			t.Errorf("stats %v", st)
		}
		if int(st.Connects) != b.dials {
			t.Errorf("connects %d, dials %d", st.Connects, b.dials)
		}
	})
}

// TestDeviceBacksOff: dials that fail are retried with exponential backoff
// (full jitter between BackoffMin and the doubling ceiling, capped at
// BackoffMax), so 6 failures take between a few ms and the sum of the
// ceilings.
func TestDeviceBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &fakeBroker{failDials: 6, ackPerConn: 1000}
		d := newFakeDevice(t, b, DeviceConfig{QoS: 1, Count: 3,
			BackoffMin: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
		start := time.Now()
		if err := d.Run(t.Context(), start.Add(time.Minute), start.Add(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
		elapsed := time.Since(start)
		// Ceilings: 100, 200, 400, 400, 400, 400 ms (+1ms each).
		if limit := 1906 * time.Millisecond; elapsed > limit || elapsed < 6*time.Millisecond {
			t.Errorf("6 failed dials took %v, want 6ms..%v", elapsed, limit)
		}
		if st := d.Stats(); st.ConnectErrors != 6 || st.Connects != 1 || st.Acked != 3 {
			t.Errorf("stats %v", st)
		}
	})
}

// TestDeviceStallDetected: the broker stops answering; after AckTimeout the
// device gives up on the connection, reconnects and re-sends.
func TestDeviceStallDetected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &fakeBroker{ackPerConn: 5, stall: true}
		d := newFakeDevice(t, b, DeviceConfig{QoS: 1, Count: 12, Window: 2, AckTimeout: 3 * time.Second})
		start := time.Now()
		if err := d.Run(t.Context(), start.Add(time.Minute), start.Add(2*time.Minute)); err != nil {
			t.Fatal(err)
		}
		checkRetransmits(t, d, b, 12)
		st := d.Stats()
		if st.Cuts != 2 {
			t.Errorf("want 2 stalls (after acks 5 and 10), got %v", st)
		}
		if elapsed := time.Since(start); elapsed < 6*time.Second || elapsed > 8*time.Second {
			t.Errorf("two stalls of 3s took %v", elapsed)
		}
	})
}

// TestDeviceDrainDeadline: with the broker never acknowledging, the device
// stops at the drain deadline and reports what stayed unacknowledged.
func TestDeviceDrainDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &fakeBroker{ackPerConn: 0, stall: true}
		d := newFakeDevice(t, b, DeviceConfig{QoS: 1, Count: 3, Window: 3, AckTimeout: time.Hour,
			OfflineEvery: time.Second, OfflineFor: time.Second})
		start := time.Now()
		if err := d.Run(t.Context(), start.Add(5*time.Second), start.Add(10*time.Second)); err != nil {
			t.Fatal(err)
		}
		if elapsed := time.Since(start); elapsed != 10*time.Second {
			t.Errorf("run ended after %v, want the drain deadline (10s)", elapsed)
		}
		if st := d.Stats(); st.Acked != 0 || st.Unacked != 3 || st.Sent != 3 {
			t.Errorf("stats %v", st)
		}
	})
}

// TestDeviceCancel: cancelling the context ends Run with its error.
func TestDeviceCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &fakeBroker{ackPerConn: 1 << 30}
		d := newFakeDevice(t, b, DeviceConfig{QoS: 1, Rate: 10})
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		err := d.Run(ctx, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
		// 10/s for 2s with a burst of 1: 20 or 21 readings.
		if st := d.Stats(); st.Acked < 20 || st.Acked > 21 {
			t.Errorf("stats %v", st)
		}
	})
}
