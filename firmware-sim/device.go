package firmwaresim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Protocol is how a device talks to the gateway.
type Protocol uint8

// Protocols a device can speak. MQTT 3.1.1 uses paho.mqtt.golang; MQTT 5
// (which paho does not speak) a small client on mochi-mqtt's packet codec.
const (
	MQTT311 Protocol = iota + 1
	STOMP
	MQTT5
)

func (p Protocol) String() string {
	switch p {
	case MQTT311:
		return "mqtt311"
	case STOMP:
		return "stomp"
	case MQTT5:
		return "mqtt5"
	}
	return "unknown"
}

// ParseProtocol accepts "mqtt311" (or "mqtt", "mqtt3"), "mqtt5" and
// "stomp".
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "mqtt311", "mqtt", "mqtt3":
		return MQTT311, nil
	case "stomp":
		return STOMP, nil
	case "mqtt5", "mqttv5":
		return MQTT5, nil
	}
	return 0, fmt.Errorf("firmwaresim: unknown protocol %q (want mqtt311, mqtt5 or stomp)", s)
}

// DeviceConfig describes one simulated device. Zero values take the
// documented defaults.
type DeviceConfig struct {
	Name     string   // device name, used in ids and topics (required)
	Index    int      // position in the fleet, for the {n} topic placeholder
	Protocol Protocol // required
	Addr     string   // gateway listener host:port (required)
	ClientID string   // MQTT client id, STOMP client-id header; default "fsim-" + Name
	Username string
	Password string
	Topic    string // template, see ExpandTopic; default "sensors/{device}/temp"
	RunID    string // prefix of every reading id, see package doc

	Rate  float64 // readings per second; 0: as fast as the window allows
	Burst int     // rate burst; default 1
	// QoS: MQTT QoS 0, 1 or 2. For STOMP, 0 sends without a receipt and
	// anything else asks for a RECEIPT.
	QoS         byte
	PayloadSize int // bytes of JSON per reading (padded); default: unpadded
	Count       int // readings to produce; 0: until the deadline of Run

	// Window is how many messages may wait for their ack at once;
	// default 1 (most firmware), at most 65535.
	Window int
	// AckTimeout: an ack not arriving within it means the link is stalled;
	// the device reconnects and re-sends. Default 10s.
	AckTimeout time.Duration
	// ConnectTimeout bounds one connection attempt. Default 5s.
	ConnectTimeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect backoff (full jitter);
	// defaults 50ms and 5s.
	BackoffMin, BackoffMax time.Duration
	// KeepAlive for MQTT; default 30s.
	KeepAlive time.Duration

	// OfflineEvery and OfflineFor, both set, make the device disconnect
	// on purpose for OfflineFor every OfflineEvery of connected time. It
	// waits for its outstanding acks first and produces nothing while
	// offline.
	OfflineEvery, OfflineFor time.Duration

	Logger *slog.Logger // nil: discard
}

