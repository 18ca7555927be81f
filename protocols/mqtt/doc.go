// Package mqtt is Ferry's MQTT ingress: an embedded mochi-mqtt v2 broker with
// one hook that authorises, limits and spools what devices publish.
//
// # What it owns
//
//   - Listeners: TCP, TLS (client-certificate checks are configured by the
//     caller in the tls.Config) and WebSocket (plain or TLS). Addresses are
//     bound in Start, so ":0" works and Addr reports the port.
//   - Authentication and ACLs through a message.Authorizer: CONNECT (including
//     the will topic), every PUBLISH, every SUBSCRIBE and every delivery.
//   - Ingest: inside mochi's OnPublish, which runs in the client's read
//     goroutine before PUBACK/PUBREC is written, the hook builds a
//     message.Message, applies the route and calls Sink.Accept with a bounded
//     wait. The acknowledgement therefore leaves only after Accept returned
//     nil, i.e. after the message is durable (G1).
//   - Limits, each with a clear answer and a counter in Stats: connections,
//     packet size, per-client publish rate, topic length and levels, topic
//     validity ($SYS, bad UTF-8, wildcards).
//   - Local fan-out: mochi delivers to local MQTT subscribers; accepted
//     messages are also handed to Options.Local (the gateway wires it to
//     STOMP). PublishLocal injects messages from elsewhere (STOMP, upstream
//     commands) to MQTT subscribers without sending them to the Sink again.
//
// # Answers
//
// A message is acknowledged only when the Sink accepted it. When it did not:
//
//	                    MQTT 5 QoS 1        MQTT 5 QoS 2          MQTT 3.1.1 QoS 1/2   QoS 0
//	spool full          PUBACK 0x97         DISCONNECT 0x97       close                dropped, counted
//	rate / quota        PUBACK 0x97         DISCONNECT 0x97       close                dropped, counted
//	timeout (busy)      PUBACK 0x97         DISCONNECT 0x89       close                dropped, counted
//	ACL denies topic    PUBACK 0x87         PUBREC 0x87 (mochi)   DISCONNECT, close    dropped, counted
//	too large / other   PUBACK 0x83         DISCONNECT 0x95/0x83  close                dropped, counted
//	shutting down       DISCONNECT 0x8B     DISCONNECT 0x8B       close                dropped, counted
//	invalid topic       DISCONNECT 0x90     DISCONNECT 0x90       close                DISCONNECT 0x90 / close
//
// (The ACL row is mochi's own answer: it checks OnACLCheck before OnPublish.
// A Sink returning message.ErrNotAuthorized gets PUBACK 0x87 / DISCONNECT
// 0x87 / close.)
//
// A 3.1.1 client cannot be told "no" in a PUBACK, and mochi acknowledges and
// delivers a message whose hook returned a reason code to such a client, so
// the hook returns packets.ErrRejectPacket (no ack, no delivery, not
// retained) and closes the connection: the device keeps the message and
// sends it again after reconnecting. mochi answers QoS 2 with a PUBACK when a
// hook returns a reason code, so QoS 2 failures also take the
// ErrRejectPacket-and-disconnect path. A rejected message never reaches local
// subscribers, neither MQTT nor (through Options.Local) STOMP.
//
// Oversized packets are refused by mochi while reading the fixed header,
// before the body is allocated; the connection is closed (MQTT 5 clients are
// told the limit in CONNACK's Maximum Packet Size and usually refuse to send
// such packets at all). Invalid UTF-8 in a topic is a malformed packet: the
// connection is closed.
//
// # What never reaches the Sink
//
// $SYS topics (a client publishing to $SYS is disconnected; mochi's own $SYS
// updates bypass OnPublish), messages injected with PublishLocal (they come
// from the inline client), routes marked LocalOnly and QoS 0 messages on
// routes with message.QoS0Drop (these two are delivered locally only).
// Duplicates are the Sink's business: it returns nil for them and the device
// gets its acknowledgement.
//
// # Wills
//
// Wills go through the same path in OnWillSent, which mochi calls after it
// delivered the will to local subscribers; a will the Sink refuses is
// therefore counted and logged but cannot be taken back locally. Wills
// triggered by our own shutdown are not spooled (the Sink is being closed).
// A delayed will (MQTT 5 Will Delay Interval) of a clean-session client is
// delivered locally by mochi but never reaches OnWillSent, so it is not
// spooled. A will's topic is checked against the ACL at CONNECT: a client that may not
// publish its will topic is refused.
//
// # Concurrency
//
// mochi runs one read goroutine per client; OnPublish blocks that goroutine
// while Accept runs, which serialises one client's publishes: a single
// client's QoS 1 rate is about 1 / commit latency. Group commit in the spool
// helps across clients only. The wait is bounded by Options.AcceptTimeout and
// by three quarters of the client's keepalive, so that a slow spool never
// makes a device miss its PINGRESP.
//
// MaxConnections counts established sessions; a client that reconnects
// while its old, half-open connection still counts may be refused until
// that one times out (1.5 × keepalive).
//
// Messages handed to the Sink and to Options.Local share their payload with
// mochi's local delivery: receivers must not modify them.
//
// Close cancels every pending Accept with message.ErrShuttingDown first, and
// only then calls mochi's Close (exactly once), which waits for the client
// goroutines. Stats, PublishLocal and Addr are safe for concurrent use.
package mqtt
