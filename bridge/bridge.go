package bridge

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// Queue is what the bridge needs from the spool; *spool.Spool satisfies it.
// Lease must block until at least one item is available; Nack must put items
// back at their original position with Attempts+1.
type Queue interface {
	Lease(ctx context.Context, max int) ([]spool.Item, error)
	Ack(ctx context.Context, ids ...uint64) error
	Nack(ctx context.Context, ids ...uint64) error
	DeadLetter(ctx context.Context, id uint64, reason string) error
}

var _ Queue = (*spool.Spool)(nil)

// LinkState is the state of an upstream connection.
type LinkState uint8

// Link states.
const (
	StateDown       LinkState = iota // the bridge is not running
	StateConnecting                  // a connection attempt is in progress
	StateUp                          // connected; publishing
	StateBackoff                     // waiting before the next attempt
	StateStalled                     // acks stopped advancing; being reconnected
)

func (s LinkState) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateUp:
		return "up"
	case StateBackoff:
		return "backoff"
	case StateStalled:
		return "stalled"
	}
	return "down"
}

// ErrStalled is the cause recorded when messages were in flight and no
// PUBACK arrived within Options.StallTimeout.
var ErrStalled = errors.New("bridge: link stalled: no ack within the stall timeout")

// PartitionStats describe one upstream connection.
type PartitionStats struct {
	Partition   int
	ClientID    string
	State       LinkState
	Since       time.Time // when State was entered
	InFlight    int
	Published   uint64 // publishes, resends included
	Acked       uint64 // PUBACKs received
	Resent      uint64 // publishes of messages that had failed before (Attempts > 0)
	Connects    uint64 // successful connections
	Reconnects  uint64 // successful connections after the first
	Failures    uint64 // failed connection attempts
	Stalls      uint64
	LastError   string
	LastErrorAt time.Time
}

// Stats is a snapshot for metrics and the status page.
type Stats struct {
	// State is StateUp when every partition is up, else the state of the
	// first partition that is not.
	State        LinkState
	Since        time.Time
	Published    uint64
	Acked        uint64
	Resent       uint64
	Reconnects   uint64
	Stalls       uint64
	DeadLettered uint64
	InFlight     int
	LastError    string
	LastErrorAt  time.Time
	// SpoolAckErrors counts spool Acks that failed after the upstream acked
	// (those messages will be delivered again: duplicates, not loss).
	SpoolAckErrors uint64

	DownstreamReceived uint64
	DownstreamAccepted uint64
	DownstreamRejected uint64 // Sink.Accept errors (retried while connected)
	DownstreamDropped  uint64 // QoS 0 commands dropped because the sink lagged

	Partitions []PartitionStats
}

// Bridge moves messages from a Queue to the upstream broker. Create it with
// New and start it with Run.
type Bridge struct {
	q     Queue
	o     Options
	up    Upstream
	log   *slog.Logger
	parts []*partition
	wake  chan struct{} // cap 1: room or connections changed (leaser)

	msgLim, byteLim *rate.Limiter
	batchCap        int

	ackMu      sync.Mutex
	ackPending []uint64
	ackSig     chan struct{}

	running        atomic.Bool
	deadLettered   atomic.Uint64
	spoolAckErrors atomic.Uint64
	dsReceived     atomic.Uint64
	dsAccepted     atomic.Uint64
	dsRejected     atomic.Uint64
	dsDropped      atomic.Uint64
}

// New checks opts and returns a Bridge over q.
func New(q Queue, opts Options) (*Bridge, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if q == nil {
		return nil, errors.New("bridge: nil queue")
	}
	b := &Bridge{q: q, o: o, up: o.Upstream, log: o.Logger, wake: make(chan struct{}, 1), ackSig: make(chan struct{}, 1)}
	if b.up == nil {
		b.up = &Paho{Brokers: o.Brokers, TLS: o.TLS, Username: o.Username, Password: o.Password,
			KeepAlive: o.KeepAlive, ConnectTimeout: o.ConnectTimeout}
	}
	b.batchCap = 1024
	if o.MaxRate > 0 {
		b.msgLim = rate.NewLimiter(rate.Limit(o.MaxRate), max(1, int(o.MaxRate/10)))
		b.batchCap = min(b.batchCap, max(1, int(o.MaxRate/10)))
	}
	if o.MaxByteRate > 0 {
		b.byteLim = rate.NewLimiter(rate.Limit(o.MaxByteRate), max(64<<10, int(o.MaxByteRate/10)))
		b.batchCap = min(b.batchCap, max(1, int(o.MaxByteRate/10/1024)))
	}
	now := o.Now()
	for i := range o.Partitions {
		b.parts = append(b.parts, &partition{b: b, idx: i, clientID: o.clientID(i), since: now,
			changed: make(chan struct{}, 1), pub: make(chan struct{}, 1)})
	}
	return b, nil
}

