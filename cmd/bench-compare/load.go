package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// payloadSize is the size of every benchmark message.
const payloadSize = 256

// payloadMagic opens every benchmark payload, so that anything else that
// arrives upstream (a probe, a stray message) is told apart.
const payloadMagic = "bcmp"

// Payload layout (big endian): magic[0:4] run[4:8] publisher[8:12]
// seq[12:20] sent[20:28] (nanoseconds since the harness's clock epoch, a
// monotonic reading), then filler up to payloadSize. It does not start with
// '{', so the subscriber can tell it from a Ferry envelope.
type stamp struct {
	run  uint32
	pub  uint32
	seq  uint64
	sent time.Duration
}

func encodePayload(s stamp) []byte {
	b := make([]byte, payloadSize)
	copy(b, payloadMagic)
	binary.BigEndian.PutUint32(b[4:], s.run)
	binary.BigEndian.PutUint32(b[8:], s.pub)
	binary.BigEndian.PutUint64(b[12:], s.seq)
	binary.BigEndian.PutUint64(b[20:], uint64(s.sent))
	for i := 28; i < len(b); i++ {
		b[i] = 'x'
	}
	return b
}

func decodePayload(b []byte) (stamp, bool) {
	if len(b) > 0 && b[0] == '{' {
		var ok bool
		if b, ok = unwrapEnvelope(b); !ok {
			return stamp{}, false
		}
	}
	if len(b) != payloadSize || string(b[:4]) != payloadMagic {
		return stamp{}, false
	}
	return stamp{
		run:  binary.BigEndian.Uint32(b[4:]),
		pub:  binary.BigEndian.Uint32(b[8:]),
		seq:  binary.BigEndian.Uint64(b[12:]),
		sent: time.Duration(binary.BigEndian.Uint64(b[20:])),
	}, true
}

