package chaos

import (
	"testing"
	"time"

	"github.com/ferrymq/ferry/gateway"
)

// testKills: the gateway is SIGKILLed at random moments while the devices
// send, and started again on the same spool after a random pause. About a
// third of the cycles run with the link down, so that the kill finds a
// backlog on disk and the restart must deliver it; the others kill it
// with messages in flight upstream, which come back as duplicates with
// their original envelope id.
//
// With fanOut the telemetry route also goes to a second upstream b, and a
// cycle with a link down takes b's link or main's (the seed chooses): the
// kill finds one upstream's share on disk while the other drains, and
// both must get every acknowledged reading.
func testKills(t *testing.T, c *campaign, fanOut bool, kills int) {
	p := c.phase(t)
	r := newRig(p, rigOptions{fanOut: fanOut})
	l := r.startLoad(c.form.load)
	for i := range kills {
		linkDown := p.rng.Float64() < 0.3
		px, queued := r.proxy, func(st *gateway.Status) int64 { return st.Spool.Messages }
		if fanOut && (!linkDown || p.rng.Float64() < 0.5) {
			// b's link: always down in the cycles where main's is up,
			// so that every kill finds b's share with messages in it.
			linkDown = true
			px, queued = r.proxyB, func(st *gateway.Status) int64 {
				if len(st.Upstreams) < 2 {
					return 0
				}
				return st.Upstreams[1].Queued
			}
		}
		if linkDown {
			px.Refuse()
			px.Cut()
		}
		up := p.between(300*time.Millisecond, 2*time.Second)
		time.Sleep(up)
		r.aliveOrFatal("SIGKILL it")
		before, _ := r.gw.status()
		r.gw.kill()
		p.mu.Lock()
		p.kills++
		p.mu.Unlock()
		down := p.between(0, 500*time.Millisecond)
		time.Sleep(down)
		if err := r.gw.start(true); err != nil {
			p.fatal("restart %d of %d on the same spool (link down: %v, killed after %v up, %v down; last status before the kill: %s): %v",
				i+1, kills, linkDown, up, down, brief(before), err)
		}
		if first := r.gw.firstStatus(); linkDown && before != nil && before.Spool != nil && first.Spool != nil && queued(first) < queued(before) {
			// The link was cut and refused since the start of the cycle,
			// so nothing could leave the queue: a smaller backlog after
			// the restart means stored messages vanished with the kill.
			p.fail("kill %d with the link down: %d queued before the kill, %d after the restart", i+1, queued(before), queued(first))
		}
		if linkDown {
			time.Sleep(p.between(0, time.Second))
			px.Heal()
		}
	}
	r.waitStatus(testkit60, "the link to come up after the last kill", func(st *gateway.Status) bool { return st.Link.State == gateway.LinkUp })
	r.settle(l, settleOptions{})
}

// testkit60 is the usual hang guard for a state the gateway must reach.
const testkit60 = 60 * time.Second
