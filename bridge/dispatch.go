package bridge

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// step is what happens next to one leased message on its partition.
type step uint8

const (
	stepSend   step = iota // publish it now
	stepProbe              // publish it now behind a PINGREQ: the first suspect of a group
	stepWait               // wait for acks: room in the window, or the other kind of traffic to finish
	stepReturn             // nack it: an older message of its topic is back in the spool
	stepDown               // nack it and the rest of the batch: the partition is down
)

func (s step) String() string {
	return [...]string{"send", "probe", "wait", "return", "down"}[s]
}

// slot is what decides the next step of a leased message.
type slot struct {
	up               bool // the partition is connected
	inFlight         int  // messages in flight on it
	window           int
	suspectsInFlight int  // of which suspects (see ledger)
	ramp             int  // how many suspects may be in flight together
	suspect          bool // this message is a suspect
	blocked          bool // an older message of its topic is back in the spool
}

// next is the pure part of dispatch: given the partition's window and what
// the ledger holds, what to do with a leased message now.
//
// Suspects (the messages in flight when a connection was lost) never share
// the connection with other traffic. They go in groups behind one PINGREQ,
// of one message first and twice as many after each group that was acked
// in full, so that a message that makes the broker drop the connection is
// soon alone in flight when it does (see judge), while a link that merely
// dropped costs a few round trips.
func next(s slot) step {
	switch {
	case s.blocked:
		return stepReturn
	case !s.up:
		return stepDown
	case s.inFlight >= s.window:
		return stepWait
	case !s.suspect && s.suspectsInFlight > 0:
		return stepWait
	case !s.suspect:
		return stepSend
	case s.inFlight > s.suspectsInFlight, s.suspectsInFlight >= max(s.ramp, 1):
		return stepWait
	case s.suspectsInFlight == 0:
		return stepProbe
	}
	return stepSend
}

// pubResult is what partition.publish did with a message.
type pubResult uint8

const (
	pubSent     pubResult = iota
	pubReturned           // to be nacked; recorded in the ledger
	pubDown               // to be nacked with the rest of the batch
)

// dispatch publishes a leased batch in order. A message that cannot go now
// because an older one of its topic is back in the spool is nacked (and
// recorded, so that newer ones of its topic wait too); when a partition is
// down, or the bridge stops, the rest of the batch goes back at once: no
// leased message waits for a connection (it would outlive its lease and be
// handed out twice).
func (b *Bridge) dispatch(ctx context.Context, items []spool.Item, batch uint64) {
	for _, p := range b.parts {
		p.prune(batch)
	}
	var nack []uint64
	now := time.Now()
	for i := range items {
		it := &items[i]
		if ctx.Err() != nil {
			nack = appendIDs(nack, items[i:])
			break
		}
		m, topic, payload, reason := b.prepare(it)
		if reason != "" {
			b.deadLetter(ctx, it.ID, reason)
			continue
		}
		if b.msgLim != nil || b.byteLim != nil {
			b.flush() // what is queued goes out while we wait
			if err := b.pace(ctx, len(payload)); err != nil {
				nack = appendIDs(nack, items[i:])
				break
			}
			now = time.Now()
		}
		res := b.partitionOf(topic).publish(ctx, it, m, topic, payload, now, batch)
		if res == pubReturned {
			nack = append(nack, it.ID)
		} else if res == pubDown {
			nack = appendIDs(nack, items[i:])
			break
		}
	}
	b.flush()
	if len(nack) > 0 {
		sctx, cancel := spoolCtx(ctx)
		defer cancel()
		if err := b.q.Nack(sctx, nack...); err != nil {
			b.log.Warn("spool nack failed", "err", err, "count", len(nack))
		}
	}
}

func appendIDs(dst []uint64, items []spool.Item) []uint64 {
	for _, it := range items {
		dst = append(dst, it.ID)
	}
	return dst
}

// prepare decodes a leased message into its upstream topic and payload, or
// says why it must be dead-lettered. The payload is valid until the next
// prepare. Only the leaser calls it. it.Data is the Item's own copy of the
// record, read by nothing after this, so the message takes it over.
func (b *Bridge) prepare(it *spool.Item) (m *message.Message, topic string, payload []byte, deadReason string) {
	m, err := message.DecodeOwned(it.Data)
	if err != nil {
		return nil, "", nil, "undecodable: " + err.Error()
	}
	topic = m.UpstreamTopic
	if topic == "" {
		topic = m.Topic
	}
	if err := message.ValidateTopic(topic); err != nil {
		return nil, "", nil, "invalid upstream topic: " + err.Error()
	}
	payload = m.Payload
	if b.o.Format == FormatEnvelope {
		// Reused: Conn.Publish copies the payload.
		b.envBuf = appendEnvelope(b.envBuf[:0], m, b.o.GatewayID)
		payload = b.envBuf
	}
	if len(payload)+len(topic)+4 > message.MaxPayloadSize {
		return nil, "", nil, fmt.Sprintf("too large for MQTT: %d bytes", len(payload))
	}
	return m, topic, payload, ""
}

// flush starts sending what dispatch queued on every partition.
func (b *Bridge) flush() {
	for _, p := range b.parts {
		p.flush()
	}
}
