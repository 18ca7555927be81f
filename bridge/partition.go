package bridge

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// partition is one upstream connection and the messages in flight on it.
//
// Lock order: partition.mu, then the connection's own lock (Conn.Publish
// is called under mu). The leaser holds mu while it asks the ledger and
// publishes, the receive path (onAck) while it pops acknowledged messages,
// the cut while it nacks and records; so a cut and a publish never
// interleave. Conn.Close is never called under mu: paho waits for its
// receive path, which may be waiting for mu.
type partition struct {
	b        *Bridge
	idx      int
	clientID string

	changed chan struct{} // cap 1: room in the window, or the connection changed (leaser waits on it)
	pub     chan struct{} // cap 1: the window went from empty to non-empty (serve waits on it)

	mu     sync.Mutex
	conn   Conn // nil unless up
	window int  // in-flight limit on conn: Options.Window, or less if the server says so (WindowConn)
	// slowStart: the window to open to at the first acknowledgement on
	// conn, which starts with a window of 1 (0: not slow-starting).
	slowStart int
	gen       uint64 // connection generation: acks of an older connection are ignored
	pid       uint16 // last packet id used on conn
	dirty     bool   // published on conn since the last flush
	win       flights
	lastAck   time.Time // last PUBACK on conn (or when it came up)
	led       ledger
	// suspects in flight, and how many may be (see next).
	suspects int
	ramp     int
	// hold: groups of one still to go before ramp grows again. The close
	// of a connection can take the last answers of the broker with it, so
	// a group's loss points at the suspect where its answers stopped or
	// the one after it: both go alone.
	hold int
	// ping is the newest PINGREQ sent on conn, watched by serve (stall,
	// round trip); ahead is the same while nothing was published after it:
	// once answered, the broker has answered everything sent before.
	ping   *Pong
	pingAt time.Time
	ahead  *Pong
	gate   *Pong // the ahead the current group of suspects waited for
	// jittered: a suspect with strikes waited its random delay on conn.
	jittered bool
	rtt      time.Duration // last round trip of a PINGREQ; 0: not measured yet
	state    LinkState
	since    time.Time
	stats    PartitionStats
}

// flight is a message in flight. Packet ids are consecutive: the i-th
// message in the window has packet id front.pid+i (skipping 0).
type flight struct {
	id       uint64
	pid      uint16
	topic    string
	sent     time.Time
	enqueued time.Time
	suspect  bool
	// Suspects: the PINGREQ its group waited for, and those queued just
	// before and just after it (see judge).
	gate, before, after *Pong
	acked               bool
	// rejected: the upstream refused this message (ConnConfig.OnReject);
	// it goes to the DLQ with this reason once it leaves the window.
	rejected string
}

// flights is the window: a FIFO of flights that reuses its array.
type flights struct {
	q []flight
	h int
}

func (f *flights) len() int         { return len(f.q) - f.h }
func (f *flights) at(i int) *flight { return &f.q[f.h+i] }
func (f *flights) push(x flight)    { f.q = append(f.q, x) }
func (f *flights) all() []flight    { return f.q[f.h:] }
func (f *flights) reset()           { clear(f.q); f.q, f.h = f.q[:0], 0 }
func (f *flights) front() *flight   { return f.at(0) }
func (f *flights) popped(n int) (out []flight) {
	out = f.q[f.h : f.h+n]
	f.h += n
	return out
}

// compact moves the window to the front of its array; call it after the
// popped flights were used.
func (f *flights) compact() {
	if f.h == len(f.q) {
		f.reset()
	} else if f.h > 64 && f.h*2 >= len(f.q) {
		n := copy(f.q, f.q[f.h:])
		clear(f.q[n:])
		f.q, f.h = f.q[:n], 0
	}
}

// pidOffset is the position in the window of packet id pid, given the
// packet id of the front (ids run 1..65535 and wrap, skipping 0).
func pidOffset(front, pid uint16) int {
	d := int(pid) - int(front)
	if d < 0 {
		d += 65535
	}
	return d
}

func (p *partition) setState(s LinkState) {
	if p.state != s {
		p.state, p.since = s, p.b.o.Now()
	}
}

func (p *partition) setErr(err error) {
	p.stats.LastError, p.stats.LastErrorAt = err.Error(), p.b.o.Now()
}