func (c DeviceConfig) withDefaults() (DeviceConfig, error) {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("name is required"))
	}
	if c.Protocol != MQTT311 && c.Protocol != MQTT5 && c.Protocol != STOMP {
		errs = append(errs, fmt.Errorf("protocol must be mqtt311, mqtt5 or stomp (got %d)", c.Protocol))
	}
	if c.Addr == "" {
		errs = append(errs, errors.New("addr is required"))
	}
	if c.QoS > 2 {
		errs = append(errs, fmt.Errorf("qos must be 0..2 (got %d)", c.QoS))
	}
	if c.Rate < 0 || c.Burst < 0 || c.Count < 0 || c.PayloadSize < 0 || c.Window < 0 || c.Window > 65535 {
		errs = append(errs, errors.New("rate, burst, count, payload size and window must not be negative (window at most 65535)"))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("firmwaresim: device %q: %w", c.Name, errors.Join(errs...))
	}
	if c.ClientID == "" {
		c.ClientID = "fsim-" + c.Name
	}
	if c.Topic == "" {
		c.Topic = "sensors/{device}/temp"
	}
	if c.Burst == 0 {
		c.Burst = 1
	}
	if c.Window == 0 {
		c.Window = 1
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = 10 * time.Second
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 50 * time.Millisecond
	}
	if c.BackoffMax < c.BackoffMin {
		c.BackoffMax = max(5*time.Second, c.BackoffMin)
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// DeviceStats are a device's counters.
type DeviceStats struct {
	Sent          uint64 // readings produced and sent for the first time
	Retransmits   uint64 // re-sends of unacknowledged readings
	Acked         uint64 // distinct readings the gateway acknowledged
	Unacked       uint64 // readings sent with QoS > 0 and not (yet) acknowledged
	Connects      uint64 // successful connections
	ConnectErrors uint64 // failed connection attempts
	Cuts          uint64 // connections lost, stalled or failed while in use
	OfflineSpells uint64 // deliberate disconnects
}

func (s *DeviceStats) add(o DeviceStats) {
	s.Sent += o.Sent
	s.Retransmits += o.Retransmits
	s.Acked += o.Acked
	s.Unacked += o.Unacked
	s.Connects += o.Connects
	s.ConnectErrors += o.ConnectErrors
	s.Cuts += o.Cuts
	s.OfflineSpells += o.OfflineSpells
}

// Device is one simulated device. Run it once.
type Device struct {
	cfg   DeviceConfig
	topic string
	log   *slog.Logger

	sent, retransmits, connects, connectErrors, cuts, offline atomic.Uint64
	needAck                                                   atomic.Int64 // QoS>0 readings sent and not acked

	mu    sync.Mutex
	acked map[string]time.Time

	dial func(ctx context.Context, cfg DeviceConfig, topic string) (session, error) // by protocol; tests swap it
}

// NewDevice validates cfg and returns a device that has not started.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &Device{
		cfg:   c,
		topic: ExpandTopic(c.Topic, c.Name, c.Index, c.Protocol),
		log:   c.Logger.With("device", c.Name, "client_id", c.ClientID, "protocol", c.Protocol.String()),
		acked: map[string]time.Time{},
	}
	switch c.Protocol {
	case MQTT311:
		d.dial = dialMQTT
	case MQTT5:
		d.dial = dialMQTT5
	case STOMP:
		d.dial = dialSTOMP
	}
	return d, nil
}

// Name is the device name.
func (d *Device) Name() string { return d.cfg.Name }

// Topic is the expanded MQTT topic the device publishes to (STOMP devices
// send to its /topic/ destination).
func (d *Device) Topic() string { return d.topic }

// Stats returns the device's counters.
func (d *Device) Stats() DeviceStats {
	d.mu.Lock()
	n := len(d.acked)
	d.mu.Unlock()
	return DeviceStats{
		Sent: d.sent.Load(), Retransmits: d.retransmits.Load(), Acked: uint64(n),
		Unacked: uint64(max(d.needAck.Load(), 0)), Connects: d.connects.Load(),
		ConnectErrors: d.connectErrors.Load(), Cuts: d.cuts.Load(), OfflineSpells: d.offline.Load(),
	}
}

// Acked returns a copy of the acknowledged reading ids with the time of
// their first acknowledgement.
func (d *Device) Acked() map[string]time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]time.Time, len(d.acked))
	for k, v := range d.acked {
		out[k] = v
	}
	return out
}

func (d *Device) copyAcked(into map[string]time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, v := range d.acked {
		into[k] = v
	}
}

func (d *Device) recordAck(id string, at time.Time) {
	d.mu.Lock()
	if _, ok := d.acked[id]; !ok {
		d.acked[id] = at
		d.needAck.Add(-1)
	}
	d.mu.Unlock()
}

// outMsg is one reading, kept byte for byte until it is acknowledged.
type outMsg struct {
	id      string
	seq     int64
	payload []byte
	wantAck bool
}

// inflight is an outMsg sent on one connection. done closes when the
// protocol completed it; err and at are set before.
type inflight struct {
	msg  *outMsg
	done chan struct{}
	err  error
	at   time.Time
}

// session is one connection to the gateway.
type session interface {
	// publish sends m. The returned inflight completes with the ack (or at
	// once for messages that get none) or with an error.
	publish(m *outMsg) *inflight
	// close ends the connection and completes every inflight.
	close()
}

// reapTimeout bounds the wait for a closed session's inflights.
const reapTimeout = 2 * time.Second

// errStalled: no ack within AckTimeout.
var errStalled = errors.New("ack timeout: link stalled")

