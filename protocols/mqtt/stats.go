package mqtt

import "sync/atomic"

// Reason says why a connection was refused or a message or packet was
// rejected. Its String is the metric label value.
type Reason uint8

// Reasons.
const (
	ReasonFull          Reason = iota // the Sink is full (message.ErrFull)
	ReasonQuota                       // per-client rate, connection cap, message.ErrQuotaExceeded
	ReasonTooLarge                    // packet over MaxPacketSize, message.ErrTooLarge, too many properties
	ReasonInvalidTopic                // topic too long, too deep, $SYS, wildcards, bad UTF-8
	ReasonNotAuthorized               // credentials, publish ACL, will ACL
	ReasonShuttingDown                // the server or the Sink is stopping
	ReasonTimeout                     // Sink.Accept did not answer within the bounded wait
	ReasonExpired                     // message.ErrExpired
	ReasonMalformed                   // a malformed packet or protocol violation closed the connection
	ReasonInternal                    // any other Sink error
	NumReasons
)

var reasonNames = [NumReasons]string{
	"full", "quota", "too_large", "invalid_topic", "not_authorized",
	"shutting_down", "timeout", "expired", "malformed", "internal",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Stats is a snapshot of the server's counters since New. Duplicates are
// counted by the spool, not here (the Sink accepts them).
type Stats struct {
	ClientsConnected int64              // now
	Connections      uint64             // sessions established (CONNACK success)
	Refused          [NumReasons]uint64 // connections refused at CONNECT, by reason
	Accepted         [3]uint64          // messages the Sink accepted, by QoS
	Wills            uint64             // wills the Sink accepted (not in Accepted)
	LocalOnly        uint64             // messages delivered locally without the Sink (LocalOnly routes, QoS 0 drop policy)
	Rejected         [NumReasons]uint64 // messages and packets refused, by reason
	SubscribeDenied  uint64             // subscription filters refused by the ACL
	SubscriberDrops  uint64             // messages mochi dropped because a local subscriber's queue was full
	Injected         uint64             // messages delivered through PublishLocal
}

type counters struct {
	connections     atomic.Uint64
	refused         [NumReasons]atomic.Uint64
	accepted        [3]atomic.Uint64
	wills           atomic.Uint64
	localOnly       atomic.Uint64
	rejected        [NumReasons]atomic.Uint64
	subscribeDenied atomic.Uint64
	subscriberDrops atomic.Uint64
	injected        atomic.Uint64
}

func (c *counters) snapshot() Stats {
	s := Stats{
		Connections:     c.connections.Load(),
		Wills:           c.wills.Load(),
		LocalOnly:       c.localOnly.Load(),
		SubscribeDenied: c.subscribeDenied.Load(),
		SubscriberDrops: c.subscriberDrops.Load(),
		Injected:        c.injected.Load(),
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