// run is the connection state machine: connecting → up → (lost | stalled)
// → backoff → connecting …, until ctx is done.
func (p *partition) run(ctx context.Context) {
	o := &p.b.o
	log := p.b.log.With("client_id", p.clientID)
	bo := backoff{base: o.BackoffBase, max: o.BackoffMax}
	var outage connectLog
	for ctx.Err() == nil {
		p.mu.Lock()
		p.setState(StateConnecting)
		p.gen++
		gen := p.gen
		p.mu.Unlock()

		var ds *downstream
		cfg := ConnConfig{Partition: p.idx, ClientID: p.clientID}
		cfg.OnAck, cfg.OnReject = p.ackFuncs(gen)
		if p.idx == 0 && len(o.Downstream) > 0 {
			ds = newDownstream(p.b, p.clientID)
			cfg.Subscriptions, cfg.OnMessage = p.b.dsRoutes.filters(), ds.push
			cfg.PersistentSession = true
		}
		cctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
		conn, err := p.b.up.Connect(cctx, cfg)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.next()
			p.mu.Lock()
			p.stats.Failures++
			p.setErr(err)
			p.setState(StateBackoff)
			p.mu.Unlock()
			if warn, suppressed := outage.failed(o.Now()); warn {
				log.Warn("upstream connect failed", "err", err, "retry_in", d, "failed_attempts", outage.failures, "not_logged", suppressed)
			} else {
				log.Debug("upstream connect failed", "err", err, "retry_in", d, "failed_attempts", outage.failures)
			}
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		upAt := time.Now()
		p.mu.Lock()
		p.conn, p.pid, p.dirty, p.lastAck, p.jittered = conn, 0, false, upAt, false
		p.window, p.slowStart = o.Window, 0
		if wc, ok := conn.(WindowConn); ok && wc.InFlightMax() > 0 {
			p.window = min(p.window, wc.InFlightMax())
		}
		if er, ok := conn.(explicitRefusals); ok && er.RefusesExplicitly() && p.stats.Connects > 0 && p.window > 1 {
			// An upstream that refuses single messages (JetStream) can
			// refuse the first publishes after a reconnect and store the
			// ones behind them (a stream leader election under way: seen
			// as a reordered stream after a leader was killed); resent,
			// the refused would land behind the stored. One message in
			// flight until the upstream takes one, then the window.
			p.window, p.slowStart = 1, p.window
		}
		// The first PINGREQ goes out before anything can be published, so
		// that its answer measures the round trip and nothing else.
		p.sendPing(upAt)
		if p.stats.Connects > 0 {
			p.stats.Reconnects++
		}
		p.stats.Connects++
		p.setState(StateUp)
		p.mu.Unlock()
		p.flush()
		signal(p.changed)
		signal(p.b.wake)
		if failures, down := outage.connected(o.Now()); failures > 0 {
			log.Info("upstream connected", "failed_attempts", failures, "down_for", down.Round(time.Millisecond))
		} else {
			log.Info("upstream connected")
		}

		var dsDone chan struct{}
		if ds != nil {
			dsDone = make(chan struct{})
			go func() { defer close(dsDone); ds.run(ctx, conn) }()
		}
		cause := p.serve(ctx, conn, upAt)
		conn.Close()
		blamed := p.cut(ctx, conn, cause)
		if dsDone != nil {
			<-dsDone
		}
		if ctx.Err() != nil {
			return
		}
		var d time.Duration
		if errors.Is(cause, errFailback) {
			log.Info("upstream failing back to the first broker", "from", brokerOf(conn))
			continue
		}
		if blamed {
			// A message, not the link, ended the connection (or is about
			// to be isolated): the link is fine, so retry soon and leave
			// the backoff where it is. This happens at most a few times
			// per message (see ledger).
			d = bo.short()
		} else {
			if time.Since(upAt) >= o.StableAfter {
				bo.reset()
			}
			d = bo.next()
		}
		log.Warn("upstream connection lost", "err", cause, "retry_in", d)
		p.mu.Lock()
		p.setState(StateBackoff)
		p.mu.Unlock()
		if !sleep(ctx, d) {
			return
		}
	}
}

