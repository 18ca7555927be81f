package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// partition is one upstream connection and the messages in flight on it.
//
// Lock order: partition.mu, then nothing of ours. The leaser holds mu while
// it checks returned and calls Conn.Publish, the waiter while it pops acked
// messages, the cut while it nacks and fills returned; so a cut and a
// publish never interleave.
type partition struct {
	b        *Bridge
	idx      int
	clientID string

	changed chan struct{} // cap 1: in-flight shrank or the connection changed (leaser waits on it)
	pub     chan struct{} // cap 1: a message went in flight (waiter waits on it)

	mu       sync.Mutex
	conn     Conn // nil unless up
	inflight []*flight
	// returned are ids per topic that went back to the spool (cut or
	// nack) and were not leased again yet. A newer message of that topic
	// must not be published before them: it is nacked instead.
	returned map[string][]uint64
	suspects int // in-flight messages published stop-and-wait
	// heads are ids that were the oldest unacked message when a connection
	// died: the likely cause if the broker dropped us for a message. They
	// are published alone (stop-and-wait) until acked or dead-lettered.
	heads map[uint64]struct{}
	state LinkState
	since time.Time
	stats PartitionStats
}

type flight struct {
	id      uint64
	topic   string
	tok     Token
	sent    time.Time
	suspect bool
}

func (p *partition) setState(s LinkState) {
	if p.state != s {
		p.state, p.since = s, p.b.o.Now()
	}
}

func (p *partition) setErr(err error) {
	p.stats.LastError, p.stats.LastErrorAt = err.Error(), p.b.o.Now()
}

