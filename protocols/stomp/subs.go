package stomp

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
)

type ackMode uint8

const (
	ackAuto ackMode = iota
	ackClient
	ackClientIndividual
)

func (a ackMode) String() string {
	switch a {
	case ackClient:
		return "client"
	case ackClientIndividual:
		return "client-individual"
	}
	return "auto"
}

// delivery is one message on its way to one subscription.
type delivery struct {
	m        *message.Message
	attempts int // NACKs so far
	sub      *subscription
	ackID    string // set when written
}

// subscription is one SUBSCRIBE of one connection. Its queues are guarded by
// the connection's mu.
type subscription struct {
	c      *conn
	id     string
	dest   string
	filter string
	kind   message.DestKind
	ack    ackMode

	queue   []*delivery // waiting to be written
	unacked []*delivery // written, waiting for ACK/NACK (client modes)
	held    int64       // bytes of queue and unacked (deliverySize)
	removed bool
}

// group is the set of /queue subscriptions with the same destination: its
// members compete, each message goes to one of them.
type group struct {
	filter  string
	members []*subscription
	next    atomic.Uint32
}

// registry holds every subscription of the server. Lock order: registry.mu
// before conn.mu.
type registry struct {
	mu     sync.RWMutex
	topics []*subscription
	groups map[string]*group
}

func (r *registry) add(sub *subscription) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sub.kind == message.DestTopic {
		r.topics = append(r.topics, sub)
		return
	}
	g := r.groups[sub.filter]
	if g == nil {
		g = &group{filter: sub.filter}
		r.groups[sub.filter] = g
	}
	g.members = append(g.members, sub)
}

func (r *registry) remove(sub *subscription) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sub.kind == message.DestTopic {
		r.topics = without(r.topics, sub)
		return
	}
	if g := r.groups[sub.filter]; g != nil {
		// Copy on remove: fan-out may hold the old slice under RLock only
		// as long as we wait for the write lock, so in-place is fine too,
		// but a fresh slice keeps the invariant obvious.
		g.members = without(g.members, sub)
		if len(g.members) == 0 {
			delete(r.groups, sub.filter)
		}
	}
}

func without(subs []*subscription, sub *subscription) []*subscription {
	out := make([]*subscription, 0, len(subs))
	for _, s := range subs {
		if s != sub {
			out = append(out, s)
		}
	}
	return out
}

// PublishLocal delivers m to the local STOMP subscribers whose destination
// matches m.Topic: every matching /topic subscription gets it, and each
// matching /queue destination (the group of subscriptions with that
// destination) gets it once, on one member chosen round-robin among those
// with room. m never goes to the Sink. PublishLocal does not block on slow
// subscribers: a full subscription queue drops the message for that
// subscriber and counts it in Stats.LocalDrops. m must not be modified
// afterwards; it is shared by all receivers.
func (s *Server) PublishLocal(m *message.Message) {
	s.fanOut(m)
}

func (s *Server) fanOut(m *message.Message) {
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	for _, sub := range s.reg.topics {
		if message.Match(sub.filter, m.Topic) {
			s.offer(sub, &delivery{m: m})
		}
	}
	for _, g := range s.reg.groups {
		if message.Match(g.filter, m.Topic) {
			s.offerGroup(g, &delivery{m: m}, nil)
		}
	}
}

// offer queues d for sub or counts a drop. A subscriber whose queue is full
// loses a QoS 0 message; for a QoS 1/2 one it is disconnected as a slow
// consumer (counted), rather than silently missing what it subscribed to.
// Callers hold reg.mu (R).
func (s *Server) offer(sub *subscription, d *delivery) {
	if !sub.c.enqueue(sub, d) {
		s.dropped(d, "subscription queue full", sub)
		if d.m.QoS > 0 {
			sub.c.slowConsumer()
		}
	}
}

// offerGroup gives d to one member of g with room, trying avoid last. Callers
// hold reg.mu (R).
func (s *Server) offerGroup(g *group, d *delivery, avoid *subscription) {
	n := uint32(len(g.members))
	if n == 0 {
		s.dropped(d, "no subscriber", nil)
		return
	}
	start := g.next.Add(1)
	for i := range n {
		sub := g.members[(start+i)%n]
		if sub != avoid && sub.c.enqueue(sub, d) {
			return
		}
	}
	if avoid != nil && !avoid.removed && avoid.c.enqueue(avoid, d) {
		return
	}
	s.dropped(d, "every subscriber's queue is full", nil)
}

// dropped counts a local drop and logs it at most once a second.
func (s *Server) dropped(d *delivery, why string, sub *subscription) {
	s.c.drops.Add(1)
	now := time.Now().UnixNano()
	last := s.lastDropLog.Load()
	if now-last < int64(time.Second) || !s.lastDropLog.CompareAndSwap(last, now) {
		return
	}
	args := []any{"topic", d.m.Topic, "msg_id", d.m.ID, "reason", why, "drops_total", s.c.drops.Load()}
	if sub != nil {
		args = append(args, "client_id", sub.c.clientID, "subscription", sub.id)
	}
	s.log.Warn("local delivery dropped", args...)
}

// redeliver queues a NACKed delivery again: for a /queue subscription to
// another member of its group when there is one, for a /topic subscription
// to itself.
func (s *Server) redeliver(d *delivery) {
	d.attempts++
	if d.attempts > s.opts.MaxRedeliveries {
		s.dropped(d, "redeliveries exhausted", d.sub)
		return
	}
	s.c.redeliveries.Add(1)
	nd := &delivery{m: d.m, attempts: d.attempts}
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	if d.sub.kind == message.DestTopic {
		s.offer(d.sub, nd)
		return
	}
	if g := s.reg.groups[d.sub.filter]; g != nil {
		s.offerGroup(g, nd, d.sub)
		return
	}
	s.dropped(nd, "no subscriber", nil)
}

// release hands back what a removed subscription still held: /queue
// messages go to the other members of the group; /topic messages are
// dropped and counted.
func (s *Server) release(sub *subscription, ds []*delivery) {
	if len(ds) == 0 {
		return
	}
	if sub.kind == message.DestTopic {
		for _, d := range ds {
			s.dropped(d, "subscriber gone", sub)
		}
		return
	}
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	g := s.reg.groups[sub.filter]
	for _, d := range ds {
		nd := &delivery{m: d.m, attempts: d.attempts}
		if g == nil {
			s.dropped(nd, "subscriber gone", sub)
			continue
		}
		s.offerGroup(g, nd, nil)
	}
}

// deliverySize is what a delivery counts against SubscriptionQueueBytes.
func deliverySize(d *delivery) int64 { return int64(len(d.m.Topic) + len(d.m.Payload)) }
