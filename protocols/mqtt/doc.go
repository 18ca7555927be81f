// Package mqtt is Ferry's MQTT ingress: an embedded mochi-mqtt v2 broker with
// one hook that authorises, limits and spools what devices publish.
//
// # What it owns
//
//   - Listeners: TCP, TLS (client-certificate checks are configured by the
//     caller in the tls.Config) and WebSocket (plain or TLS). Addresses are
//     bound in Start, so ":0" works and Addr reports the port.
//   - Authentication and ACLs through a message.Authorizer: CONNECT (including
//     the will topic), every PUBLISH, every SUBSCRIBE and every delivery. A
//     listener may name users by their verified client certificate
//     (Listener.CertUsername): such a client logs in without a password. A
//     client id belongs to the user whose session holds it: another user's
//     CONNECT with it is refused (0x85 / 3.1.1: 0x02) rather than handed
//     that session and its queued messages; a session inherited by its own
//     user is checked against the user's current rights (OnSessionEstablish).
//   - Before the login: at most MaxPending connections of all listeners
//     (a new one closes the oldest), each with ConnectTimeout for its
//     CONNECT and login, and a CONNECT of at most MaxConnectSize, refused
//     from its fixed header before mochi allocates the body (inConn). Any
//     packet must be complete ReadTimeout after its first byte, whatever
//     the keepalive. MaxKeepalive caps the keepalive a client asks for
//     (keepalive.go): MQTT 5 is told the cap as Server Keep Alive, MQTT
//     3.1.1 over it (or with 0) is refused with 0x02, as Mosquitto does.
//   - Ingest, pipelined: in mochi's OnPublish (the client's read goroutine)
//     the hook checks the publish, builds a message.Message and submits it
//     to the connection's ingest.Stream without waiting; mochi is told to
//     do nothing more with it (a packet marked ignored and QoS 0: taken in
//     hook.go; a refusal returns ErrRejectPacket, which mochi logs with a
//     copy of the packet, too dear for every message). The Stream answers
//     in the client's order, each message after its own commit: PUBACK, or
//     PUBREC with the QoS 2 flow put in mochi's inflight store so that
//     PUBREL is answered by mochi. The acknowledgement therefore leaves
//     only after the message is durable (G1), while up to MaxInflight
//     messages of one client share group commits.
//   - Limits, each with a clear answer and a counter in Stats: connections,
//     packet size, per-client publish rate, topic length and levels, topic
//     validity ($SYS, bad UTF-8, wildcards).
//   - Local fan-out, after the commit and off the publisher's path: the
//     ingest core delivers every accepted message (MQTT, STOMP, upstream
//     commands) through PublishLocal, retained when it was published
//     retained, in the publisher's name (so MQTT 5 No Local holds). Writes
//     to a client never block the writer (outConn): a subscriber that stops
//     reading is disconnected after WriteTimeout, when WriteBuffer fills, or
//     with SubscriberQueue QoS 1/2 deliveries unacknowledged (counted in
//     Stats.SlowConsumers); QoS 0 messages beyond mochi's queue are dropped
//     for it (Stats.SubscriberDrops).
//
// # Answers
//
// A message is acknowledged only when the Sink accepted it. When it did not:
//
//	                    MQTT 5 QoS 1        MQTT 5 QoS 2          MQTT 3.1.1 QoS 1/2   QoS 0
//	spool full          PUBACK 0x97         DISCONNECT 0x97       close                dropped, counted
//	rate / quota        PUBACK 0x97         DISCONNECT 0x97       close                dropped, counted
//	timeout (busy)      PUBACK 0x97         DISCONNECT 0x89       close                dropped, counted
//	ACL denies topic    PUBACK 0x87         PUBREC 0x87           close                dropped, counted
//	too large / other   PUBACK 0x83         DISCONNECT 0x95/0x83  close                dropped, counted
//	shutting down       DISCONNECT 0x8B     DISCONNECT 0x8B       close                dropped, counted
//	invalid topic       DISCONNECT 0x90     DISCONNECT 0x90       close                DISCONNECT 0x90 / close
//
// The ACL is checked in OnPublish, after a topic alias has been resolved.
// A Sink returning message.ErrNotAuthorized gets the same answers.
//
// Answers leave in the client's order. A refusal whose answer ends the
// connection waits for the answers to the client's earlier messages and
// stops the reading, so nothing sent after it is stored. After a refusal
// that is not about the message itself (full, rate, timeout, shutting
// down), the messages the client had in flight behind it are withdrawn
// (not stored) and answered as refused too: the device sends the refused
// one again, and nothing it sent after it may be stored first (G3).
//
// A 3.1.1 client cannot be told "no" in a PUBACK, so it is disconnected: it
// keeps the message and sends it again after reconnecting. A refused
// message never reaches local subscribers, of any protocol.
//
// Oversized packets are refused by mochi while reading the fixed header,
// before the body is allocated; the connection is closed (MQTT 5 clients are
// told the limit in CONNACK's Maximum Packet Size and usually refuse to send
// such packets at all). Invalid UTF-8 in a topic is a malformed packet: the
// connection is closed.
//
// # What never reaches the Sink
//
// $SYS topics and topics whose first level is $share (a client publishing
// to them is disconnected as for any invalid topic: mochi would drop them
// silently; mochi's own $SYS updates bypass OnPublish), messages injected with PublishLocal (they come
// from an inline client), routes marked LocalOnly and QoS 0 messages on
// routes with message.QoS0Drop while the upstream link is down (these two
// are delivered locally only, in order with the others).
// Duplicates are the Sink's business: it returns nil for them and the device
// gets its acknowledgement.
//
// # Wills
//
// Wills go through the ingest core in OnWillSent (not fanned out again),
// which mochi calls after it delivered the will to local subscribers; a
// will the Sink refuses is therefore counted and logged but cannot be taken
// back locally. Wills
// triggered by our own shutdown are not spooled (the Sink is being closed).
// A delayed will (MQTT 5 Will Delay Interval) of a clean-session client is
// delivered locally by mochi but never reaches OnWillSent, so it is not
// spooled. A will's topic is checked against the ACL at CONNECT: a client that may not
// publish its will topic is refused.
//
// # Concurrency
//
// mochi runs one read goroutine per client; the hook only submits there.
// Each connection's ingest.Stream has a goroutine that waits for the
// commits in order and writes the answers; writes to a socket go to that
// connection's outConn buffer and one flusher goroutine. A client with
// MaxInflight messages pending is not read until the oldest is answered
// (MQTT 5 clients are told MaxInflight as Receive Maximum and disconnected
// with 0x93 past it). Each message's wait is bounded by AcceptTimeout and by
// three quarters of the client's keepalive, so that a slow spool never
// makes a device miss its PINGRESP.
//
// MaxConnections counts established sessions; a client that reconnects
// while its old, half-open connection still counts may be refused until
// that one times out (1.5 × keepalive).
//
// Messages handed to the Sink and to the local publishers share their
// payload: receivers must not modify them.
//
// Close fails every pending message with message.ErrShuttingDown first
// (their clients get no acknowledgement), and only then calls mochi's Close
// (exactly once), which waits for the client goroutines. Stats, PublishLocal
// and Addr are safe for concurrent use.
package mqtt
