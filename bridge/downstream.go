package bridge

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
)

// downstream hands messages from upstream subscriptions to the sink, one at
// a time in arrival order, under their local topic (see DownstreamRoute),
// and PUBACKs each only after the sink accepted it. A command not
// acknowledged when the connection is lost is sent again by the broker
// (persistent session) with DUP set.
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
		m, err := d.command(in)
		if err != nil {
			d.refuse(in, err)
			continue
		}
		if m == nil {
			d.b.dsUnrouted.Add(1)
			d.b.log.Warn("downstream command matches no route, dropped (a subscription an older configuration left in the persistent session?)", "topic", in.Topic)
			in.Ack()
			continue
		}
		retry.reset()
		for {
			err := d.b.o.DownstreamSink.Accept(ctx, m)
			if err == nil {
				in.Ack()
				d.b.dsAccepted.Add(1)
				break
			}
			if permanentRefusal(err) {
				d.refuse(in, err)
				break
			}
			d.b.dsRejected.Add(1)
			d.b.log.Warn("downstream sink refused a message", "err", err, "topic", in.Topic)
			select {
			case <-time.After(retry.next()):
			case <-conn.Lost():
				// Not acked: the persistent session sends it again.
				return
			case <-ctx.Done():
				return
			}
		}
	}
}

// permanentRefusal reports whether the sink refused a command in a way a
// retry cannot change: too large for the lane, or not a valid message.
func permanentRefusal(err error) bool {
	return errors.Is(err, message.ErrTooLarge) || errors.Is(err, message.ErrInvalidTopic)
}

// command builds the message of an upstream command: its local topic and
// expiry from the first matching route, nil when none matches, an error
// when that route maps the topic to no valid local topic. The dedupe
// key lets the sink recognise the broker's redelivery (DUP, same packet id)
// of a command it already stored but whose PUBACK was lost (a crash, a cut
// right after the commit): a first send records the key, a DUP is checked
// against it. The key holds a hash of topic and payload, because the packet
// id of a command that was never stored may name an older, acknowledged
// one.
func (d *downstream) command(in Incoming) (*message.Message, error) {
	local, ttl, ok, err := d.b.dsRoutes.lookup(in.Topic)
	if !ok || err != nil {
		return nil, err
	}
	now := d.b.o.Now()
	m := &message.Message{
		ID: message.NewID(now), Topic: local, Payload: in.Payload, QoS: max(in.QoS, 1), Retain: in.Retained,
		Source:     message.Source{Protocol: message.ProtoUpstream, ClientID: d.clientID},
		AcceptedAt: now,
	}
	if ttl > 0 {
		m.ExpiresAt = now.Add(ttl)
	}
	if in.PacketID != 0 {
		h := fnv.New64a()
		_, _ = h.Write([]byte(in.Topic))
		_, _ = h.Write([]byte{0})
		_, _ = h.Write(in.Payload)
		m.DedupeKey = fmt.Sprintf("upstream/%s/%d/%016x", d.clientID, in.PacketID, h.Sum64())
		m.DedupeRecordOnly = !in.Dup
	}
	return m, nil
}

// refuse acknowledges a command that can never be delivered and drops it:
// retrying cannot help, and the broker would send it again and again ahead
// of every later command.
func (d *downstream) refuse(in Incoming, err error) {
	d.b.dsRefused.Add(1)
	d.b.log.Error("downstream command refused for good, acknowledged upstream and dropped", "err", err, "topic", in.Topic, "bytes", len(in.Payload))
	in.Ack()
}