// Run connects and moves messages until ctx is done, then closes the
// connections, nacks what was in flight and returns nil. Run may be called
// once.
func (b *Bridge) Run(ctx context.Context) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("bridge: Run called twice")
	}
	var wg sync.WaitGroup
	for _, p := range b.parts {
		wg.Go(func() { p.run(ctx) })
	}
	wg.Go(func() { b.leaseLoop(ctx) })
	ackStop := make(chan struct{})
	ackDone := make(chan struct{})
	go func() { defer close(ackDone); b.ackLoop(ackStop) }()
	wg.Wait()
	close(ackStop)
	<-ackDone
	for _, p := range b.parts {
		p.mu.Lock()
		p.setState(StateDown)
		p.mu.Unlock()
	}
	return nil
}

// Stats returns a snapshot.
func (b *Bridge) Stats() Stats {
	s := Stats{
		State:              StateUp,
		DeadLettered:       b.deadLettered.Load(),
		SpoolAckErrors:     b.spoolAckErrors.Load(),
		DownstreamReceived: b.dsReceived.Load(),
		DownstreamAccepted: b.dsAccepted.Load(),
		DownstreamRejected: b.dsRejected.Load(),
		DownstreamDropped:  b.dsDropped.Load(),
	}
	first := true
	for _, p := range b.parts {
		p.mu.Lock()
		ps := p.stats
		ps.Partition, ps.ClientID, ps.State, ps.Since, ps.InFlight = p.idx, p.clientID, p.state, p.since, len(p.inflight)
		p.mu.Unlock()
		s.Partitions = append(s.Partitions, ps)
		s.Published += ps.Published
		s.Acked += ps.Acked
		s.Resent += ps.Resent
		s.Reconnects += ps.Reconnects
		s.Stalls += ps.Stalls
		s.InFlight += ps.InFlight
		if ps.LastErrorAt.After(s.LastErrorAt) {
			s.LastError, s.LastErrorAt = ps.LastError, ps.LastErrorAt
		}
		if first && ps.State != StateUp {
			s.State, s.Since, first = ps.State, ps.Since, false
		}
	}
	if first && len(s.Partitions) > 0 {
		s.Since = s.Partitions[0].Since
	}
	return s
}

// State is Stats().State without the rest.
func (b *Bridge) State() LinkState { return b.Stats().State }

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// spoolCtx is for spool calls that must complete even while shutting down
// (nacks and acks of what is in memory).
func spoolCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

func (b *Bridge) partitionOf(topic string) *partition {
	if len(b.parts) == 1 {
		return b.parts[0]
	}
	h := fnv.New32a()
	h.Write([]byte(topic))
	return b.parts[h.Sum32()%uint32(len(b.parts))]
}

// leaseLoop is the only goroutine that leases and publishes. It leases only
// while every partition is connected and no stop-and-wait message is in
// flight, so nothing waits in memory for a connection.
func (b *Bridge) leaseLoop(ctx context.Context) {
	errDelay := backoff{base: 100 * time.Millisecond, max: 5 * time.Second}
	careful := false
	for ctx.Err() == nil {
		n := b.room()
		if n == 0 {
			select {
			case <-b.wake:
			case <-ctx.Done():
			}
			continue
		}
		if careful {
			// The last batch held a message that was the oldest unacked one
			// when a connection died: lease one at a time, so that messages
			// behind a poison message are not leased (and nacked with it)
			// while it is being tried alone.
			n = 1
		}
		items, err := b.q.Lease(ctx, n)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			b.log.Warn("spool lease failed", "err", err)
			if !sleep(ctx, errDelay.next()) {
				return
			}
			continue
		}
		errDelay.reset()
		careful = b.dispatch(ctx, items)
	}
}

// room returns how many messages to lease; 0: wait.
func (b *Bridge) room() int {
	free := 0
	for _, p := range b.parts {
		p.mu.Lock()
		if p.conn == nil || p.suspects > 0 {
			p.mu.Unlock()
			return 0
		}
		free += b.o.Window - len(p.inflight)
		p.mu.Unlock()
	}
	// Lease as soon as there is any room. Waiting for more room (to lease
	// in bigger batches) stops the flow of PUBLISH packets, and with a
	// broker that does not set TCP_NODELAY (mosquitto's default) its
	// PUBACKs then wait for our delayed TCP ACK: 40ms stalls, measured as a
	// 3x lower drain rate at window 64.
	if free < 1 {
		return 0
	}
	return min(free, b.batchCap)
}

