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
//     means 1.0), login/passcode through message.Authorizer, heart-beats
//     both ways (EOLs; a peer silent for twice the negotiated interval is
//     closed), read deadlines (a frame must be complete ReadTimeout after
//     its first byte, so a half-sent frame cannot hold a connection).
//   - The ingest path: SEND -> destination mapping (message.FromSTOMP) ->
//     ValidateTopic -> CanPublish -> Message -> Router.Route(topic).Apply ->
//     Sink.Accept (not for LocalOnly routes) -> RECEIPT -> local fan-out
//     (this server's subscribers and Options.Local).
//   - Local delivery: SUBSCRIBE/UNSUBSCRIBE, ack auto, client (cumulative)
//     and client-individual, ACK/NACK in the 1.1 (message-id) and 1.2 (id)
//     forms, NACK redelivery, PublishLocal for messages from other
//     protocols.
//
// # Guarantees
//
//   - A RECEIPT for a SEND is written only after Sink.Accept returned nil
//     for it. When Accept fails the client gets an ERROR (message header,
//     receipt-id when the SEND asked for a receipt) and the connection is
//     closed; the client still holds the message.
//   - Receipts and errors of one connection go out in frame order, even
//     though up to MaxPipelined SENDs of that connection are in flight
//     (so one busy connection profits from the spool's group commit). A
//     DISCONNECT receipt follows every earlier receipt.
//   - Order per topic (G3): the SENDs of one connection to one topic reach
//     the Sink in frame order. Concurrent Accept calls race each other, so
//     with a plain Sink the SENDs to one topic are accepted one after
//     another (those to different topics concurrently). A Sink that also
//     implements message.OrderedSink is handed every SEND in frame order by
//     the reader (Submit) and waited for concurrently: full pipelining on
//     one topic.
//   - Local fan-out of one connection's SENDs happens in frame order.
//   - Bad input (malformed, oversized, unknown destination, wrong
//     credentials, a protocol error) gets an ERROR frame and closes only the
//     offending connection. No input makes the server panic.
//   - Local delivery is best effort and bounded: each subscription has a
//     queue of SubscriptionQueue messages and as many unacked ones; a
//     message that does not fit is dropped for that subscriber and counted
//     in Stats.LocalDrops (logged at most once a second). Local delivery
//     never slows down ingest or other subscribers.
//   - Transactions (BEGIN/COMMIT/ABORT, SEND with a transaction header) are
//     not supported and answered with an ERROR.
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
// goroutine (parses and validates frames, registers subscriptions, starts
// one goroutine per SEND that calls Sink.Accept) and a writer goroutine
// (the only one writing to the socket after CONNECTED: it waits for the
// oldest pending SEND, writes its RECEIPT or ERROR, MESSAGE frames and
// heart-beats). Subscriptions live in a server-wide registry (RWMutex); each
// connection's queues are guarded by that connection's mutex; lock order is
// registry, then connection. Close cancels the context of every pending
// Accept, so clients waiting for a receipt get "server shutting down".
package stomp