// Run produces readings until Count is reached or produceUntil passes, then
// keeps reconnecting and re-sending unacknowledged readings until all are
// acknowledged or drainUntil passes. It returns ctx.Err() when cancelled
// and nil otherwise; connection problems are retried, logged and counted,
// not returned.
func (d *Device) Run(ctx context.Context, produceUntil, drainUntil time.Time) error {
	if d.cfg.Count == 0 && produceUntil.IsZero() {
		return fmt.Errorf("firmwaresim: device %q: neither a count nor a deadline bounds it", d.cfg.Name)
	}
	if drainUntil.Before(produceUntil) {
		drainUntil = produceUntil
	}
	limit := rate.Inf
	if d.cfg.Rate > 0 {
		limit = rate.Limit(d.cfg.Rate)
	}
	r := &runner{d: d, limiter: rate.NewLimiter(limit, d.cfg.Burst), produceUntil: produceUntil, drainUntil: drainUntil}
	return r.run(ctx)
}

type runner struct {
	d            *Device
	limiter      *rate.Limiter
	produceUntil time.Time
	drainUntil   time.Time

	sess        session
	pend        []*inflight // in send order
	resend      []*outMsg   // unacked from a broken connection, in send order
	seq         int64
	producing   bool
	attempt     int
	nextOffline time.Time
}

func (r *runner) run(ctx context.Context) error {
	d := r.d
	r.producing = true
	defer func() {
		if r.sess != nil {
			r.sess.close()
			r.reapAll()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		now := time.Now()
		if r.producing && ((d.cfg.Count > 0 && r.seq >= int64(d.cfg.Count)) || (!r.produceUntil.IsZero() && !now.Before(r.produceUntil))) {
			r.producing = false
		}
		if !r.producing && len(r.pend) == 0 && len(r.resend) == 0 {
			return nil
		}
		if !r.producing && !r.drainUntil.IsZero() && !now.Before(r.drainUntil) {
			return nil
		}
		if r.sess == nil {
			if err := r.connect(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				continue // deadline checks above end the loop
			}
			continue
		}
		if !r.nextOffline.IsZero() && !now.Before(r.nextOffline) {
			if err := r.goOffline(ctx); err != nil {
				return err
			}
			continue
		}
		switch {
		case len(r.resend) > 0 && len(r.pend) < d.cfg.Window:
			m := r.resend[0]
			r.resend = r.resend[1:]
			d.retransmits.Add(1)
			r.send(m)
		case len(r.pend) >= d.cfg.Window || (!r.producing && len(r.pend) > 0):
			r.reapOldest(ctx)
		case r.producing:
			r.produce(ctx)
		}
	}
}

// produce waits for the rate limiter and sends the next reading. Ack times
// stay accurate while it waits: the session stamps each inflight when its
// ack arrives, not when the device looks at it.
func (r *runner) produce(ctx context.Context) {
	d := r.d
	res := r.limiter.Reserve()
	delay := res.Delay()
	if !r.produceUntil.IsZero() && time.Now().Add(delay).After(r.produceUntil) {
		res.Cancel()
		r.producing = false
		return
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			res.Cancel()
			return // the main loop returns ctx.Err()
		}
	}
	r.seq++
	now := time.Now()
	rd := Reading{ID: ReadingID(d.cfg.RunID, d.cfg.Name, r.seq), Run: d.cfg.RunID, Dev: d.cfg.Name, Seq: r.seq, TS: now.UnixNano()}
	m := &outMsg{id: rd.ID, seq: r.seq, payload: rd.Encode(d.cfg.PayloadSize), wantAck: d.cfg.QoS > 0}
	if m.wantAck {
		d.needAck.Add(1)
	}
	d.sent.Add(1)
	r.send(m)
}

func (r *runner) send(m *outMsg) {
	f := r.sess.publish(m)
	if !m.wantAck {
		return // fire and forget: nothing promised
	}
	r.pend = append(r.pend, f)
	// Reap completed ones at the head without blocking.
	for len(r.pend) > 0 {
		select {
		case <-r.pend[0].done:
			if !r.settle(r.pend[0]) {
				return
			}
			r.pend = r.pend[1:]
		default:
			return
		}
	}
}

