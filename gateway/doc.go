// Package gateway turns the parts of Ferry into one product: it owns the
// configuration (one strict YAML schema, validated with every problem
// reported as file:line:col: path: reason), the routing rules that decide
// each message's lane, TTL, dedupe key and upstream topic, the users and
// ACLs shared by MQTT and STOMP, the Prometheus metrics, the HTTP endpoints
// (/metrics, /healthz, /readyz, /api/status and the status page), and the
// wiring and lifecycle of spool, bridge and listeners. It is the only
// package that imports all the others.
//
// # Configuration
//
// Load reads a file, Parse a byte slice; both apply Default for every key
// left out and return a *ConfigError that lists every problem. Validate is
// structural and touches no files; CheckFiles checks that the TLS files
// exist. SpoolOptions maps the spool section to spool.Options; the other
// sections are plain structs that the wiring maps to component options.
//
// # Concurrency
//
// Router and Auth are safe for concurrent use and lock-free on the hot path
// (an atomic.Pointer to an immutable table); Reload builds a new table and
// swaps it, so a reload never blocks or half-applies. Metrics reads its
// sources at scrape time; the sources must be safe to call concurrently.
package gateway
