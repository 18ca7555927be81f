// Package firmwaresim simulates device firmware that publishes into Ferry
// over MQTT 3.1.1, MQTT 5 and STOMP, and verifies what arrived at the
// upstream broker.
//
// # Devices
//
// A Device publishes JSON readings (see Reading) on a topic from a template
// ("sensors/{device}/temp") at a rate with a burst (golang.org/x/time/rate),
// with an MQTT QoS (0, 1, 2) or as STOMP SENDs with a receipt. MQTT 3.1.1
// devices use paho.mqtt.golang; MQTT 5 devices a small client on
// mochi-mqtt's packet codec that sends the reading id as the user property
// "msg-id" (STOMP devices send it as a header of that name), which is
// what Ferry's property dedupe reads; a negative reason code (0x97 when the
// spool is full) counts as no ack. Like real
// firmware it keeps every message it sent until the gateway acknowledged it
// (MQTT PUBACK/PUBCOMP, STOMP RECEIPT): after a cut, a stalled ack or an
// error it reconnects with exponential backoff and full jitter and re-sends
// the unacknowledged messages, byte for byte (same id, same seq), in their
// original order before anything newer. A device can go offline on purpose
// (disconnect for OfflineFor every OfflineEvery). Each device records the
// ids the gateway acknowledged and when: an acknowledgement is a promise to
// deliver, so acknowledged ids are what the Verifier must find upstream.
// QoS 0 messages and STOMP SENDs without receipt are never acknowledged and
// never counted as lost.
//
// A Fleet runs many devices, bounded by a message count per device and by a
// duration, then gives unacknowledged messages a drain period to be resent.
// Everything is cancellable through the context.
//
// # Ids
//
// A reading's id is "<run>-<device>-<seq>" (seq zero-padded): the run id
// keeps ids unique across runs, so the gateway's dedupe window does not
// swallow a second run and the Verifier can ignore what an earlier run left
// in a spool or in a persistent upstream session.
//
// # Verifier
//
// A Verifier subscribes upstream with paho (e.g. to "sites/#") and records
// arrivals, accepting the device JSON as published (Ferry's raw format) or
// wrapped in Ferry's envelope ({"id","type","timestamp","source","headers",
// "payload"}, payload as JSON or base64 with "encoding":"base64").
// Report compares the arrivals with the acknowledged ids: lost
// (acknowledged, never arrived), duplicates (split by whether the copies
// carried the same envelope id, as bridge resends do, or different ones, as
// device retransmits without ingress dedupe do), order violations (a first
// arrival whose seq is lower than one already seen for the same device and
// topic), ack->arrival and send->arrival latency percentiles and throughput.
//
// # Proxy
//
// A Proxy is a fault-injecting TCP proxy to put between a client and its
// server: Cut (reset every open connection), Refuse (reset new ones),
// Blackhole (forward nothing, close nothing), Heal, and a latency and
// bandwidth per direction. `ferry demo` cuts the gateway's upstream link
// with it.
//
// # Concurrency
//
// Device, Fleet and Verifier methods are safe for concurrent use; Run
// blocks. Each device runs in its own goroutine, plus its client's I/O
// goroutines. The package logs through the *slog.Logger it is given (nil:
// discard) and never prints.
package firmwaresim
