// Package stomp is Ferry's STOMP 1.0/1.1/1.2 ingress: a server that takes
// SEND frames, hands them to a message.Sink, and acknowledges them with a
// RECEIPT only after the Sink made them durable (G1), and that delivers
// local messages to SUBSCRIBErs.
//
// It uses go-stomp's frame types (frame.Frame, frame.Header) and nothing
// else of go-stomp: its server acknowledges before enqueueing, serialises
// all connections through one goroutine and has no size limits, and its
// frame.Reader allocates whatever content-length claims. This package owns:
//
//   - The codec: Reader (bounded frame, header count, line and body sizes;
//     content-length is checked against the limit before anything is
//     allocated) and AppendFrame, both version-aware about header escaping
//     (1.0: none; 1.1: \n \c \\; 1.2: also \r; CONNECT, STOMP and CONNECTED
//     are never escaped). CRLF line ends are accepted in every version.
//   - Sessions: CONNECT/STOMP with accept-version negotiation (no header
//     means 1.0), login/passcode through message.Authorizer (or the user a
//     verified client certificate names, ListenerOptions.CertUsername), the
//     client-id header as the client id (%c in ACLs, the message source;
//     without it the session id ferry-N), heart-beats
//     both ways (EOLs; a peer silent for twice the negotiated interval is
//     closed), read deadlines (a frame must be complete ReadTimeout after
//     its first byte, so a half-sent frame cannot hold a connection), and
//     before the login: at most MaxPending connections (a new one closes the
//     oldest), ConnectTimeout for CONNECT and its login, and a CONNECT frame
//     of at most MaxConnectSize bytes in all, so that content-length cannot
//     make the server allocate MaxFrameSize for a client that has not
//     logged in. MaxConnections counts logged-in connections; PublishRate
//     bounds the SENDs of one connection.
//   - The ingest path: SEND -> destination mapping (message.FromSTOMP) ->
//     ingest.CheckTopic (the topic length and level caps of MQTT) ->
//     CanPublish -> Message -> the connection's ingest.Stream (route,
//     Sink, in frame order) -> RECEIPT after the commit -> local fan-out by
//     the ingest core (this server's and every other protocol's
//     subscribers).
//   - Transactions: see Guarantees; tx.go.
//   - Local delivery: SUBSCRIBE/UNSUBSCRIBE, ack auto, client (cumulative)
//     and client-individual, ACK/NACK in the 1.1 (message-id) and 1.2 (id)
//     forms, NACK redelivery, PublishLocal for messages from other
//     protocols.
//
// # Guarantees
//
//   - A RECEIPT for a SEND is written only after the Sink stored it
//     (durable). When it refuses the client gets an ERROR (message header,
//     receipt-id when the SEND asked for a receipt) and the connection is
//     closed; the client still holds the message.
//   - Receipts and errors of one connection go out in frame order, even
//     though up to MaxPipelined SENDs of that connection are in flight
//     (so one busy connection profits from the spool's group commit). A
//     DISCONNECT receipt follows every earlier receipt.
//   - Order (G3): the SENDs of one connection reach the Sink in frame
//     order. With a message.OrderedSink (the spool) up to MaxPipelined of
//     them are in flight together and share group commits; a plain Sink is
//     called for one at a time. After a SEND is refused for a reason not
//     about the message itself (full, timeout), the ones in flight behind
//     it are withdrawn, not stored: the connection ends with the ERROR and
//     the client sends them again in order.
//   - Local fan-out of one connection's SENDs happens in frame order.
//   - Bad input (malformed, oversized, unknown destination, wrong
//     credentials, a protocol error) gets an ERROR frame and closes only the
//     offending connection. No input makes the server panic.
//   - Local delivery is bounded: each subscription has a queue of
//     SubscriptionQueue messages and as many unacked ones. A QoS 0 message
//     (from MQTT) that does not fit is dropped for that subscriber and
//     counted in Stats.LocalDrops (logged at most once a second); a
//     subscriber that cannot take a QoS 1/2 message (every STOMP SEND is
//     one) is disconnected as a slow consumer (Stats.SlowConsumers). Local
//     delivery never slows down ingest or other subscribers.
//   - Transactions (BEGIN, COMMIT, ABORT; SEND, ACK and NACK with a
//     transaction header): a transaction's SENDs are checked when they
//     arrive (an ERROR then, as outside a transaction) and buffered in the
//     connection, bounded per transaction and per connection in count and
//     body bytes (Options.MaxTransaction*; an ERROR names the limit). A
//     SEND's RECEIPT inside a transaction only says it was taken into it.
//     COMMIT stores them in one spool transaction, all or none, and its
//     RECEIPT is written after that commit (fsync'd), in frame order with
//     the connection's other answers; local subscribers get them after it.
//     A COMMIT the spool refuses stores none of them and gets an ERROR.
//     ACK and NACK in a transaction are applied after its COMMIT; ABORT,
//     DISCONNECT and a lost connection discard the transaction. BEGIN or
//     COMMIT/ABORT without a transaction header, a second BEGIN of an open
//     id, COMMIT/ABORT of an id that is not open and a SEND, ACK or NACK
//     naming one get an ERROR.
//
// # Destinations
//
// /topic/x (every matching subscriber gets each message) and /queue/x (the
// subscriptions with the same /queue destination form a group of
// competing consumers; the group gets each matching message once, on one
// member) name the same topic space, mapped to MQTT topics by
// message.FromSTOMP (SUBSCRIBE: message.FilterFromSTOMP): a SEND to /queue/a.b is topic a/b and reaches /topic
// subscribers of a.b and MQTT subscribers of a/b too. Wildcards (* and #)
// are allowed in SUBSCRIBE only.
//
// A MESSAGE carries destination (the message's topic under the
// subscription's prefix), message-id, subscription, ack (1.2, client
// modes; the value to ACK/NACK with), content-type, content-length,
// redelivered:true after a NACK, then the message's own headers (MQTT 5
// user properties for messages from MQTT).
//
// # Metrics
//
// Stats returns atomic counters; Stats.Errors is indexed by the Reason*
// constants, whose label values are ReasonNames.
//
// # Concurrency
//
// Server methods are safe for concurrent use. Each connection has a reader
// goroutine (parses and validates frames, registers subscriptions, submits
// SENDs to the connection's ingest.Stream, whose goroutine waits for the
// commits in order) and a writer goroutine
// (the only one writing to the socket after CONNECTED: it waits for the
// oldest pending SEND, writes its RECEIPT or ERROR, MESSAGE frames and
// heart-beats). Subscriptions live in a server-wide registry (RWMutex); each
// connection's queues are guarded by that connection's mutex; lock order is
// registry, then connection. Close fails every pending SEND with
// message.ErrShuttingDown, so clients waiting for a receipt get "server
// shutting down".
package stomp
