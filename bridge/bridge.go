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
	Partition int
	ClientID  string
	State     LinkState
	Since     time.Time // when State was entered
	InFlight  int
	// Window is the in-flight limit of the current (or last) connection:
	// Options.Window, or the server's Receive Maximum if lower (MQTT 5).
	Window     int
	Published  uint64 // publishes, resends included
	Acked      uint64 // PUBACKs received
	Resent     uint64 // publishes of messages that had failed before (Attempts > 0)
	Connects   uint64 // successful connections
	Reconnects uint64 // successful connections after the first
	Failures   uint64 // failed connection attempts
	Stalls     uint64
	// Probes are PINGREQs the bridge sent to check the link (on connect,
	// when idle, and before each isolated message).
	Probes uint64
	// Isolated counts publishes of a suspect: alone, behind a PINGREQ,
	// because it was the oldest unacknowledged message when a connection
	// was lost (see doc.go, Poison).
	Isolated uint64
	// Rejected counts messages the upstream refused one by one (an MQTT 5
	// PUBACK reason code >= 0x80): dead-lettered, the link kept.
	Rejected    uint64
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
	Isolated     uint64
	Rejected     uint64 // refused by the upstream one by one (and dead-lettered)
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
	DownstreamUnrouted uint64 // commands no downstream route matched (acked, dropped)
	DownstreamRefused  uint64 // commands the sink can never take (too large, invalid): acked, dropped, logged

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
	envBuf          []byte // the leaser's envelope buffer

	// batch counts Lease calls; see ledger.prune.
	batch atomic.Uint64
	// leaseMu guards leaseCancel: it ends the Lease in progress when a
	// partition goes down, so that nothing is leased while the link is.
	leaseMu     sync.Mutex
	leaseCancel context.CancelFunc

	ackMu      sync.Mutex
	ackPending []uint64
	deadQueue  []deadLetter // refused upstream; dead-lettered by the ack loop
	ackSig     chan struct{}

	running        atomic.Bool
	deadLettered   atomic.Uint64
	spoolAckErrors atomic.Uint64
	dsReceived     atomic.Uint64
	dsAccepted     atomic.Uint64
	dsRejected     atomic.Uint64
	dsDropped      atomic.Uint64
	dsUnrouted     atomic.Uint64
	dsRefused      atomic.Uint64
	dsRoutes       downstreamRoutes
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
	if b.up == nil && IsJetStream(o.Brokers) {
		b.up = &JetStream{Servers: o.Brokers, TLS: o.TLS, Username: o.Username, Password: o.Password,
			KeepAlive: o.KeepAlive, ConnectTimeout: o.ConnectTimeout, SubjectPrefix: o.JetStream.SubjectPrefix,
			Stream: o.JetStream.Stream, AckTimeout: o.StallTimeout}
	}
	if b.up == nil && o.Protocol == 5 {
		b.up = &MQTT5{Brokers: o.Brokers, TLS: o.TLS, Username: o.Username, Password: o.Password,
			KeepAlive: o.KeepAlive, ConnectTimeout: o.ConnectTimeout, Envelope: o.Format == FormatEnvelope, Retain: o.Retain}
	}
	if b.up == nil {
		b.up = &Paho{Brokers: o.Brokers, TLS: o.TLS, Username: o.Username, Password: o.Password,
			KeepAlive: o.KeepAlive, ConnectTimeout: o.ConnectTimeout, Retain: o.Retain}
	}
	if b.dsRoutes, err = compileRoutes(o.Downstream); err != nil {
		return nil, fmt.Errorf("bridge: invalid options: %w", err)
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
		DownstreamUnrouted: b.dsUnrouted.Load(),
		DownstreamRefused:  b.dsRefused.Load(),
	}
	first := true
	for _, p := range b.parts {
		p.mu.Lock()
		ps := p.stats
		ps.Partition, ps.ClientID, ps.State, ps.Since, ps.InFlight, ps.Window = p.idx, p.clientID, p.state, p.since, p.win.len(), p.window
		p.mu.Unlock()
		s.Partitions = append(s.Partitions, ps)
		s.Published += ps.Published
		s.Acked += ps.Acked
		s.Resent += ps.Resent
		s.Reconnects += ps.Reconnects
		s.Stalls += ps.Stalls
		s.Isolated += ps.Isolated
		s.Rejected += ps.Rejected
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
// while every partition is connected, and a partition going down ends the
// Lease it is waiting in: nothing waits in memory for a connection.
func (b *Bridge) leaseLoop(ctx context.Context) {
	errDelay := backoff{base: 100 * time.Millisecond, max: 5 * time.Second}
	for ctx.Err() == nil {
		lctx, cancel := context.WithCancel(ctx)
		b.leaseMu.Lock()
		b.leaseCancel = cancel
		b.leaseMu.Unlock()
		// room is read after leaseCancel is set: a partition that goes
		// down from here on cancels lctx.
		n := b.room()
		var items []spool.Item
		var err error
		var batch uint64
		if n > 0 {
			batch = b.batch.Add(1)
			items, err = b.q.Lease(lctx, n)
		}
		b.leaseMu.Lock()
		b.leaseCancel = nil
		b.leaseMu.Unlock()
		linkDown := lctx.Err() != nil
		cancel()
		switch {
		case ctx.Err() != nil:
			if len(items) > 0 {
				b.nackAll(ctx, items)
			}
			return
		case n == 0:
			select {
			case <-b.wake:
			case <-ctx.Done():
			}
			continue
		case err != nil && linkDown:
			continue // a partition went down while we waited
		case err != nil:
			b.log.Warn("spool lease failed", "err", err)
			if !sleep(ctx, errDelay.next()) {
				return
			}
			continue
		}
		errDelay.reset()
		b.dispatch(ctx, items, batch)
	}
}

func (b *Bridge) nackAll(ctx context.Context, items []spool.Item) {
	sctx, cancel := spoolCtx(ctx)
	defer cancel()
	if err := b.q.Nack(sctx, appendIDs(nil, items)...); err != nil {
		b.log.Warn("spool nack failed", "err", err, "count", len(items))
	}
}

// linkDown ends the Lease the leaser is waiting in, if any: a partition
// went down.
func (b *Bridge) linkDown() {
	b.leaseMu.Lock()
	if b.leaseCancel != nil {
		b.leaseCancel()
	}
	b.leaseMu.Unlock()
}

// room returns how many messages to lease; 0: wait.
func (b *Bridge) room() int {
	free := 0
	for _, p := range b.parts {
		p.mu.Lock()
		if p.conn == nil {
			p.mu.Unlock()
			return 0
		}
		free += p.window - p.win.len()
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

// deadLetter is a message to dead-letter, and why.
type deadLetter struct {
	id     uint64
	reason string
}

// deadLetterLater hands messages the upstream refused to the ack loop,
// which dead-letters them (the receive path must not wait for the spool).
func (b *Bridge) deadLetterLater(d []deadLetter) {
	b.ackMu.Lock()
	b.deadQueue = append(b.deadQueue, d...)
	b.ackMu.Unlock()
	signal(b.ackSig)
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
		ids, dead := b.ackPending, b.deadQueue
		b.ackPending, b.deadQueue = nil, nil
		b.ackMu.Unlock()
		for _, d := range dead {
			b.deadLetter(context.Background(), d.id, d.reason)
		}
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