// serve watches the connection until it is lost, stalls, or ctx is done,
// and returns the cause. A stall is messages in flight and no PUBACK for
// StallTimeout (a blackholed link with traffic), or a PINGREQ unanswered
// for StallTimeout: serve sends one when the connection has been idle for
// IdlePing, so that a link that went dark while idle is found before the
// next message waits behind it. PUBACKs are handled in the receive path
// (onAck), not here.
func (p *partition) serve(ctx context.Context, conn Conn, upAt time.Time) error {
	o := &p.b.o
	stall := o.StallTimeout
	timer := time.NewTimer(stall)
	defer timer.Stop()
	heard := upAt // the last proof that the link works
	var failback <-chan time.Time
	if o.FailbackAfter > 0 && len(o.Brokers) > 1 && !sameBroker(brokerOf(conn), o.Brokers[0]) {
		t := time.NewTicker(o.FailbackAfter)
		defer t.Stop()
		failback = t.C
	}
	for {
		p.mu.Lock()
		n := p.win.len()
		var start time.Time // of the wait for the next PUBACK
		if n > 0 {
			start = later(p.lastAck, p.win.front().sent)
		}
		heard = later(heard, p.lastAck)
		ping, pingAt := p.ping, p.pingAt
		now := time.Now()
		pinged := false
		if ping == nil && n == 0 && o.IdlePing > 0 && !heard.Add(o.IdlePing).After(now) {
			p.sendPing(now)
			ping, pingAt, pinged = p.ping, p.pingAt, true
		}
		p.mu.Unlock()
		if pinged {
			p.flush()
		}
		var due time.Time
		if n > 0 {
			due = start.Add(stall)
		}
		if ping != nil {
			due = earlier(due, pingAt.Add(stall))
		} else if n == 0 && o.IdlePing > 0 {
			due = heard.Add(o.IdlePing)
		}
		wait := time.Hour
		if !due.IsZero() {
			wait = due.Sub(now)
		}
		timer.Reset(wait)
		select {
		case <-p.pub:
		case <-ping.Done():
			t := time.Now()
			p.mu.Lock()
			p.rtt = t.Sub(pingAt)
			if p.ping == ping {
				p.ping = nil
			}
			p.mu.Unlock()
			heard = t
		case <-conn.Lost():
			return lostErr(conn)
		case <-ctx.Done():
			return ctx.Err()
		case <-failback:
			if reachable(ctx, o.Brokers[0], o.ConnectTimeout) {
				return errFailback
			}
		case <-timer.C:
			now := time.Now()
			p.mu.Lock()
			stalled := p.ping != nil && !now.Before(p.pingAt.Add(stall))
			if p.win.len() > 0 && !now.Before(later(p.lastAck, p.win.front().sent).Add(stall)) {
				stalled = true
			}
			if stalled {
				p.stats.Stalls++
				p.setState(StateStalled)
			}
			p.mu.Unlock()
			if stalled {
				return ErrStalled
			}
		}
	}
}

// sendPing sends a PINGREQ on conn for serve to watch. Caller holds mu.
// sendPing queues a PINGREQ on conn for serve to watch; the caller
// flushes once it released mu.
func (p *partition) sendPing(now time.Time) *Pong {
	pong := p.conn.Ping()
	p.ping, p.pingAt, p.ahead = pong, now, pong
	p.dirty = true
	p.stats.Probes++
	signal(p.pub)
	return pong
}

// publishQoS0 queues a QoS 0 publish and acks it in the spool at once
// (the route's upstream_qos 0: deleted once sent). Caller holds mu; it is
// released.
func (p *partition) publishQoS0(qc QoS0Conn, it *spool.Item, m *message.Message, topic string, payload []byte, batch uint64) pubResult {
	err := qc.PublishQoS0(topic, payload, m)
	p.ahead = nil
	if err != nil {
		p.conn = nil
		p.setErr(fmt.Errorf("publish: %w", err))
		p.led.giveBack(topic, it.ID, batch)
		p.mu.Unlock()
		p.b.linkDown()
		qc.Close()
		return pubReturned
	}
	p.dirty = true
	p.stats.Published++
	p.stats.Acked++
	p.mu.Unlock()
	p.b.ack([]uint64{it.ID})
	return pubSent
}

// errFailback ends a connection to a secondary broker once the first one
// is reachable again (Options.FailbackAfter).
var errFailback = errors.New("failing back to the first broker")

func brokerOf(c Conn) string {
	if bc, ok := c.(BrokerConn); ok {
		return bc.Broker()
	}
	return ""
}

