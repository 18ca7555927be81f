package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spoolsink"
)

// The downstream lane: commands from upstream (bridge.downstream) are
// committed to a spool of their own before the bridge acknowledges them
// upstream, and a dispatcher delivers them from there to local
// subscribers.
//
// Why a second spool.Spool in its own file rather than a lane of the main
// spool: the main spool's lanes are the bridge's queue (it leases from every
// lane, and its caps, overflow policy, eviction, replay and admin commands
// are about messages going up); a command mixed in would be sent upstream,
// counted in the uplink's depth and evicted by its policy. A second
// instance is the same code with the same durability (synced commits, group
// commit, salvage of a damaged file) and its own small cap, and the two
// never contend for one writer. The cost, one more fsync'd commit per
// command (and one per delivery), is nothing at the rate commands come.
//
// Delivery: a command goes to the local MQTT broker at QoS 1 and to the
// STOMP subscribers, and leaves the lane once handed over. A command no
// connected MQTT client or STOMP subscription matches stays in the lane, in
// order with the later commands of its topic, until one is there (a
// persistent session that was away reconnects, a device subscribes); when
// its TTL ends first it goes to the lane's DLQ with reason no_subscriber.
// Not handing it to mochi for a session that is away is deliberate: mochi
// keeps that queue in memory and resends it shuffled (see
// mqtt.Server.Subscribed), the lane keeps it on disk and in order. A command
// whose TTL ended in the lane before the dispatcher saw it (the gateway was
// down) is dead-lettered with reason expired.

// downstreamRetry is how often commands waiting for a subscriber are
// looked at again (a new subscription, a TTL that ended).
const downstreamRetry = 250 * time.Millisecond

// downstreamLeaseTimeout: the dispatcher holds the leases of waiting
// commands for as long as they wait; the spool must not hand them out again
// meanwhile (it does after this, and the dispatcher recognises them).
const downstreamLeaseTimeout = 24 * time.Hour

// reasonNoSubscriber is the DLQ reason of a command whose TTL ended while
// no local subscriber matched it.
const reasonNoSubscriber = "no_subscriber"

// localTarget is where the dispatcher delivers: the MQTT and STOMP servers.
type localTarget interface {
	Subscribed(topic string) bool
	PublishLocal(m *message.Message)
}

// downlane is the downstream lane and its dispatcher.
type downlane struct {
	sp      *spool.Spool
	sink    message.Sink
	targets []localTarget
	log     *slog.Logger
	now     func() time.Time
	kick    chan struct{}

	mu      sync.Mutex
	waiting []waitingCommand // leased, no subscriber yet, in lane order

	delivered    atomic.Uint64
	deadLettered atomic.Uint64
}

type waitingCommand struct {
	id uint64
	m  *message.Message
}

// DownstreamStats are the downstream lane's counters.
type DownstreamStats struct {
	Queued       int64  // in the lane (waiting included)
	Waiting      int    // no subscriber yet
	DLQ          int64  // in the lane's DLQ
	Delivered    uint64 // handed to local subscribers since start
	DeadLettered uint64 // no_subscriber or undecodable, since start
}

func openDownlane(cfg *config.Config, log *slog.Logger) (*downlane, error) {
	path := cfg.DownstreamSpoolPath()
	sp, err := spool.Open(path, cfg.DownstreamSpoolOptions(log.With("component", "downstream"), downstreamLeaseTimeout))
	if err != nil {
		return nil, fmt.Errorf("downstream lane: %w", err)
	}
	if rep := sp.Salvaged(); rep != nil {
		log.Warn("downstream lane was damaged and has been salvaged", "component", "downstream", "kept", rep.Kept, "lost", rep.LostText(), "damaged_file", rep.Damaged)
	}
	d := &downlane{sp: sp, log: log.With("component", "downstream"), now: time.Now, kick: make(chan struct{}, 1)}
	d.sink = spoolsink.New(sp, spoolsink.Options{})
	return d, nil
}

