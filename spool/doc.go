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
//     only after the transaction holding the entry was fsync'd, and every
//     commit is fsync'd, acks included: a commit that is not lets bbolt
//     reuse, in the next one, pages of the last state that is on disk,
//     which a power cut then falls back to. A commit is bbolt's two
//     fdatasyncs, its pages and then its meta page: a power cut leaves the
//     new meta page out or torn (its checksum fails), never pointing at
//     pages that are not on disk, so a newest tree that fails Open's check
//     is damage, salvaged and reported. (One fdatasync of both together
//     made such a file look like a commit cut short, which nobody was
//     answered for, and damage to an answered last commit was lost
//     without a word: TestDamagedLastCommitIsReported.) Concurrent Puts
//     share one transaction (group commit), so throughput grows with the
//     number of producers while each still waits for its own fsync. Acks are
//     coalesced: an ack-only batch waits up to 5 ms (ackLinger) for more
//     acks or a Put to share its commit, up to 8192 ids (maxAckIDs); Ack
//     returns after its commit was fsync'd. In Interval durability Put
//     returns after the write and the file is fsync'd every FsyncInterval;
//     the writer keeps a read transaction on the last fsync'd state (the
//     pin) so that its pages are not reused before the next fsync: a power
//     cut loses at most that window (Open may then have to salvage: an
//     unsynced meta page can reach the disk before its pages); a process
//     crash loses nothing.
//   - A Put whose ctx ends while it is queued or parked (Block) is
//     withdrawn: answered with ctx's error (a parked one: ErrFull wrapping
//     it) and never stored. Under Reject, once a Put of a transaction was
//     refused, the later Puts of that transaction are refused too: a
//     producer that cancels what it sent after a refused message keeps its
//     order.
//   - PutBatch stores several entries in one transaction, all or none (a
//     STOMP transaction's COMMIT): each goes through dedupe, the caps and
//     the overflow policy; when one is refused nothing is stored and the
//     error names it (batch.go). It shares group commits like a Put.
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
//     holds counters and the leases in flight (G6); the pages of bbolt's map
//     that Open and leasing read are released (MADV_DONTNEED) after Open and
//     every 10 s. Disk is capped by MaxBytes; bbolt's own MaxSize is set well
//     above it so that the spool reaches its own full state (ErrFull or the
//     drop policy) first. A file system that fills first (ENOSPC, EDQUOT,
//     EFBIG) is the same full state (Stats.DiskFull): new messages get the
//     overflow policy's answer until a message can be stored again, acks
//     still commit, and Open warns when MaxBytes exceeds the free space.
//   - A damaged file is salvaged at Open (G9). Before bbolt sees the file,
//     Open validates both meta pages and walks every page in use with a
//     reader that checks every offset and what bbolt's own check would
//     (every page reached once, key order), and the CRC-32C that every
//     record carries over its key and value: bbolt trusts its pages and
//     faults (SIGBUS on a truncated file, which no recover catches) or
//     panics in a goroutine of its own on damage. It also recounts the
//     records against the counts and the commit record (below): a tree some
//     of whose pages are older than its meta page is well-formed but
//     damaged. On any problem salvage keeps every intact record, through the
//     checked tree walk of both meta pages and, when the tree is not all
//     there, by scanning raw pages as well (when it is all there but for
//     damaged records, the raw pages are searched for intact copies of
//     those records alone); its report (kept, lost — exact
//     or "unknown, at least N" — cause and where, and where the damaged
//     file went) is kept in the fresh file (Stats.Salvage).
//   - Any other storage failure (an I/O error, a panic inside bbolt) stops
//     the writer: everything waiting and everything after is answered
//     ErrClosed wrapping it (Err, Stats.Failure); Close returns within 10 s.
//
// # Concurrency
//
// All methods are safe for concurrent use. Only the writer goroutine writes
// (bbolt allows one writer); it drains whatever operations are waiting into
// one transaction and answers them in order after the commit. Lease reads
// in its own read transaction under s.mu, so leasing never waits for an
// fsync. Lock order: s.mu, then dbmu (read); the writer takes dbmu then
// s.mu only inside its own transactions, which never wait for a Lease.
// Compact takes dbmu exclusively and never s.mu. The writer's code:
// writer.go (loop, group commit, the phases of a commit), park.go (Block),
// txn.go (what a transaction does), evict.go (caps and drop policies),
// failure.go (full disk, stopped writer).
//
// # File format (version 2)
//
// Top-level buckets; all integers big-endian; ids are uint64 from a
// persistent counter, so they never repeat in a file:
//
//	meta        magic "ferry-spool", format (8 bytes, = 3), next_id (8),
//	            counts (per-lane messages+bytes, DLQ, retained, dedupe: 25×8),
//	            commit (see below), clean (1 byte: 1 after Close, 0 while
//	            open), salvage (JSON report of the salvage that made the
//	            file, when one did)
//	lane0…lane9 id(8) → record kind 'q'
//	expiry      expires_at(8) ‖ id(8) → lane(1)      messages with a TTL
//	dedupe      key → expires_at(8) ‖ id(8)
//	dedupe_exp  expires_at(8) ‖ id(8) → (uvarint len ‖ key)…  sweep and cap order:
//	            the keys one commit recorded, id its first message's
//	            (format 2: expires_at(8) ‖ key → nil, one key, still read)
//	dlq         id(8) → record kind 'd' (stamp: dead-lettered at, text: reason)
//	delivered   id(8) → record kind 'r' (stamp: acked at), RetainDelivered only
//	state_retained, state_clients, state_subscriptions, state_inflight
//	            key → CRC-checked opaque value: the local MQTT broker's
//	            retained messages and persistent sessions (state.go),
//	            written with ApplyState or with a Put (Entry.State) in the
//	            same commit; capped per kind; not counted in MaxBytes
//
// A record (record.go) is: kind(1) flags(1: priority, which optional fields
// follow) attempts(uvarint) enqueued(8) [expires(8)] [stamp(8)] [text
// length(uvarint) text] crc32c(4) data; the CRC covers the 8-byte key and
// every other byte of the record. A queued message without a TTL takes 15
// bytes besides its data. Times are unix nanoseconds, 0 for none. Format 1
// records (upper-case kinds, fixed 36-byte header) are still read; a format
// 1 file is marked format 2 when opened. Bytes counted against MaxBytes are
// len(record)+8 per entry in the lane, DLQ and delivered buckets. Counts
// live in meta/counts and change in the same transaction as the data, so
// they are exact after a crash.
//
// meta/commit is written by every commit: bbolt's transaction id, next_id,
// the counts, the sum of the ids of each lane, the DLQ and the retained set,
// and a CRC-32C over them. Open requires it to name the transaction of the
// meta page in use and the records to add up to it.
//
// The lane, DLQ, delivered and expiry buckets are filled to 100 % before a
// page splits (bbolt's default of 50 % leaves pages of keys that only grow
// half empty for good): the file is about 1.1 times what MaxBytes counts.
// A clean Close writes bbolt's freelist, so that the next Open need not
// walk the file a second time (its check verifies that freelist).
//
// # Caveats
//
//   - Every commit is two fdatasyncs; a single producer that waits for
//     each answer gets one commit latency per message. Pipeline (several Puts in
//     flight), use more producers, or Interval durability.
//   - The file never shrinks by itself; Compact rewrites it.
//   - Deletes are done by key, collected first and applied in bounded
//     batches: deleting from the head with a First() loop is quadratic.
//   - Open reads every page in use (the check); after an unclean shutdown
//     bbolt reads them again to rebuild its freelist, and its consistency
//     check (Options.Verify) once more.
//   - On 32-bit platforms (ARM v6/v7) the memory map limits the file to
//     about 2 GB: Open refuses MaxBytes above Max32BitBytes (1 GiB), or no
//     cap at all, there.
//   - Salvage by raw page scan can resurrect messages that were already
//     acknowledged (their old pages are still in the file): at-least-once.
//     Dedupe keys are not salvaged.
package spool
