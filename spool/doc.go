// Package spool is Ferry's durable store-and-forward queue: one bbolt file,
// one writer goroutine, priority lanes, de-duplication, TTL, caps with
// overflow policies, a dead-letter queue, retention for replay, and salvage
// of damaged files. It imports nothing of Ferry's: it stores opaque bytes
// (the gateway stores message.Encode output).
//
// # Basics
//
//	s, err := spool.Open("/var/lib/ferry/spool.db", spool.Options{})
//	res, err := s.Put(ctx, spool.Entry{Priority: 2, Data: b})   // durable on return
//	items, err := s.Lease(ctx, 64)                             // highest lane first
//	err = s.Ack(ctx, ids...)                                   // upstream acknowledged
//	err = s.Nack(ctx, ids...)                                  // link cut: back to their place
//
// # Guarantees
//
//   - Ack means durable (G1): in Sync durability (the default) Put returns
//     only after the transaction holding the entry was fsync'd. Concurrent
//     Puts share one transaction (group commit), so throughput grows with
//     the number of producers while each still waits for its own fsync. In
//     Interval durability Put returns after the write and the file is
//     fsync'd every FsyncInterval: a power cut can lose that window; a
//     process crash loses nothing.
//   - A message leaves the queue only by Ack, expiry (counted), DeadLetter,
//     or an explicit drop policy (counted per reason) (G2).
//   - FIFO by id within a lane; Nack and lease expiry put a message back at
//     its original position, so a redelivery goes out before anything newer
//     of its lane (G3). Priority is chosen per route, so a topic stays in one
//     lane.
//   - Dedupe keys are indexed in the same transaction as the message and
//     survive restarts (G4).
//   - Higher lanes are leased first; while a higher lane has a backlog a
//     share (LowerLaneShare) of leases goes to lower lanes, round-robin (G5).
//   - Memory does not grow with the backlog: the queue is on disk, memory
//     holds counters and the leases in flight (G6). Disk is capped by
//     MaxBytes; bbolt's own MaxSize is set well above it so that the spool
//     reaches its own full state (ErrFull or the drop policy) first.
//   - A damaged file is salvaged at Open (G9). Before bbolt sees the file,
//     Open validates both meta pages and walks every page in use with a
//     reader that checks every offset (walk.go), and checks the CRC-32C
//     that every record carries over its key and value: bbolt trusts its
//     pages and faults (SIGBUS on a truncated file, which no recover
//     catches) or panics in a goroutine of its own on damage. On any
//     problem salvage keeps exactly the intact records, through the checked
//     tree walk and, when parts of the tree are unreadable or a meta page is
//     damaged, by scanning raw pages as well.
//
// # Concurrency
//
// All methods are safe for concurrent use. Only the writer goroutine writes
// (bbolt allows one writer); it drains whatever operations are waiting into
// one transaction and answers them in order after the commit. Lease reads
// in its own read transaction under s.mu, so leasing never waits for an
// fsync. Lock order: s.mu, then dbmu (read); the writer takes dbmu then
// s.mu only inside its own transactions, which never wait for a Lease.
// Compact takes dbmu exclusively and never s.mu.
//
// # File format (version 1)
//
// Top-level buckets; all integers big-endian; ids are uint64 from a
// persistent counter, so they never repeat in a file:
//
//	meta        magic "ferry-spool", format (8 bytes, = 1), next_id (8),
//	            counts (per-lane messages+bytes, DLQ, retained, dedupe: 25×8),
//	            clean (1 byte: 1 after Close, 0 while open)
//	lane0…lane9 id(8) → record kind 'Q'
//	expiry      expires_at(8) ‖ id(8) → lane(1)      messages with a TTL
//	dedupe      key → expires_at(8) ‖ id(8)
//	dedupe_exp  expires_at(8) ‖ key → nil              sweep order
//	dlq         id(8) → record kind 'D' (stamp: dead-lettered at, text: reason)
//	delivered   id(8) → record kind 'R' (stamp: acked at), RetainDelivered only
//
// A record is: kind(1) priority(1) attempts(4) enqueued(8) expires(8)
// stamp(8) text_len(2) text crc32c(4) data; the CRC covers the 8-byte key
// and every other byte of the record. Times are unix nanoseconds, 0 for
// none. Bytes counted against MaxBytes are len(record)+8 per entry in the
// lane, DLQ and delivered buckets. Counts live in meta/counts and change in
// the same transaction as the data, so they are exact after a crash.
//
// # Caveats
//
//   - bbolt does two fdatasyncs per commit; a single producer's rate is one
//     commit latency per message. Use more producers or Interval durability.
//   - The file never shrinks by itself; Compact rewrites it.
//   - Deletes are done by key, collected first and applied in bounded
//     batches: deleting from the head with a First() loop is quadratic.
//   - Open reads every page in use twice: once checked (see above), once by
//     bbolt rebuilding its freelist (the spool runs with NoFreelistSync);
//     after an unclean shutdown it also runs bbolt's consistency check
//     (Options.Verify).
//   - On 32-bit ARM the memory map limits the file to about 2 GB; keep
//     MaxBytes under 1 GiB there.
//   - Salvage by raw page scan can resurrect messages that were already
//     acknowledged (their old pages are still in the file): at-least-once.
//     Dedupe keys are not salvaged.
package spool