// sameBroker compares two broker URLs by scheme and host:port; an unknown
// broker ("") counts as the first, so that nothing fails back blindly.
func sameBroker(a, b string) bool {
	if a == "" {
		return true
	}
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return ua.Host == ub.Host && (ua.Scheme == ub.Scheme || ua.Scheme == "tcp" && ub.Scheme == "mqtt" || ua.Scheme == "mqtt" && ub.Scheme == "tcp")
}

// reachable reports whether broker accepts a TCP connection.
func reachable(ctx context.Context, broker string, timeout time.Duration) bool {
	u, err := url.Parse(broker)
	if err != nil || u.Host == "" {
		return false
	}
	host := u.Host
	if u.Port() == "" {
		port := map[string]string{"ws": "80", "wss": "443", "nats": "4222", "ssl": "8883", "tls": "8883", "mqtts": "8883"}[u.Scheme]
		if port == "" {
			port = "1883"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	d := net.Dialer{Timeout: min(timeout, 5*time.Second)}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// earlier returns the earlier of a and b; a zero a counts as no time.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func lostErr(c Conn) error {
	if err := c.Err(); err != nil {
		return fmt.Errorf("connection lost: %w", err)
	}
	return errors.New("connection lost")
}

// ackFuncs returns the OnAck and OnReject of connection generation gen:
// they mark the acknowledged (or refused) messages and pop every settled
// one from the front of the window (MQTT 3.1.1 §4.6: PUBACKs come in
// publish order, but one out of order is not lost either). A refused
// message leaves the window like an acknowledged one, and goes to the DLQ
// instead of being acked in the spool. The two must not be called
// concurrently (both belong to the connection's receive path).
func (p *partition) ackFuncs(gen uint64) (onAck func(pids []uint16), onReject func(pid uint16, reason string)) {
	var ids []uint64
	var ages []time.Duration
	var dead []deadLetter
	onDelivered := p.b.o.OnDelivered
	var one [1]uint16
	settle := func(pids []uint16, reason string) {
		p.mu.Lock()
		if p.gen != gen || p.conn == nil {
			p.mu.Unlock()
			return
		}
		n := p.win.len()
		if n == 0 {
			p.mu.Unlock()
			return
		}
		front := p.win.front().pid
		for _, pid := range pids {
			if i := pidOffset(front, pid); i < n {
				f := p.win.at(i)
				if reason != "" && !f.acked {
					f.rejected = reason
				}
				f.acked = true
			}
		}
		k := 0
		for k < n && p.win.at(k).acked {
			k++
		}
		if k == 0 {
			p.mu.Unlock()
			return
		}
		now := time.Now()
		ids, ages, dead = ids[:0], ages[:0], dead[:0]
		var suspects int
		for _, f := range p.win.popped(k) {
			if f.rejected != "" {
				dead = append(dead, deadLetter{id: f.id, reason: f.rejected})
				p.stats.Rejected++
			} else {
				ids = append(ids, f.id)
			}
			if f.suspect {
				p.led.clear(f.id)
				suspects++
			}
			if f.rejected != "" {
				continue
			}
			if onDelivered != nil && !f.enqueued.IsZero() {
				ages = append(ages, now.Sub(f.enqueued))
			}
		}
		if suspects > 0 {
			p.suspects -= suspects
			if p.suspects == 0 {
				// A whole group was acked: the next may be twice as big.
				if p.hold > 0 {
					p.hold--
				} else {
					p.ramp = min(2*max(p.ramp, 1), p.b.o.Window)
				}
			}
		}
		p.win.compact()
		p.lastAck = now
		if p.slowStart > 0 {
			p.window, p.slowStart = p.slowStart, 0
		}
		p.stats.Acked += uint64(len(ids))
		p.mu.Unlock()
		if len(dead) > 0 {
			p.b.deadLetterLater(dead)
		}
		if len(ids) > 0 {
			p.b.ack(ids)
		}
		for _, a := range ages {
			onDelivered(a)
		}
		signal(p.changed)
		signal(p.b.wake)
	}
	onAck = func(pids []uint16) { settle(pids, "") }
	onReject = func(pid uint16, reason string) {
		if reason == "" {
			reason = "refused by the upstream"
		}
		one[0] = pid
		settle(one[:], reason)
	}
	return onAck, onReject
}

// cut ends a connection: every message in flight on it goes back to the
// spool (in spool order, to its original position) and is recorded in the
// ledger, so that nothing newer of its topic is published before it comes
// back. What the loss says about the oldest one is judged first: it may
// become a suspect, collect evidence, or, with enough evidence, go to the
// DLQ instead. cut reports whether a message took the blame.
func (p *partition) cut(ctx context.Context, conn Conn, cause error) (blamed bool) {
	o := &p.b.o
	p.mu.Lock()
	defer func() {
		p.mu.Unlock()
		signal(p.changed)
		signal(p.b.wake)
		p.b.linkDown()
	}()
	p.conn = nil
	shutdown := errors.Is(cause, context.Canceled)
	if !shutdown {
		p.setErr(cause)
	}
	fl := p.win.all()
	if len(fl) == 0 {
		return false
	}
	head := &fl[0]
	l := loss{
		shutdown:  shutdown,
		stalled:   errors.Is(cause, ErrStalled),
		planned:   errors.Is(cause, errFailback),
		inFlight:  len(fl),
		alone:     len(fl) == 1 && head.suspect,
		sinceSent: time.Since(head.sent),
		causalMin: p.rtt / 2,
	}
	if er, ok := conn.(explicitRefusals); ok {
		l.explicit = er.RefusesExplicitly()
	}
	l.gate, l.after = answered(head.gate), answered(head.after)
	if at, ok := head.before.At(); ok {
		l.before = true
		if lostAt := conn.LostAt(); !lostAt.IsZero() {
			l.gap = lostAt.Sub(at)
		}
	}
	p.ramp = 1
	var deadReason string
	switch v := judge(l); v {
	case hint:
		// One of these may have made the broker drop us (and the PUBACKs
		// of those before it may be lost with the connection): they are
		// published again as suspects, in groups (see next). A suspect the
		// broker read past (it answered the PINGREQ after it) is cleared:
		// it goes again with the other traffic, and the one where the
		// answers stopped leads the next group, alone.
		for i := range min(len(fl), maxHint) {
			if fl[i].suspect && answered(fl[i].after) {
				p.led.clear(fl[i].id)
			} else {
				p.led.suspect(fl[i].id)
			}
		}
		if head.suspect {
			p.hold = 2
		}
		blamed = !l.stalled
	case refusal, strike:
		e := p.led.suspect(head.id)
		if v == refusal {
			e.refusals++
		} else {
			e.strikes++
		}
		blamed = true
		switch {
		case e.refusals >= refusalsToDLQ:
			deadReason = fmt.Sprintf("refused by the upstream broker: %d times it read this message and then, instead of "+
				"acknowledging it, closed the connection or fell silent about it (last: %v)", e.refusals, cause)
		case e.refusals+e.strikes >= o.MaxAttempts:
			deadReason = fmt.Sprintf("delivery failed %d times: each time the connection dropped while it was the only message "+
				"in flight (last link error: %v)", e.refusals+e.strikes, cause)
		}
	}
	ids := make([]uint64, 0, len(fl))
	for i := range fl {
		if i == 0 && deadReason != "" {
			continue
		}
		ids = append(ids, fl[i].id)
	}
	if deadReason != "" {
		p.led.clear(head.id)
		p.b.deadLetter(ctx, head.id, deadReason)
	}
	if len(ids) > 0 {
		sctx, cancel := spoolCtx(ctx)
		if err := p.b.q.Nack(sctx, ids...); err != nil {
			// Their leases run out and the spool offers them again.
			p.b.log.Error("spool nack failed", "err", err, "client_id", p.clientID, "count", len(ids))
		}
		cancel()
		// Read after the Nack completed: see ledger.prune.
		batch := p.b.batch.Load()
		for i := range fl {
			if i > 0 || deadReason == "" {
				p.led.giveBack(fl[i].topic, fl[i].id, batch)
			}
		}
	}
	p.win.reset()
	p.suspects, p.ping, p.ahead, p.gate = 0, nil, nil, nil
	return blamed
}

func answered(p *Pong) bool {
	_, ok := p.At()
	return ok
}

// prune drops ledger entries that lease batch `batch` no longer needs.
func (p *partition) prune(batch uint64) {
	p.mu.Lock()
	p.led.prune(batch)
	p.mu.Unlock()
}

// flush starts sending what was published on this partition's connection.
func (p *partition) flush() {
	p.mu.Lock()
	conn := p.conn
	dirty := p.dirty && conn != nil
	p.dirty = false
	p.mu.Unlock()
	if dirty {
		conn.Flush()
	}
}

// publish queues it on this partition's connection, waiting for room in the
// window (see next for suspects). publish does not flush unless it waits or
// the message is a suspect: dispatch flushes at the end of a batch.
//
// pubReturned: the message must be nacked now (an older one of its topic is
// back in the spool, or ctx is done); it is recorded in the ledger.
// pubDown: the partition is down.
func (p *partition) publish(ctx context.Context, it *spool.Item, m *message.Message, topic string, payload []byte, now time.Time, batch uint64) pubResult {
	p.mu.Lock()
	ev := p.led.take(topic, it.ID)
	for {
		s := slot{up: p.conn != nil, inFlight: p.win.len(), window: p.window, suspectsInFlight: p.suspects,
			ramp: p.ramp, suspect: ev != nil, blocked: p.led.blocked(topic, it.ID)}
		switch st := next(s); st {
		case stepReturn, stepDown:
			p.led.giveBack(topic, it.ID, batch)
			p.mu.Unlock()
			if st == stepDown {
				return pubDown
			}
			return pubReturned
		case stepWait:
			conn, dirty := p.conn, p.dirty
			p.dirty = false
			p.mu.Unlock()
			if dirty {
				conn.Flush()
			}
			select {
			case <-p.changed:
			case <-ctx.Done():
				p.mu.Lock()
				p.led.giveBack(topic, it.ID, batch)
				p.mu.Unlock()
				return pubReturned
			}
			now = time.Now()
			p.mu.Lock()
		case stepProbe:
			// The first suspect of a group goes only once the broker has
			// answered a PINGREQ sent after everything before it: the link
			// works on this connection, and its round trip is fresh (see
			// judge, strike).
			if p.ahead == nil {
				p.sendPing(now)
			}
			wait := p.ahead
			var jitter <-chan time.Time
			if answered(wait) {
				wait = nil
				if ev.strikes > 0 && !p.jittered {
					// A link that drops at a fixed time after each connect
					// must not line up with this message's flight again
					// and again.
					p.jittered = true
					jitter = time.After(time.Duration(rand.Int64N(int64(2*p.rtt) + 1)))
				}
			}
			if wait != nil || jitter != nil {
				p.mu.Unlock()
				p.flush()
				select {
				case <-wait.Done():
				case <-jitter:
				case <-p.changed:
				case <-ctx.Done():
					p.mu.Lock()
					p.led.giveBack(topic, it.ID, batch)
					p.mu.Unlock()
					return pubReturned
				}
				now = time.Now()
				p.mu.Lock()
				continue
			}
			p.gate = p.ahead
			fallthrough
		case stepSend:
			conn := p.conn
			if qc, ok := conn.(QoS0Conn); ok && p.b.o.QoS0 && ev == nil && m != nil && m.UpstreamQoS == 0 {
				return p.publishQoS0(qc, it, m, topic, payload, batch)
			}
			p.pid++
			if p.pid == 0 {
				p.pid = 1
			}
			f := flight{id: it.ID, pid: p.pid, topic: topic, sent: now, enqueued: it.EnqueuedAt, suspect: ev != nil}
			if f.suspect {
				f.gate = p.gate
				f.before = p.sendPing(now)
				p.suspects++
				p.stats.Isolated++
			}
			p.ahead = nil
			var err error
			if mc, ok := conn.(MessageConn); ok {
				err = mc.PublishMessage(f.pid, topic, payload, m)
			} else {
				err = conn.Publish(f.pid, topic, payload)
			}
			if f.suspect && err == nil {
				f.after = p.sendPing(now)
			}
			wasEmpty := p.win.len() == 0
			p.win.push(f)
			p.dirty = true
			p.stats.Published++
			if it.Attempts > 0 {
				p.stats.Resent++
			}
			if err != nil {
				// The connection is gone and the packet never left; a later
				// one could, and would overtake it (G3). So nothing more
				// goes on this connection; the cut that follows nacks this
				// message with the others in flight.
				p.conn = nil
				p.setErr(fmt.Errorf("publish: %w", err))
			}
			p.mu.Unlock()
			if err != nil {
				p.b.log.Warn("upstream publish failed before it was sent; reconnecting so that nothing overtakes it",
					"client_id", p.clientID, "msg_id", it.ID, "err", err)
				p.b.linkDown()
				conn.Close()
			} else if f.suspect {
				p.flush()
			}
			if wasEmpty {
				signal(p.pub)
			}
			return pubSent
		}
	}
}
