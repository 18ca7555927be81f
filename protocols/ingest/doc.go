// Package ingest is the one way a device's message takes into Ferry, shared
// by MQTT and STOMP: route, apply, local-only, submit to the Sink in the
// connection's order, wait for the ordered result, classify it into one
// Reason vocabulary, and fan the message out to local subscribers after the
// commit. The protocols keep only their wire answers (reason codes, ERROR
// frames); everything a message goes through between the parser and the
// answer is here, once.
//
// # Streams and order
//
// Each connection opens a Stream. Stream.Submit hands a message to the Sink
// at once (message.OrderedSink: messages submitted one after another are
// stored in that order) and returns without waiting for durability; the
// Stream's own goroutine waits for the results in submission order and calls
// the protocol's answer function for each, so acknowledgements leave in the
// order the device sent its messages, each after its own commit (G1), while
// many are in flight (a pipelining device shares group commits with itself).
//
// When a message fails for a reason that is not about the message itself
// (full, timeout, shutting down, an internal error), every later message of
// the Stream that is still in flight is cancelled: the spool withdraws a Put
// whose context ended before it was stored, so no later message of the
// device can be stored ahead of the one it will send again (G3). Refusals
// that are about the message (ACL, invalid topic, too large) fail that
// message only.
//
// A Stream is bounded (depth): Submit blocks while depth messages are
// pending, so one connection cannot fill memory; MQTT 3.1.1 clients are
// simply not read meanwhile, MQTT 5 clients are told the bound as Receive
// Maximum.
//
// # Fan-out
//
// A message reaches local subscribers only after it was committed (or at
// once for local-only routes, still in the Stream's order), through every
// message.LocalPublisher added with AddLocal (the MQTT and the STOMP server),
// in the Stream's goroutine: never on the connection's read path, so a slow
// local subscriber cannot slow a publisher down (the publishers' writes
// themselves never block, see the protocols).
//
// # QoS 0 and the link
//
// A route with message.QoS0Drop delivers QoS 0 messages locally only while
// no link of its upstreams is up (Options.LinkUp, asked with the topic);
// while one is up they go to the Sink like the others (which may leave out
// the upstreams whose link is down: the gateway's does).
//
// The package imports only protocols/message and the standard library.
package ingest
