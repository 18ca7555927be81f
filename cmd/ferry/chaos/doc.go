// Package chaos is the gateway-level proof campaign behind `make chaos`
// (docs/chaos.md). It holds no production code and nothing imports it: the
// campaign is the test TestChaos, which builds the ferry binary (go build
// ./cmd/ferry) and runs it as a child process on a generated configuration
// (loopback listeners on free ports, envelope format, dedupe on the
// readings' id), with a real mosquitto upstream behind a fault-injecting
// proxy (firmwaresim.Proxy), simulated devices over MQTT 3.1.1, MQTT 5 and
// STOMP (firmwaresim.Fleet, each device recording exactly which ids the
// gateway acknowledged) and an independent recorder subscribed to mosquitto
// (firmwaresim.Verifier).
//
// # Phases
//
//   - kill: the gateway is SIGKILLed at random moments under load and
//     restarted on the same spool, some cycles with the link down so that
//     the kill finds a backlog.
//   - kill-fanout: the same with the route fanned out to a second upstream
//     (own mosquitto, proxy, verifier, spool file); cycles cut one of the
//     links, and both upstreams must get every acknowledged reading.
//   - link: a backlog is built with the link down, then, while it drains
//     and the devices keep sending, link faults one after another: cuts,
//     blackholes, latency spells, connection refused, upstream SIGTERM and
//     restart. Every fault waits until the drain is live again first.
//   - diskfull/above and diskfull/below: the spool on a small real
//     filesystem (a loop-mounted ext4 image, or tmpfs), with
//     spool.max_bytes above the filesystem (ENOSPC must become the
//     documented full state, survive a SIGKILL, and recover when space
//     frees) and below it (the spool's own cap, never ENOSPC).
//   - corrupt/*: the spool file of a stopped gateway is damaged (truncated,
//     bits flipped, pages zeroed, garbage written); the gateway must start,
//     salvage, and deliver exactly what it reports as kept.
//
// # Invariants
//
// At the end of every phase: every acknowledged id arrived upstream at
// least once; first arrivals are in order per device and topic; every
// duplicate carries the envelope id of its first copy; nothing is left in
// the spool, the DLQ or a drop counter; the spool's persistent dedupe count
// equals the distinct readings the recorder saw (every accepted reading
// indexed once, across SIGKILLs); and the counters of the last gateway
// lifetime balance (backlog at open + accepted = acked). A barrier message
// published straight to mosquitto makes "the recorder saw everything"
// exact rather than a timeout.
//
// # Seeds
//
// FERRY_CHAOS_SEED fixes the seed (default: random, printed). The seed
// fixes the schedule (which fault, when, for how long, which damage); the
// interleaving of real processes is not reproducible, so a failure names
// the seed and the command to run that phase again. FERRY_CHAOS=full is
// the long form; the default short form runs in `make test`.
package chaos
