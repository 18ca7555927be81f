package mqtt

import (
	"sync/atomic"

	"github.com/ferrymq/ferry/protocols/ingest"
)

// Stats is a snapshot of the server's counters since New, indexed by
// ingest.Reason where they are per reason. Duplicates are counted by the
// spool, not here (the Sink accepts them).
type Stats struct {
	ClientsConnected int64                     // now
	Connections      uint64                    // sessions established (CONNACK success)
	Refused          [ingest.NumReasons]uint64 // connections refused at CONNECT, by reason
	Accepted         [3]uint64                 // messages the Sink stored, by QoS
	Wills            uint64                    // wills the Sink accepted (not in Accepted)
	Rejected         [ingest.NumReasons]uint64 // messages and packets refused, by reason
	SubscribeDenied  uint64                    // subscription filters refused by the ACL
	SubscriberDrops  uint64                    // messages mochi dropped because a local subscriber's queue was full
	SlowConsumers    uint64                    // clients disconnected for not taking what was written to them
	Retransmits      uint64                    // publishes sent again with a packet id that was still being stored
	PendingClosed    uint64                    // connections closed before their login because max_pending newer ones were waiting
	Injected         uint64                    // messages delivered to local MQTT subscribers through PublishLocal: the fan-out of every accepted message, of any protocol
}

type counters struct {
	connections     atomic.Uint64
	refused         [ingest.NumReasons]atomic.Uint64
	accepted        [3]atomic.Uint64
	wills           atomic.Uint64
	rejected        [ingest.NumReasons]atomic.Uint64
	subscribeDenied atomic.Uint64
	subscriberDrops atomic.Uint64
	slowConsumers   atomic.Uint64
	retransmits     atomic.Uint64
	injected        atomic.Uint64
	pendingClosed   atomic.Uint64
}

func (c *counters) snapshot() Stats {
	s := Stats{
		Connections:     c.connections.Load(),
		Wills:           c.wills.Load(),
		SubscribeDenied: c.subscribeDenied.Load(),
		SubscriberDrops: c.subscriberDrops.Load(),
		SlowConsumers:   c.slowConsumers.Load(),
		Retransmits:     c.retransmits.Load(),
		Injected:        c.injected.Load(),
		PendingClosed:   c.pendingClosed.Load(),
	}
	for i := range s.Refused {
		s.Refused[i] = c.refused[i].Load()
		s.Rejected[i] = c.rejected[i].Load()
	}
	for i := range s.Accepted {
		s.Accepted[i] = c.accepted[i].Load()
	}
	return s
}