// run is the connection state machine: connecting → up → (lost | stalled)
// → backoff → connecting …, until ctx is done.
func (p *partition) run(ctx context.Context) {
	o := &p.b.o
	log := p.b.log.With("client_id", p.clientID)
	bo := backoff{base: o.BackoffBase, max: o.BackoffMax}
	for ctx.Err() == nil {
		p.mu.Lock()
		p.setState(StateConnecting)
		p.mu.Unlock()

		var ds *downstream
		cfg := ConnConfig{Partition: p.idx, ClientID: p.clientID}
		if p.idx == 0 && len(o.Downstream) > 0 {
			ds = newDownstream(p.b, p.clientID)
			cfg.Subscriptions, cfg.OnMessage = o.Downstream, ds.push
		}
		cctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
		conn, err := p.b.up.Connect(cctx, cfg)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.next()
			p.mu.Lock()
			p.stats.Failures++
			p.setErr(err)
			p.setState(StateBackoff)
			p.mu.Unlock()
			log.Warn("upstream connect failed", "err", err, "retry_in", d)
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		upAt := time.Now()
		p.mu.Lock()
		p.conn = conn
		if p.stats.Connects > 0 {
			p.stats.Reconnects++
		}
		p.stats.Connects++
		p.setState(StateUp)
		p.mu.Unlock()
		signal(p.changed)
		signal(p.b.wake)
		log.Info("upstream connected")

		var dsDone chan struct{}
		if ds != nil {
			dsDone = make(chan struct{})
			go func() { defer close(dsDone); ds.run(ctx, conn) }()
		}
		cause := p.serve(ctx, conn)
		conn.Close()
		p.cut(ctx, cause)
		if dsDone != nil {
			<-dsDone
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(upAt) >= o.StableAfter {
			bo.reset()
		}
		d := bo.next()
		log.Warn("upstream connection lost", "err", cause, "retry_in", d)
		p.mu.Lock()
		p.setState(StateBackoff)
		p.mu.Unlock()
		if !sleep(ctx, d) {
			return
		}
	}
}

// serve follows the acks of the in-flight messages, oldest first (MQTT
// 3.1.1 §4.6: PUBACKs come in publish order), until the connection is lost,
// a publish fails, acks stop advancing for StallTimeout while messages are
// in flight, or ctx is done. It returns the cause.
func (p *partition) serve(ctx context.Context, conn Conn) error {
	stall := p.b.o.StallTimeout
	timer := time.NewTimer(stall)
	defer timer.Stop()
	lastAck := time.Now()
	for {
		p.mu.Lock()
		var head *flight
		if len(p.inflight) > 0 {
			head = p.inflight[0]
		}
		p.mu.Unlock()
		if head == nil {
			select {
			case <-p.pub:
				continue
			case <-conn.Lost():
				return lostErr(conn)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		start := lastAck
		if head.sent.After(start) {
			start = head.sent
		}
		timer.Reset(time.Until(start.Add(stall)))
		select {
		case <-head.tok.Done():
			if err := head.tok.Error(); err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			lastAck = time.Now()
			p.acked()
		case <-conn.Lost():
			return lostErr(conn)
		case <-timer.C:
			p.mu.Lock()
			p.stats.Stalls++
			p.setState(StateStalled)
			p.mu.Unlock()
			return ErrStalled
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func lostErr(c Conn) error {
	if err := c.Err(); err != nil {
		return fmt.Errorf("connection lost: %w", err)
	}
	return errors.New("connection lost")
}

// acked pops the head and every following message already acked.
func (p *partition) acked() {
	p.mu.Lock()
	n := 1
	for n < len(p.inflight) {
		f := p.inflight[n]
		select {
		case <-f.tok.Done():
			if f.tok.Error() == nil {
				n++
				continue
			}
		default:
		}
		break
	}
	ids := make([]uint64, n)
	for i, f := range p.inflight[:n] {
		ids[i] = f.id
		if f.suspect {
			p.suspects--
			delete(p.heads, f.id)
		}
		p.inflight[i] = nil
	}
	p.inflight = p.inflight[n:]
	p.stats.Acked += uint64(n)
	p.mu.Unlock()
	p.b.ack(ids)
	signal(p.changed)
	signal(p.b.wake)
}

// cut ends a connection: every message in flight on it goes back to the
// spool (in spool order, to its original position) and is remembered in
// returned, so that nothing newer of its topic is published before it comes
// back.
func (p *partition) cut(ctx context.Context, cause error) {
	p.mu.Lock()
	p.conn = nil
	ids := make([]uint64, len(p.inflight))
	for i, f := range p.inflight {
		ids[i] = f.id
		p.returnLocked(f.topic, f.id)
	}
	if len(ids) > 0 && !errors.Is(cause, context.Canceled) {
		if p.heads == nil {
			p.heads = map[uint64]struct{}{}
		}
		p.heads[ids[0]] = struct{}{}
	}
	p.inflight, p.suspects = nil, 0
	if !errors.Is(cause, context.Canceled) {
		p.setErr(cause)
	}
	if len(ids) > 0 {
		sctx, cancel := spoolCtx(ctx)
		if err := p.b.q.Nack(sctx, ids...); err != nil {
			// Their leases run out and the spool offers them again.
			p.b.log.Error("spool nack failed", "err", err, "client_id", p.clientID, "count", len(ids))
		}
		cancel()
	}
	p.mu.Unlock()
	signal(p.changed)
	signal(p.b.wake)
}

func (p *partition) returnLocked(topic string, id uint64) {
	if p.returned == nil {
		p.returned = map[string][]uint64{}
	}
	p.returned[topic] = append(p.returned[topic], id)
}

// returnIDs records ids of topic the caller is about to nack.
func (p *partition) returnIDs(topic string, ids ...uint64) {
	p.mu.Lock()
	for _, id := range ids {
		p.returnLocked(topic, id)
	}
	p.mu.Unlock()
}

// forget drops id from returned (it was leased again). Caller holds mu.
func (p *partition) forget(topic string, id uint64) {
	delete(p.heads, id) // only matters on the dead-letter path; publish checks heads first
	r := p.returned[topic]
	for i, x := range r {
		if x == id {
			r = append(r[:i], r[i+1:]...)
			break
		}
	}
	if len(r) == 0 {
		delete(p.returned, topic)
	} else {
		p.returned[topic] = r
	}
}

// blocked reports whether an older message of topic is back in the spool.
// Caller holds mu.
func (p *partition) blocked(topic string, id uint64) bool {
	for _, x := range p.returned[topic] {
		if x < id {
			return true
		}
	}
	return false
}

// publish sends it on this partition's connection, waiting for room in the
// window and, for at most StallTimeout, for the connection to be up. A
// message in heads, or leased with Attempts >= isolateAttempts, is sent
// alone and nothing follows it until it is acked, so that a poison message
// collects attempts while its neighbours do not.
// It reports ok false when the message must be nacked instead (an older one
// of its topic went back to the spool, or the partition stayed down); the
// id is then in returned. suspect tells whether it went stop-and-wait.
func (p *partition) publish(ctx context.Context, it spool.Item, topic string, payload []byte) (ok, suspect bool) {
	var downTimer <-chan time.Time
	p.mu.Lock()
	_, head := p.heads[it.ID]
	suspect = head || it.Attempts >= isolateAttempts
	p.forget(topic, it.ID)
	if head {
		p.heads[it.ID] = struct{}{} // forget dropped it
	}
	for {
		if p.blocked(topic, it.ID) {
			p.returnLocked(topic, it.ID)
			p.mu.Unlock()
			return false, suspect
		}
		n := len(p.inflight)
		if p.conn != nil && n < p.b.o.Window && (n == 0 || (!suspect && p.suspects == 0)) {
			tok := p.conn.Publish(topic, payload)
			p.inflight = append(p.inflight, &flight{id: it.ID, topic: topic, tok: tok, sent: time.Now(), suspect: suspect})
			if suspect {
				p.suspects++
			}
			p.stats.Published++
			if it.Attempts > 0 {
				p.stats.Resent++
			}
			p.mu.Unlock()
			signal(p.pub)
			return true, suspect
		}
		if p.conn == nil && downTimer == nil {
			downTimer = time.After(p.b.o.StallTimeout)
		} else if p.conn != nil {
			downTimer = nil
		}
		p.mu.Unlock()
		select {
		case <-p.changed:
		case <-downTimer:
			p.mu.Lock()
			if p.conn == nil {
				p.returnLocked(topic, it.ID)
				p.mu.Unlock()
				return false, suspect
			}
			continue
		case <-ctx.Done():
			p.mu.Lock()
			p.returnLocked(topic, it.ID)
			p.mu.Unlock()
			return false, suspect
		}
		p.mu.Lock()
	}
}

// downstream hands messages from upstream subscriptions to the sink, one at
// a time in arrival order, and PUBACKs each only after the sink accepted it.
type downstream struct {
	b        *Bridge
	clientID string
	ch       chan Incoming
	done     chan struct{}
}

func newDownstream(b *Bridge, clientID string) *downstream {
	return &downstream{b: b, clientID: clientID, ch: make(chan Incoming, 256), done: make(chan struct{})}
}

// push runs in paho's receive path. QoS 1 and 2 wait for room (the broker's
// in-flight limit bounds them, since we ack late); QoS 0 is dropped when the
// sink lags.
func (d *downstream) push(in Incoming) {
	d.b.dsReceived.Add(1)
	if in.QoS == 0 {
		select {
		case d.ch <- in:
		default:
			d.b.dsDropped.Add(1)
		}
		return
	}
	select {
	case d.ch <- in:
	case <-d.done:
	}
}

func (d *downstream) run(ctx context.Context, conn Conn) {
	defer close(d.done)
	retry := backoff{base: 100 * time.Millisecond, max: 5 * time.Second}
	for {
		var in Incoming
		select {
		case in = <-d.ch:
		case <-conn.Lost():
			return
		case <-ctx.Done():
			return
		}
		now := d.b.o.Now()
		m := &message.Message{
			ID: message.NewID(now), Topic: in.Topic, Payload: in.Payload, QoS: in.QoS, Retain: in.Retained,
			Source:     message.Source{Protocol: message.ProtoUpstream, ClientID: d.clientID},
			AcceptedAt: now,
		}
		retry.reset()
		for {
			err := d.b.o.DownstreamSink.Accept(ctx, m)
			if err == nil {
				in.Ack()
				d.b.dsAccepted.Add(1)
				break
			}
			d.b.dsRejected.Add(1)
			d.b.log.Warn("downstream sink refused a message", "err", err, "topic", in.Topic)
			select {
			case <-time.After(retry.next()):
			case <-conn.Lost():
				// Not acked: with a clean session the broker forgets it.
				return
			case <-ctx.Done():
				return
			}
		}
	}
}
