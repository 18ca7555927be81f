// Package gateway turns the parts of Ferry into one product: the routing
// rules that decide each message's lane, TTL, dedupe key and upstream
// topic, the users and ACLs shared by MQTT and STOMP, the Prometheus
// metrics, the HTTP endpoints (/metrics, /healthz, /readyz, /api/status,
// the status page and the spool API of `ferry spool`), and the wiring and
// lifecycle of spool, bridge and listeners (gateway.go; the development
// broker and the start banner in dev.go). The configuration is package
// gateway/config. It is the only package that imports all the others.
//
// # HTTP
//
// Every request must name the gateway in its Host header (against DNS
// rebinding); spool changes must be non-simple, same-origin requests
// (AdminHeader, http.CrossOriginProtection) from loopback or a logged-in
// client, and are logged; listeners.http.auth (Basic or bearer, bcrypt)
// protects everything but the probes. http_access.go has the rules.
//
// # Configuration
//
// New takes a *config.Config (config.Load reads and validates one). The
// mapping of each section to the Options of spool, bridge, mqtt and stomp
// is in gateway/config (options.go); gateway.go adds the runtime parts
// (ingest core, authorizer, state store, loggers, callbacks). Reload loads
// the file again and applies config.ReloadableKeys.
//
// # Concurrency
//
// Router and Auth are safe for concurrent use and lock-free on the hot path
// (an atomic.Pointer to an immutable table); Reload builds a new table and
// swaps it, so a reload never blocks or half-applies. Metrics reads its
// sources at scrape time; the sources must be safe to call concurrently.
package gateway
