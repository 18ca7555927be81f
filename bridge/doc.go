// Package bridge moves spooled messages to the upstream MQTT broker and
// upstream commands to a local sink.
//
// # What it owns
//
// The upstream connection(s) through paho.mqtt.golang (MQTT 3.1.1): its own
// reconnect with exponential backoff and full jitter, the in-flight window,
// resend in spool order after a cut, stall detection, partitioned uplinks,
// payload formats (raw, envelope), pacing, poison-message handling and
// downstream subscriptions. It declares the two small interfaces it needs:
// Queue (satisfied by *spool.Spool) and Upstream (paho by default; tests use
// fakes).
//
// # Guarantees
//
//   - At least once (G2): a message is acked to the spool only after the
//     broker's PUBACK; every other outcome (connection lost, publish error,
//     stall, shutdown) nacks it. paho's own reconnect and resume are off
//     (they complete tokens before the broker acked a resent message); each
//     connection is a fresh paho client with CleanSession and an empty
//     memory store, so the spool is the only record of what is unacked.
//   - Order per topic (G3), also with a window > 1: one goroutine leases
//     and publishes, publishes on one connection reach the broker in order,
//     and a cut nacks every in-flight message of that connection (in spool
//     order, back to its original position) before anything newer can be
//     published on it. A message's partition is a stable FNV hash of its
//     upstream topic, so one topic always uses one connection. Items leased
//     while a partition was being cut are nacked too, since they are newer.
//   - Stable ids (G4): FormatEnvelope carries Message.ID; duplicates
//     upstream are only messages that were in flight at a cut, with the id
//     they had the first time.
//   - Bounded memory: at most Window messages in flight per partition plus
//     one leased batch. Nothing is leased while any partition is down: the
//     backlog stays in the spool.
//   - Poison: a message that was the oldest unacked one when a connection
//     died, or that is leased with Attempts >= 2, is published alone
//     (stop-and-wait, leasing one at a time) until it is acked, so that
//     when a message makes the broker drop the connection (e.g. over its
//     max packet size) only that message keeps collecting attempts; leased
//     with Attempts >= MaxAttempts it is dead-lettered with a reason and
//     the queue moves on. Recovery after cuts costs one round trip per
//     such message. Undecodable messages, invalid upstream topics and
//     payloads over MQTT's limit are dead-lettered at once. Attempts also
//     grow for messages in flight at any cut, so MaxAttempts must leave
//     room for a flaky link (default 10).
//   - Link health from acks: messages in flight and no PUBACK within
//     StallTimeout (e.g. a blackholed TCP connection) is a stall: the
//     connection is dropped and re-made.
//   - Downstream: messages on the Downstream filters go to the sink in
//     arrival order; the upstream PUBACK is sent only after Accept returned
//     nil (paho auto-ack off). With a clean session, commands sent while
//     the link was down are not redelivered by the broker.
//
// # Concurrency
//
// Run starts one goroutine per partition (connection state machine and ack
// follower), one leaser (lease, format, pace, publish), one spool acker
// (batches acks) and, per connection of partition 0, one downstream
// worker. Each partition's in-flight list and connection generation are
// guarded by its mutex; the leaser checks the generation and publishes
// under it, and a cut nacks under it, so a publish can never slip between
// a cut and its nack. Stats and State are safe to call at any time.
//
// # Connections
//
// Brokers may be tcp:// (mqtt://), ssl:// (tls://, mqtts://) or ws:// and
// wss://. The bridge dials them itself (see dial) and wraps the socket so
// that reads are buffered and PUBLISH packets written while the socket is
// busy share one write: paho writes each packet with its own syscall, which
// capped a drain at about the bare-paho rate. The wrapper also reports a
// failed socket at once (paho stays silent about reads on a socket that
// was closed after a write error).
//
// # Caveats
//
// Keep StallTimeout below the spool's LeaseTimeout, or a slow PUBACK may
// also come back from the spool as an expired lease. One partition being
// down holds back all partitions (the spool hands out messages in one
// order; skipping a partition's messages would reorder them).
package bridge