// settle records a completed inflight; false means the connection broke
// (and has been torn down).
func (r *runner) settle(f *inflight) bool {
	if f.err == nil {
		r.d.recordAck(f.msg.id, f.at)
		return true
	}
	r.broken(f.err)
	return false
}

// reapOldest waits for the oldest inflight, bounded by AckTimeout and,
// once production ended, by the drain deadline (which ends the run rather
// than counting as a stall).
func (r *runner) reapOldest(ctx context.Context) {
	f := r.pend[0]
	wait, stall := r.d.cfg.AckTimeout, true
	if !r.producing && !r.drainUntil.IsZero() {
		if left := time.Until(r.drainUntil); left < wait {
			wait, stall = max(left, 0), false
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-f.done:
		if r.settle(f) {
			r.pend = r.pend[1:]
		}
	case <-t.C:
		if stall {
			r.broken(errStalled)
		}
	case <-ctx.Done():
	}
}

// broken tears the connection down and queues every unacked message for
// re-sending, ahead of anything not yet re-sent.
func (r *runner) broken(err error) {
	d := r.d
	d.cuts.Add(1)
	d.log.Info("connection lost", "err", err, "pending", len(r.pend))
	r.sess.close()
	r.sess = nil
	r.nextOffline = time.Time{}
	unacked := r.reapAll()
	r.resend = append(unacked, r.resend...)
}

// reapAll waits for every inflight of a closed session (close completes
// them, but paho may do so asynchronously, so the wait is bounded) and
// returns the unacked ones in order. One still open after the bound counts
// as unacked: re-sending it at worst makes a duplicate.
func (r *runner) reapAll() []*outMsg {
	var unacked []*outMsg
	t := time.NewTimer(reapTimeout)
	defer t.Stop()
	expired := false
	for _, f := range r.pend {
		if !expired {
			select {
			case <-f.done:
			case <-t.C:
				expired = true
			}
		}
		if expired {
			select {
			case <-f.done:
			default:
				unacked = append(unacked, f.msg)
				continue
			}
		}
		if f.err == nil {
			r.d.recordAck(f.msg.id, f.at)
		} else {
			unacked = append(unacked, f.msg)
		}
	}
	r.pend = nil
	return unacked
}

func (r *runner) connect(ctx context.Context) error {
	d := r.d
	if r.attempt > 0 {
		ceil := d.cfg.BackoffMin << min(r.attempt-1, 20)
		if ceil > d.cfg.BackoffMax || ceil <= 0 {
			ceil = d.cfg.BackoffMax
		}
		wait := rand.N(ceil) + time.Millisecond
		if dl := r.deadline(); !dl.IsZero() {
			if left := time.Until(dl); left < wait {
				wait = max(left, 0)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		if dl := r.deadline(); !dl.IsZero() && !time.Now().Before(dl) {
			return errors.New("deadline passed")
		}
	}
	r.attempt++
	cctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	s, err := d.dial(cctx, d.cfg, d.topic)
	if err != nil {
		d.connectErrors.Add(1)
		d.log.Debug("connect failed", "err", err, "attempt", r.attempt)
		return err
	}
	d.connects.Add(1)
	r.attempt = 0
	r.sess = s
	if d.cfg.OfflineEvery > 0 && d.cfg.OfflineFor > 0 {
		r.nextOffline = time.Now().Add(d.cfg.OfflineEvery)
	}
	return nil
}

// deadline is the time after which no reconnect is useful.
func (r *runner) deadline() time.Time {
	if r.producing {
		if r.drainUntil.After(r.produceUntil) {
			return r.drainUntil
		}
		return r.produceUntil
	}
	return r.drainUntil
}

// goOffline waits for the outstanding acks, disconnects and stays away for
// OfflineFor.
func (r *runner) goOffline(ctx context.Context) error {
	d := r.d
	for len(r.pend) > 0 && r.sess != nil {
		if !r.producing && !r.drainUntil.IsZero() && !time.Now().Before(r.drainUntil) {
			return nil // the run is over; the main loop ends it
		}
		r.reapOldest(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if r.sess == nil {
		return nil // broke while draining: reconnect as usual
	}
	d.offline.Add(1)
	d.log.Debug("going offline", "for", d.cfg.OfflineFor)
	r.sess.close()
	r.sess = nil
	r.nextOffline = time.Time{}
	t := time.NewTimer(d.cfg.OfflineFor)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
