package bridge

import (
	"maps"
	"slices"
	"time"
)

// ledger is one partition's ordering and poison bookkeeping. It does no
// I/O and is not safe for concurrent use: partition.mu guards it.
//
// Order (G3): a message that went back to the spool (its connection was
// cut, or dispatch could not send it) must reach the broker before anything
// newer of its topic. The spool hands it out again before anything newer of
// its lane, so only messages leased before it went back can overtake it:
// returned remembers it, with the lease batch current when the Nack had
// completed, until a later batch begins (prune) or it is leased again (take).
//
// Poison: the messages in flight when a connection was lost become
// suspects, and are published again in groups (see next), each between two
// PINGREQs, until acknowledged. Each later loss with one suspect alone in
// flight is judged (see judge): evidence against it accumulates here until
// it is dead-lettered.
type ledger struct {
	returned map[string][]returnedID // by topic, oldest first
	suspects map[uint64]*evidence
}

type returnedID struct {
	id    uint64
	batch uint64 // the lease batch current when it was back in the spool
}

// evidence against one suspect.
type evidence struct {
	refusals int // see verdict
	strikes  int
}

// refusalGap bounds the time from the broker's answer to the PINGREQ just
// before a suspect to the loss of the connection, for the loss to be the
// broker's answer to the suspect: a broker that refuses a message closes
// right after it answered what came before (mosquitto: in the same pass),
// while a link that drops while the suspect is in flight does so at any
// time. It leaves room for the receive path to be scheduled.
const refusalGap = time.Millisecond

// maxSuspects bounds the suspects kept; a suspect the spool dropped (its
// TTL ran out, say) is never leased again, and the oldest go first.
// maxHint is how many of the messages in flight at a loss become suspects:
// the one that made the broker drop us is near the oldest unacknowledged
// (only PUBACKs the broker wrote just before it may be lost).
const (
	maxSuspects = 1024
	maxHint     = 256
)

// giveBack records that id of topic went back to the spool; batch is the
// lease batch current after the Nack completed.
func (l *ledger) giveBack(topic string, id, batch uint64) {
	if l.returned == nil {
		l.returned = map[string][]returnedID{}
	}
	l.returned[topic] = append(l.returned[topic], returnedID{id, batch})
}

// take is called when id of topic was leased again: it is no longer back in
// the spool. It returns the evidence against id if it is a suspect.
func (l *ledger) take(topic string, id uint64) *evidence {
	if r, ok := l.returned[topic]; ok {
		r = slices.DeleteFunc(r, func(x returnedID) bool { return x.id == id })
		if len(r) == 0 {
			delete(l.returned, topic)
		} else {
			l.returned[topic] = r
		}
	}
	return l.suspects[id]
}

// blocked reports whether an older message of topic is back in the spool.
func (l *ledger) blocked(topic string, id uint64) bool {
	for _, x := range l.returned[topic] {
		if x.id < id {
			return true
		}
	}
	return false
}

// prune forgets returned messages whose Nack completed before lease batch
// `batch` began: that batch and every later one hand them out before
// anything newer of their topic, or the spool has dropped them.
func (l *ledger) prune(batch uint64) {
	for topic, r := range l.returned {
		r = slices.DeleteFunc(r, func(x returnedID) bool { return x.batch < batch })
		if len(r) == 0 {
			delete(l.returned, topic)
		} else {
			l.returned[topic] = r
		}
	}
}

// suspect returns the evidence against id, making it a suspect.
func (l *ledger) suspect(id uint64) *evidence {
	if e, ok := l.suspects[id]; ok {
		return e
	}
	if l.suspects == nil {
		l.suspects = map[uint64]*evidence{}
	}
	if len(l.suspects) >= maxSuspects {
		delete(l.suspects, slices.Min(slices.Collect(maps.Keys(l.suspects))))
	}
	e := &evidence{}
	l.suspects[id] = e
	return e
}

// clear drops id: it was acknowledged or dead-lettered.
func (l *ledger) clear(id uint64) { delete(l.suspects, id) }

// verdict is what a lost connection says about the oldest message that
// was in flight on it.
type verdict uint8

const (
	// noEvidence: the link failed, or it was shut down; the message is not
	// to blame and nothing counts against it.
	noEvidence verdict = iota
	// hint: it was the oldest unacknowledged message among others: they
	// become suspects and are published again in small groups.
	hint
	// strike: alone in flight on a connection that had answered a ping
	// before it, and lost late enough that the broker could have answered
	// it, but neither PINGREQ around it was answered.
	strike
	// refusal: alone in flight, the broker answered the PINGREQ queued just
	// before it but not the one queued just after it, and dropped the
	// connection: it read the message and stopped there. Or it answered
	// both and left the message unacknowledged until the stall timeout.
	refusal
)

func (v verdict) String() string {
	return [...]string{"none", "hint", "strike", "refusal"}[v]
}

// loss describes the end of a connection, as judge needs it.
type loss struct {
	shutdown bool // the bridge is stopping
	// explicit: the upstream refuses messages explicitly (an error ack),
	// never by dropping the connection (JetStream): no loss is evidence.
	explicit bool
	planned  bool // the bridge ended the connection on purpose (failback)
	stalled  bool // no acks (or ping answers) within the stall timeout
	inFlight int
	alone    bool // the one message in flight is a suspect
	// before, after: the PINGREQs queued just before and just after the
	// suspect, in one write, were answered. A broker answers in order and
	// sends the two answers back to back, so a loss between them, right
	// after the first (within refusalGap), is its answer to the message.
	before, after bool
	gap           time.Duration // from the answer to before to the loss
	// gate: the PINGREQ its group waited for was answered before it was
	// sent: the link worked on this connection.
	gate      bool
	sinceSent time.Duration
	// causalMin is half the last measured round trip: a loss sooner than
	// that after the publish cannot be the broker's answer to it. 0:
	// unknown, no strike possible.
	causalMin time.Duration
}

// judge decides what a lost connection says about the message at the head
// of its window. Only evidence about that message counts against it: a
// link that drops while messages are in flight (a flapping link, a broker
// restart, a broker slow to acknowledge) costs them nothing.
func judge(l loss) verdict {
	switch {
	case l.shutdown || l.explicit || l.planned || l.inFlight == 0:
		return noEvidence
	case !l.alone:
		return hint
	case l.after:
		// The broker read past it: a loss is the link's; silence about it
		// until the stall timeout is a refusal.
		if l.stalled {
			return refusal
		}
		return noEvidence
	case l.stalled:
		return noEvidence // a dark link answers nothing
	case l.before && l.gap <= refusalGap:
		return refusal
	case l.gate && l.causalMin > 0 && l.sinceSent >= l.causalMin:
		// No answer at all: the close may have taken the broker's last
		// answers with it (a TCP reset discards what was not read yet),
		// or the link dropped. Weak: it takes MaxAttempts of these.
		return strike
	}
	return noEvidence
}