// unwrapEnvelope returns the original payload of a Ferry envelope
// (bridge.format: envelope); a binary payload travels base64 encoded.
func unwrapEnvelope(b []byte) ([]byte, bool) {
	var e struct {
		Payload  json.RawMessage `json:"payload"`
		Encoding string          `json:"encoding"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Encoding != "base64" {
		return nil, false
	}
	var p []byte
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		return nil, false
	}
	return p, true
}

// clock is the harness's time base: monotonic durations since its epoch,
// shared by publishers (send stamps) and the subscriber (arrivals), which run
// in the same process.
type clock struct{ epoch time.Time }

func newClock() clock                        { return clock{epoch: time.Now()} }
func (c clock) now() time.Duration           { return time.Since(c.epoch) }
func (c clock) at(d time.Duration) time.Time { return c.epoch.Add(d) }

// tracker counts what arrives at the subscriber for one run: first
// arrivals, duplicates, per-topic order violations (each publisher has its
// own topic and numbers its messages from 0), latency. After publishing,
// setAcked tells it which messages the edge acknowledged, so it can report
// when every one of them has arrived and which never did.
type tracker struct {
	clock clock
	run   uint32

	mu              sync.Mutex
	pubs            []pubArrivals
	unique          int
	duplicates      int
	orderViolations int
	foreign         int // not a benchmark message of this run
	probes          int
	first, lastNew  time.Duration
	latencies       []time.Duration // of first arrivals

	ackedKnown   bool
	acked        [][]bool
	ackedTotal   int
	arrivedAcked int
	completeAt   time.Duration // arrival that completed the acked set
	notify       chan struct{}
}

type pubArrivals struct {
	arrived []uint8 // copies seen, saturating
	maxSeq  int64   // highest seq seen so far, -1 before the first
}

func newTracker(c clock, run uint32, publishers, perPublisher int) *tracker {
	t := &tracker{clock: c, run: run, pubs: make([]pubArrivals, publishers), notify: make(chan struct{}, 1)}
	for i := range t.pubs {
		t.pubs[i] = pubArrivals{arrived: make([]uint8, perPublisher), maxSeq: -1}
	}
	t.latencies = make([]time.Duration, 0, publishers*perPublisher)
	return t
}

// probeTopicSuffix marks the probe messages that show a link is up.
const probeTopicSuffix = "bench/probe"

// arrive records one message the subscriber received at now.
func (t *tracker) arrive(topic string, payload []byte, now time.Duration) {
	if strings.HasSuffix(topic, probeTopicSuffix) {
		t.mu.Lock()
		t.probes++
		t.mu.Unlock()
		t.wake()
		return
	}
	s, ok := decodePayload(payload)
	t.mu.Lock()
	defer t.mu.Unlock()
	if !ok || s.run != t.run || int(s.pub) >= len(t.pubs) || s.seq >= uint64(len(t.pubs[s.pub].arrived)) {
		t.foreign++
		return
	}
	p := &t.pubs[s.pub]
	if p.arrived[s.seq] > 0 {
		if p.arrived[s.seq] < 255 {
			p.arrived[s.seq]++
		}
		t.duplicates++
		return
	}
	p.arrived[s.seq] = 1
	if int64(s.seq) < p.maxSeq {
		t.orderViolations++
	} else {
		p.maxSeq = int64(s.seq)
	}
	if t.unique == 0 {
		t.first = now
	}
	t.unique++
	t.lastNew = now
	t.latencies = append(t.latencies, now-s.sent)
	if t.ackedKnown && s.seq < uint64(len(t.acked[s.pub])) && t.acked[s.pub][s.seq] {
		t.arrivedAcked++
		if t.arrivedAcked == t.ackedTotal {
			t.completeAt = now
			t.wake()
		}
	}
}

func (t *tracker) wake() {
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// setAcked hands over what each publisher had acknowledged (indexed by
// publisher, then seq). Called once, after publishing ended.
func (t *tracker) setAcked(acked [][]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.acked, t.ackedKnown = acked, true
	t.ackedTotal, t.arrivedAcked = 0, 0
	for p, a := range acked {
		for seq, ok := range a {
			if !ok {
				continue
			}
			t.ackedTotal++
			if t.pubs[p].arrived[seq] > 0 {
				t.arrivedAcked++
			}
		}
	}
	if t.arrivedAcked == t.ackedTotal {
		// Everything was already there (the link-up scenarios): the last
		// new arrival is the best estimate of when; it can be a little late
		// only if a message that was never acknowledged arrived after.
		t.completeAt = t.lastNew
	}
}

// complete reports whether every acknowledged message has arrived.
func (t *tracker) complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ackedKnown && t.arrivedAcked == t.ackedTotal
}

func (t *tracker) uniqueCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.unique
}

// received is every message the subscriber got, probes aside: first
// arrivals, duplicates and foreign ones.
func (t *tracker) received() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return uint64(t.unique + t.duplicates + t.foreign)
}

func (t *tracker) probeCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.probes
}

// waitComplete waits until every acknowledged message arrived, nothing new
// arrived for settle, or ctx ends. It reports whether the set is complete.
func (t *tracker) waitComplete(ctx context.Context, settle time.Duration) bool {
	last, lastChange := -1, time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if t.complete() {
			return true
		}
		if n := t.uniqueCount(); n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > settle {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.notify:
		case <-tick.C:
		}
	}
}

// arrivals is what the tracker saw, frozen at the end of a run.
type arrivals struct {
	Unique          int
	Duplicates      int
	OrderViolations int
	Foreign         int
	Acked           int
	ArrivedAcked    int
	First, Last     time.Duration // first arrival; arrival that completed the acked set (else the last new one)
	Latencies       []time.Duration
}

// Lost is how many acknowledged messages never arrived.
func (a arrivals) Lost() int { return a.Acked - a.ArrivedAcked }

func (t *tracker) snapshot() arrivals {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := arrivals{
		Unique: t.unique, Duplicates: t.duplicates, OrderViolations: t.orderViolations, Foreign: t.foreign,
		Acked: t.ackedTotal, ArrivedAcked: t.arrivedAcked, First: t.first, Last: t.lastNew,
		Latencies: slices.Clone(t.latencies),
	}
	if t.ackedKnown && t.arrivedAcked == t.ackedTotal && t.ackedTotal > 0 {
		a.Last = t.completeAt
	}
	return a
}

// percentile returns the p-th percentile (0 < p ≤ 100, nearest rank) of
// sorted, or 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

// mqttOptions are what every benchmark client shares: MQTT 3.1.1, a clean
// session, no automatic reconnect (a lost connection ends that client's
// part of the run and is counted, not hidden).
func mqttOptions(addr, clientID string) *paho.ClientOptions {
	return paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(clientID).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(5 * time.Second).SetWriteTimeout(30 * time.Second)
}

func connect(ctx context.Context, o *paho.ClientOptions) (paho.Client, error) {
	c := paho.NewClient(o)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return nil, fmt.Errorf("connect %s: %w", o.ClientID, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s: %w", o.ClientID, err)
	}
	return c, nil
}

// connectRetry connects, retrying until ctx ends: the edge may still be
// starting.
func connectRetry(ctx context.Context, o *paho.ClientOptions) (paho.Client, error) {
	for {
		c, err := connect(ctx, o)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// subscribe connects the subscriber to the upstream broker and records
// every arrival on filter into t. paho calls the handler in arrival order
// (OrderMatters) and acknowledges after it returns.
func subscribe(ctx context.Context, addr, clientID, filter string, t *tracker) (paho.Client, error) {
	handler := func(_ paho.Client, m paho.Message) { t.arrive(m.Topic(), m.Payload(), t.clock.now()) }
	o := mqttOptions(addr, clientID).SetOrderMatters(true).SetDefaultPublishHandler(handler)
	c, err := connect(ctx, o)
	if err != nil {
		return nil, err
	}
	tok := c.Subscribe(filter, 1, handler)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, fmt.Errorf("subscribe %q: %w", filter, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("subscribe %q: %w", filter, err)
	}
	return c, nil
}

// publisher is one device: its own connection and topic, numbering its
// messages from 0 and keeping up to window publishes in flight.
type publisher struct {
	idx    int
	runID  uint32
	topic  string
	client paho.Client
	clock  clock

	// Results, read after run returns.
	acked    []bool // by seq
	sent     int
	ackedN   int
	failed   int // publishes that completed with an error or were abandoned
	firstErr error
	lastAck  time.Duration
}

// load is what one publisher sends: count messages, at rate per second (0:
// as fast as the window allows), stopping early at sendUntil. A message at a
// fixed rate carries its scheduled send time, so a late send counts as
// latency (no coordinated omission); at max rate it carries the time it was
// handed to the client, after its window slot was free.
type load struct {
	count     int
	rate      float64
	window    int
	start     time.Duration // clock reading when sending begins
	phase     time.Duration // fixed rate: this publisher's offset into the period, so that publishers do not send in step
	sendUntil time.Time
}

// run sends and waits for the acknowledgements until ackCtx ends; what is
// still unacknowledged then counts as failed.
func (p *publisher) run(ackCtx context.Context, l load) {
	p.acked = make([]bool, l.count)
	type inflight struct {
		seq int
		tok paho.Token
	}
	slots := make(chan struct{}, l.window)
	pending := make(chan inflight, l.window)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range pending {
			select {
			case <-f.tok.Done():
				if err := f.tok.Error(); err != nil {
					p.fail(err)
				} else {
					p.acked[f.seq] = true
					p.ackedN++
					p.lastAck = p.clock.now()
				}
			case <-ackCtx.Done():
				p.fail(errors.New("no acknowledgement before the run's bound"))
			}
			<-slots
		}
	}()
	var period time.Duration
	if l.rate > 0 {
		period = time.Duration(float64(time.Second) / l.rate)
	}
loop:
	for seq := range l.count {
		var sent time.Duration
		if period > 0 {
			sent = l.start + l.phase + time.Duration(seq)*period
			if d := time.Until(p.clock.at(sent)); d > 0 {
				select {
				case <-time.After(d):
				case <-ackCtx.Done():
					break loop
				}
			}
		}
		if time.Now().After(l.sendUntil) || !p.client.IsConnectionOpen() {
			break
		}
		select {
		case slots <- struct{}{}:
		case <-ackCtx.Done():
			break loop
		}
		if period == 0 {
			sent = p.clock.now()
		}
		tok := p.client.Publish(p.topic, 1, false, encodePayload(stamp{run: p.runID, pub: uint32(p.idx), seq: uint64(seq), sent: sent}))
		p.sent++
		pending <- inflight{seq: seq, tok: tok}
	}
	close(pending)
	<-done
}

func (p *publisher) fail(err error) {
	p.failed++
	if p.firstErr == nil {
		p.firstErr = err
	}
}