// Accept commits a command to the lane (the bridge acknowledges it upstream
// when this returns nil) and wakes the dispatcher.
func (d *downlane) Accept(ctx context.Context, m *message.Message) error {
	if err := d.sink.Accept(ctx, m); err != nil {
		return err
	}
	select {
	case d.kick <- struct{}{}:
	default:
	}
	return nil
}

// run delivers until ctx is done. Leases it holds come back at the next
// start.
func (d *downlane) run(ctx context.Context) {
	t := time.NewTicker(downstreamRetry)
	defer t.Stop()
	for {
		more, err := d.pass(ctx)
		if errors.Is(err, spool.ErrClosed) || ctx.Err() != nil {
			return
		}
		if err != nil {
			d.log.Error("downstream delivery failed", "err", err)
		}
		if more && err == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		case <-t.C:
		}
	}
}

const downstreamBatch = 64

// pass leases what is new, then delivers every command whose topic has a
// subscriber, in lane order; a topic without one holds back its later
// commands too (order per topic). more: the lease was full.
func (d *downlane) pass(ctx context.Context) (more bool, err error) {
	items, err := d.sp.TryLease(downstreamBatch)
	if err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	held := make(map[uint64]bool, len(d.waiting))
	for _, w := range d.waiting {
		held[w.id] = true
	}
	for _, it := range items {
		if held[it.ID] {
			continue // its lease ran out while it waited: the same command
		}
		m, derr := message.Decode(it.Data)
		if derr != nil {
			if err := d.sp.DeadLetter(ctx, it.ID, "undecodable: "+derr.Error()); err != nil {
				return false, err
			}
			d.deadLettered.Add(1)
			continue
		}
		d.waiting = append(d.waiting, waitingCommand{id: it.ID, m: m})
	}
	now := d.now()
	blocked := map[string]bool{}
	var done []uint64
	kept := d.waiting[:0]
	for _, w := range d.waiting {
		if blocked[w.m.Topic] {
			kept = append(kept, w)
			continue
		}
		if d.subscribed(w.m.Topic) {
			if !w.m.ExpiresAt.IsZero() && !now.Before(w.m.ExpiresAt) {
				// Too late to deliver; the spool's own expiry would
				// have caught it had it not been leased.
				if err := d.sp.DeadLetter(ctx, w.id, "expired"); err != nil {
					return false, err
				}
				d.deadLettered.Add(1)
				continue
			}
			for _, t := range d.targets {
				t.PublishLocal(w.m)
			}
			d.log.Debug("command delivered", "topic", w.m.Topic, "msg_id", w.m.ID)
			done = append(done, w.id)
			continue
		}
		if !w.m.ExpiresAt.IsZero() && !now.Before(w.m.ExpiresAt) {
			if err := d.sp.DeadLetter(ctx, w.id, reasonNoSubscriber); err != nil {
				return false, err
			}
			d.deadLettered.Add(1)
			d.log.Warn("command dead-lettered: no local subscriber before its ttl ended", "topic", w.m.Topic, "msg_id", w.m.ID)
			continue
		}
		blocked[w.m.Topic] = true
		kept = append(kept, w)
	}
	clear(d.waiting[len(kept):])
	d.waiting = kept
	if len(done) > 0 {
		if err := d.sp.Ack(ctx, done...); err != nil {
			return false, err
		}
		d.delivered.Add(uint64(len(done)))
	}
	return len(items) == downstreamBatch, nil
}

func (d *downlane) subscribed(topic string) bool {
	for _, t := range d.targets {
		if t.Subscribed(topic) {
			return true
		}
	}
	return false
}

func (d *downlane) stats() DownstreamStats {
	s := d.sp.Stats()
	d.mu.Lock()
	w := len(d.waiting)
	d.mu.Unlock()
	return DownstreamStats{Queued: s.Messages, Waiting: w, DLQ: s.DLQMessages, Delivered: d.delivered.Load(), DeadLettered: d.deadLettered.Load()}
}
