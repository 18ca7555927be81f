package bridge

import "time"

// connectLogInterval is how often, during one outage, a failed connection
// attempt is logged at WARN after the first one.
const connectLogInterval = 30 * time.Second

// connectLog rate-limits the log lines about failed connection attempts of
// one partition. With the backoff capped at a second or two, an outage of a
// day would otherwise write tens of thousands of WARN lines (an SD card);
// ferry_upstream_connect_failures_total and /status count every attempt.
// The first failure of an outage is logged at WARN, then at most one per
// interval saying how many attempts failed since; the others go to DEBUG.
// The line that ends the outage ("upstream connected") says how many
// attempts failed in all and for how long. Not safe for concurrent use: one
// partition's run loop owns it.
type connectLog struct {
	every time.Duration // 0: connectLogInterval

	failures   int       // in this outage
	suppressed int       // since the last WARN line
	since      time.Time // first failure of this outage
	next       time.Time // next WARN line allowed
}

// failed records a failed attempt at now and reports whether it is logged
// at WARN, and how many failed attempts were not since the last WARN line.
func (c *connectLog) failed(now time.Time) (warn bool, suppressed int) {
	every := c.every
	if every <= 0 {
		every = connectLogInterval
	}
	if c.failures == 0 {
		c.since = now
	}
	c.failures++
	if c.failures > 1 && now.Before(c.next) {
		c.suppressed++
		return false, 0
	}
	c.next = now.Add(every)
	n := c.suppressed
	c.suppressed = 0
	return true, n
}

// connected ends the outage and returns how many attempts failed in it and
// how long it lasted from the first failure (0, 0: there was none).
func (c *connectLog) connected(now time.Time) (failures int, down time.Duration) {
	failures = c.failures
	if failures > 0 {
		down = now.Sub(c.since)
	}
	*c = connectLog{every: c.every}
	return failures, down
}
