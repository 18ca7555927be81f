package chaos

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferrymq/ferry/gateway"
)

// linkFault is one way the upstream link fails.
type linkFault struct {
	name   string
	weight int
	do     func(p *phase, r *rig) string // applies the fault, holds it, heals it; returns what it did
}

var linkFaults = []linkFault{
	{"cut", 25, func(p *phase, r *rig) string {
		r.proxy.Cut()
		return "cut"
	}},
	{"blackhole", 20, func(p *phase, r *rig) string {
		// Shorter than bridge.stall_timeout (2s): the connection
		// survives and resumes; longer: stall detection replaces it.
		d := p.between(300*time.Millisecond, 4*time.Second)
		r.proxy.Blackhole()
		time.Sleep(d)
		r.proxy.Heal()
		return fmt.Sprintf("blackhole %v", d.Round(time.Millisecond))
	}},
	{"latency", 20, func(p *phase, r *rig) string {
		lat := p.between(20*time.Millisecond, 400*time.Millisecond)
		d := p.between(time.Second, 3*time.Second)
		r.proxy.SetLatency(lat)
		time.Sleep(d)
		r.proxy.SetLatency(0)
		return fmt.Sprintf("latency %v for %v", lat.Round(time.Millisecond), d.Round(time.Millisecond))
	}},
	{"refuse", 20, func(p *phase, r *rig) string {
		d := p.between(300*time.Millisecond, 2*time.Second)
		r.proxy.Refuse()
		r.proxy.Cut()
		time.Sleep(d)
		r.proxy.Heal()
		return fmt.Sprintf("refused %v", d.Round(time.Millisecond))
	}},
	{"upstream-restart", 15, func(p *phase, r *rig) string {
		d := p.between(0, time.Second)
		r.mosq.Stop() // SIGTERM: mosquitto saves its sessions (the recorder's queue)
		time.Sleep(d)
		r.mosq.Start()
		return fmt.Sprintf("mosquitto SIGTERM, restarted after %v", d.Round(time.Millisecond))
	}},
}

func (p *phase) pickFault() linkFault {
	total := 0
	for _, f := range linkFaults {
		total += f.weight
	}
	n := p.rng.IntN(total)
	for _, f := range linkFaults {
		if n < f.weight {
			return f
		}
		n -= f.weight
	}
	return linkFaults[0]
}

// testLinkFaults: a backlog is built with the link down; then, while it
// drains and the devices keep sending, the link fails again and again.
// Before each fault the drain must be live (link up, upstream acks
// advancing), so every fault hits messages in flight.
func testLinkFaults(t *testing.T, c *campaign) {
	p := c.phase(t)
	r := newRig(p, rigOptions{linkDown: true})
	l := r.startLoad(c.form.load)
	r.waitStatus(2*time.Minute, fmt.Sprintf("a backlog of %d messages with the link down", c.form.backlog), func(st *gateway.Status) bool {
		return st.Spool.Messages >= c.form.backlog
	})
	r.proxy.Heal()
	var mark uint64
	var log []string
	for i := range c.form.linkFaults {
		st, ok := r.pollStatus(testkit60, func(st *gateway.Status) bool {
			return st.Link.State == gateway.LinkUp && st.Link.Acked > mark
		})
		if !ok {
			p.fatal("the drain did not resume after fault %d of %d (%s): %s", i, c.form.linkFaults, last(log), brief(st))
		}
		mark = st.Link.Acked
		f := p.pickFault()
		what := f.do(p, r)
		log = append(log, what)
		p.mu.Lock()
		p.faults++
		p.mu.Unlock()
		time.Sleep(p.between(20*time.Millisecond, 400*time.Millisecond))
	}
	t.Logf("link faults: %v", log)
	r.settle(l, settleOptions{singleLifetime: true})
}

func last(s []string) string {
	if len(s) == 0 {
		return "none yet"
	}
	return s[len(s)-1]
}