// dispatch publishes leased items in order and reports whether any was
// published stop-and-wait (see partition.publish). Items that cannot go now
// (an older message of their topic is back in the spool, or their
// partition stayed down) are nacked and remembered, so that newer messages
// of the topic wait for them.
func (b *Bridge) dispatch(ctx context.Context, items []spool.Item) (suspects bool) {
	var nack []uint64
	for i, it := range items {
		m, err := message.Decode(it.Data)
		if err != nil {
			b.deadLetter(ctx, it.ID, "undecodable: "+err.Error())
			continue
		}
		topic := m.UpstreamTopic
		if topic == "" {
			topic = m.Topic
		}
		p := b.partitionOf(topic)
		if ctx.Err() != nil {
			p.returnIDs(topic, it.ID)
			nack = append(nack, it.ID)
			continue
		}
		if int(it.Attempts) >= b.o.MaxAttempts {
			p.mu.Lock()
			last := p.stats.LastError
			p.forget(topic, it.ID)
			p.mu.Unlock()
			b.deadLetter(ctx, it.ID, fmt.Sprintf("delivery failed %d times (last link error: %s)", it.Attempts, last))
			continue
		}
		if err := message.ValidateTopic(topic); err != nil {
			b.deadLetter(ctx, it.ID, "invalid upstream topic: "+err.Error())
			continue
		}
		payload := m.Payload
		if b.o.Format == FormatEnvelope {
			payload = EncodeEnvelope(m, b.o.GatewayID)
		}
		if len(payload)+len(topic)+4 > message.MaxPayloadSize {
			b.deadLetter(ctx, it.ID, fmt.Sprintf("too large for MQTT: %d bytes", len(payload)))
			continue
		}
		if err := b.pace(ctx, len(payload)); err != nil {
			for _, rest := range items[i:] {
				nack = append(nack, rest.ID)
			}
			// Remember them per topic before nacking.
			for _, rest := range items[i:] {
				if rm, err := message.Decode(rest.Data); err == nil {
					t := rm.UpstreamTopic
					if t == "" {
						t = rm.Topic
					}
					b.partitionOf(t).returnIDs(t, rest.ID)
				}
			}
			break
		}
		ok, suspect := p.publish(ctx, it, topic, payload)
		if !ok {
			nack = append(nack, it.ID)
		}
		suspects = suspects || suspect
	}
	if len(nack) > 0 {
		sctx, cancel := spoolCtx(ctx)
		defer cancel()
		if err := b.q.Nack(sctx, nack...); err != nil {
			b.log.Warn("spool nack failed", "err", err, "count", len(nack))
		}
	}
	return suspects
}

func (b *Bridge) pace(ctx context.Context, n int) error {
	if b.msgLim != nil {
		if err := b.msgLim.Wait(ctx); err != nil {
			return err
		}
	}
	if b.byteLim != nil && n > 0 {
		if err := b.byteLim.WaitN(ctx, min(n, b.byteLim.Burst())); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bridge) deadLetter(ctx context.Context, id uint64, reason string) {
	sctx, cancel := spoolCtx(ctx)
	defer cancel()
	if err := b.q.DeadLetter(sctx, id, reason); err != nil {
		// The lease runs out and the message comes back: decided again then.
		b.log.Error("spool dead-letter failed", "err", err, "msg_id", id, "reason", reason)
		return
	}
	b.deadLettered.Add(1)
	b.log.Warn("message dead-lettered", "msg_id", id, "reason", reason)
}

// ack hands ids acknowledged upstream to the ack loop, which acks them to
// the spool in batches.
func (b *Bridge) ack(ids []uint64) {
	b.ackMu.Lock()
	b.ackPending = append(b.ackPending, ids...)
	b.ackMu.Unlock()
	signal(b.ackSig)
}

func (b *Bridge) ackLoop(stop <-chan struct{}) {
	flush := func() {
		b.ackMu.Lock()
		ids := b.ackPending
		b.ackPending = nil
		b.ackMu.Unlock()
		if len(ids) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.q.Ack(ctx, ids...); err != nil {
			b.spoolAckErrors.Add(uint64(len(ids)))
			b.log.Error("spool ack failed; these messages will be sent again", "err", err, "count", len(ids))
		}
	}
	for {
		select {
		case <-b.ackSig:
			flush()
		case <-stop:
			flush()
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
