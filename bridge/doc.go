// Package bridge moves spooled messages to the upstream MQTT broker and
// upstream commands to a local sink.
//
// # What it owns
//
// The upstream connection(s) through paho.mqtt.golang (MQTT 3.1.1) or
// paho.golang (MQTT 5, see MQTT5: the message id as a user property,
// properties and remaining expiry carried, PUBACK reason codes >= 0x80
// dead-letter that one message, Receive Maximum caps the window, topic
// aliases when offered): its own
// reconnect with exponential backoff and full jitter, the in-flight window,
// resend in spool order after a cut, stall and idle-link detection,
// partitioned uplinks, payload formats (raw, envelope), pacing,
// poison-message handling and downstream subscriptions. It declares the two
// small interfaces it needs: Queue (satisfied by *spool.Spool) and Upstream
// (paho by default; tests use fakes).
//
// A nats:// upstream is a NATS JetStream stream (see JetStream): the
// message id as Nats-Msg-Id, delivered on the stream's PubAck. A failover
// list (several Brokers) is tried in order on each connect; with
// FailbackAfter a connection to a later one ends once the first is
// reachable again. Routes decide upstream retain (Options.Retain) and QoS 0
// (Options.QoS0: acked in the spool once queued).
//
// # Guarantees
//
//   - At least once (G2): a message is acked to the spool only after the
//     broker's PUBACK; every other outcome (connection lost, publish error,
//     stall, shutdown) nacks it. paho's own reconnect and resume are off;
//     each connection is a fresh paho client with CleanSession, so the
//     spool is the only record of what is unacked.
//   - Order per topic (G3), also with a window > 1: one goroutine leases
//     and publishes, publishes on one connection reach the broker in order,
//     and a cut nacks every in-flight message of that connection (in spool
//     order, back to its original position) before anything newer can be
//     published on it. A message's partition is a stable FNV hash of its
//     upstream topic, so one topic always uses one connection. Messages
//     leased before a nack completed are held back behind the nacked ones
//     of their topic (see ledger).
//   - Stable ids (G4): FormatEnvelope carries Message.ID; duplicates
//     upstream are only messages that were in flight at a cut, with the id
//     they had the first time.
//   - Bounded memory: at most Window messages in flight per partition plus
//     one leased batch. Nothing is leased while any partition is down, and a
//     partition going down ends the Lease the bridge waits in; a leased
//     message whose partition is down goes back at once. So the backlog
//     stays in the spool, and no message outlives its lease in memory (and
//     is handed out twice).
//   - Poison: only evidence about a message counts against it. The
//     messages in flight when a connection is lost become suspects and are
//     published again apart from other traffic, in groups of 1, 2, 4 … (a
//     few round trips on a link that merely dropped), a group only once the
//     broker answered a PINGREQ sent after everything before it, and each
//     suspect between two PINGREQs of its own, in one write. When a suspect
//     alone in flight loses the connection right after the broker answered
//     the PINGREQ before it (within refusalGap) and before it answered the
//     one after it, the broker read the message and closed on it (mosquitto
//     does this for a topic of more than 201 levels or a packet over
//     max_packet_size): a refusal; two dead-letter it. A loss with a suspect
//     alone in flight, neither PINGREQ answered (a TCP reset can take the
//     broker's last answers with it) and late enough that the broker could
//     have answered, is a strike; MaxAttempts strikes and refusals
//     dead-letter it. A suspect with strikes goes after a random delay, so
//     that a link that drops at a fixed time after each connect does not
//     line up with it again and again. A loss that blames a message does not
//     grow the reconnect backoff: the link is fine. Any other loss (a
//     flapping link, a broker restart, a stall) costs no message anything;
//     the spool's Attempts still counts it, for information. Evidence is
//     kept in memory: after a restart a poison message costs its few losses
//     again. Undecodable messages, invalid upstream topics and payloads over
//     MQTT's limit are dead-lettered at once.
//   - Link health: messages in flight and no PUBACK within StallTimeout, or
//     a PINGREQ unanswered for StallTimeout, is a stall: the connection is
//     dropped and re-made. A connection idle for IdlePing is sent a PINGREQ,
//     so a link that went dark while idle is found before the next message
//     waits behind it.
//   - Downstream: messages on the Downstream filters go to the sink in
//     arrival order; the upstream PUBACK is sent only after Accept returned
//     nil (paho auto-ack off). With a clean session, commands sent while
//     the link was down are not redelivered by the broker.
//
// # Concurrency
//
// Run starts one goroutine per partition (connection state machine, stall
// and ping watch), one leaser (lease, format, pace, publish), one spool
// acker (batches acks) and, per connection of partition 0, one downstream
// worker. PUBACKs are handled in the connection's receive path. Each
// partition's window, ledger and connection generation are guarded by its
// mutex; the leaser publishes under it and a cut nacks under it, so a
// publish can never slip between a cut and its nack. Stats and State are
// safe to call at any time.
//
// # Connections
//
// Brokers may be tcp:// (mqtt://), ssl:// (tls://, mqtts://) or ws:// and
// wss://. The bridge dials them itself (see dial) and owns the socket under
// paho (see bufConn): paho does CONNECT, keepalive, subscriptions and
// downstream messages, while the bridge writes its PUBLISH packets straight
// into the send buffer with its own packet ids and takes the PUBACKs out of
// the received stream before paho reads it. So a message costs no paho
// token, store entry or goroutine hand-off, and a leased batch goes out in
// one or two writes. The wrapper also reports a failed socket at once (paho
// stays silent about reads on a socket that was closed after a write error).
//
// # Caveats
//
// Keep StallTimeout below the spool's LeaseTimeout, or a slow PUBACK may
// also come back from the spool as an expired lease. One partition being
// down holds back all partitions (the spool hands out messages in one
// order; skipping a partition's messages would reorder them). Idle pings
// cost a few hundred bytes a minute on a metered link; IdlePing < 0 turns
// them off.
package bridge
