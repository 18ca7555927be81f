package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
)

// DefaultTimeout bounds the wait for one message's commit when the caller
// gives none.
const DefaultTimeout = 5 * time.Second

// Options configure a Core.
type Options struct {
	// Sink stores what is to be spooled (required). A message.OrderedSink
	// (the spool) gets each message at once and keeps them in order, so a
	// connection has many in flight; a plain Sink is called for one message
	// of a connection at a time, in order (tests, tools).
	Sink message.Sink
	// Router chooses each message's route; nil: the zero message.Route
	// (spooled, priority 0, no TTL) for every topic.
	Router message.Router
	// LinkUp reports whether a link of the upstreams topic's route sends
	// to is up, for routes with message.QoS0Drop; nil: never up (QoS 0 on
	// such routes is always local only).
	LinkUp func(topic string) bool
	// Timeout is the default bound on one message's commit (default 5s).
	Timeout time.Duration
	Logger  *slog.Logger     // nil: discard
	Now     func() time.Time // nil: time.Now
}

// Core is the ingest path shared by the protocols. It is safe for
// concurrent use.
type Core struct {
	o      Options
	log    *slog.Logger
	base   context.Context
	cancel context.CancelCauseFunc

	local atomic.Pointer[[]message.LocalPublisher]
	addMu sync.Mutex

	localOnly atomic.Uint64
	cancelled atomic.Uint64
}

// New checks o and returns a Core.
func New(o Options) (*Core, error) {
	if o.Sink == nil {
		return nil, errors.New("ingest: Options.Sink is required")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Core{o: o, log: o.Logger}
	c.base, c.cancel = context.WithCancelCause(context.Background())
	c.local.Store(&[]message.LocalPublisher{})
	return c, nil
}

// AddLocal adds a protocol's local delivery to the fan-out. Each protocol
// server adds itself, so that a message accepted on one protocol reaches the
// subscribers of every protocol. Call it before traffic starts.
func (c *Core) AddLocal(p message.LocalPublisher) {
	c.addMu.Lock()
	defer c.addMu.Unlock()
	old := *c.local.Load()
	next := append(append([]message.LocalPublisher(nil), old...), p)
	c.local.Store(&next)
}

// FanOut delivers m to every local publisher. Streams call it after the
// commit; the protocols call it for messages that do not come from a
// device (there are none today besides tests and tools).
func (c *Core) FanOut(m *message.Message) {
	for _, p := range *c.local.Load() {
		p.PublishLocal(m)
	}
}

// Now is the Core's clock, for protocols that stamp messages.
func (c *Core) Now() time.Time { return c.o.Now() }

// Close fails every pending and later submission with
// message.ErrShuttingDown. It does not wait for Streams: their owners close
// them.
func (c *Core) Close() { c.cancel(message.ErrShuttingDown) }

// Closing reports whether Close was called.
func (c *Core) Closing() bool { return c.base.Err() != nil }

// Stats are the Core's own counters.
type Stats struct {
	LocalOnly uint64 // messages delivered locally without the Sink (LocalOnly routes, QoS 0 drop while the link is down)
	Cancelled uint64 // messages withdrawn because an earlier message of their connection was refused
}

// Stats returns a snapshot.
func (c *Core) Stats() Stats {
	return Stats{LocalOnly: c.localOnly.Load(), Cancelled: c.cancelled.Load()}
}

// Accept runs one message through the whole path and waits: for senders
// that have no Stream (wills, tools). It returns the Outcome the Stream's
// answer function would see; the message is fanned out when fanOut is set.
func (c *Core) Accept(ctx context.Context, m *message.Message, o SubmitOptions, fanOut bool) Outcome {
	ctx, unbind := c.bind(ctx)
	defer unbind()
	t := c.submit(ctx, nil, m, o)
	out := t.wait()
	if out.OK() && fanOut {
		c.FanOut(m)
	}
	return out
}

// SubmitOptions are the per-message inputs beyond the message itself.
type SubmitOptions struct {
	// Expiry is the sender's own expiry (MQTT 5 Message Expiry Interval);
	// the earlier of it and the route's TTL applies. 0: none.
	Expiry time.Duration
	// Timeout bounds the wait for the commit; 0: Options.Timeout.
	Timeout time.Duration
}

// Outcome is what became of one message.
type Outcome struct {
	Spooled   bool   // the Sink stored it (durable) or found it a duplicate
	LocalOnly bool   // never spooled by its route: delivered locally only
	Reason    Reason // when refused
	Err       error  // nil: accepted (Spooled or LocalOnly)
}

// OK reports whether the message was accepted.
func (o Outcome) OK() bool { return o.Err == nil }

// Ticket is one submitted message, or one batch (Stream.SubmitBatch).
type Ticket struct {
	M *message.Message // nil for a batch
	// Batch is the messages of a batch, answered together: all stored or
	// none.
	Batch []*message.Message
	Tag   any // the protocol's own data (packet id, frame): returned untouched
	// FanOut: deliver M locally once accepted (false for wills, which
	// mochi delivered itself).
	FanOut bool

	ctx       context.Context
	cancel    context.CancelFunc // ends ctx: to withdraw (and after the answer, without shared)
	shared    *sharedCtx         // ctx is shared with the Stream's neighbours: released after the answer
	withdrawn bool
	lazy      bool         // done calls a plain Sink's Accept: not at all once withdrawn
	done      func() error // nil: decided at submission (out holds it)
	out       Outcome
}

// submit routes m and hands it to the Sink; sh is the Stream's context
// sharing (nil: a context of its own).
func (c *Core) submit(ctx context.Context, sh *ctxShare, m *message.Message, o SubmitOptions) *Ticket {
	t := &Ticket{M: m}
	if c.route(m, o) {
		t.out = Outcome{LocalOnly: true}
		return t
	}
	if c.Closing() {
		t.out = Outcome{Reason: ReasonShuttingDown, Err: message.ErrShuttingDown}
		return t
	}
	if os, ok := c.o.Sink.(message.OrderedSink); ok {
		c.arm(ctx, sh, t, o, func(mctx context.Context) { t.done = os.Submit(mctx, m) })
	} else {
		// Called when the Stream comes to it: one at a time, in order.
		c.arm(ctx, sh, t, o, func(mctx context.Context) {
			t.done = func() error { return c.o.Sink.Accept(mctx, m) }
		})
		t.lazy = true
	}
	return t
}

// route applies m's route (and the sender's expiry) to m and reports
// whether m is delivered locally only, without the Sink.
func (c *Core) route(m *message.Message, o SubmitOptions) (localOnly bool) {
	var route message.Route
	if c.o.Router != nil {
		route = c.o.Router.Route(m.Topic)
	}
	route.Apply(m)
	if o.Expiry > 0 {
		if exp := m.AcceptedAt.Add(o.Expiry); m.ExpiresAt.IsZero() || exp.Before(m.ExpiresAt) {
			m.ExpiresAt = exp
		}
	}
	if route.LocalOnly || (m.QoS == 0 && route.QoS0 == message.QoS0Drop && (c.o.LinkUp == nil || !c.o.LinkUp(m.Topic))) {
		c.localOnly.Add(1)
		return true
	}
	return false
}

// bind returns a context that ends with ctx and, with cause
// message.ErrShuttingDown, when the Core closes; call unbind when done
// with it. A Stream binds its context once, so that no message pays for
// a registration with the Core's shared context (a lock every
// connection's messages would take).
func (c *Core) bind(ctx context.Context) (bound context.Context, unbind func()) {
	bctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(c.base, func() { cancel(message.ErrShuttingDown) })
	return bctx, func() { stop(); cancel(nil) }
}

// arm gives t the context its submission runs under and calls hand with
// it. ctx must be bound (bind): the context ends with it (the connection,
// or shutdown with cause message.ErrShuttingDown), at the timeout, or
// when an earlier message of its Stream fails (withdrawAfter). With sh the
// context may be shared with the Stream's previous messages (ctxShare).
func (c *Core) arm(ctx context.Context, sh *ctxShare, t *Ticket, o SubmitOptions, hand func(context.Context)) {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = c.o.Timeout
	}
	if sh != nil {
		g := sh.join(ctx, timeout)
		t.ctx, t.cancel, t.shared = g.ctx, g.cancel, g
		hand(g.ctx)
		return
	}
	// One context per message: withdrawing cancels it, and wait knows a
	// withdrawn message by t.withdrawn (set on the same goroutine), not by
	// a cause, which would cost a second context.
	mctx, cancel := context.WithTimeout(ctx, timeout)
	t.ctx, t.cancel = mctx, cancel
	hand(mctx)
}

// ctxShare hands out the contexts of one Stream's messages. A context of
// its own per message costs a timer each (4 % of a message's CPU at full
// rate, profiled), so consecutive messages with the same timeout share one
// while it is younger than timeout/shareDivisor: each message then has at
// least (shareDivisor-1)/shareDivisor of its timeout. Sharing is safe for
// withdrawal, which cancels the shared context: a message is only ever
// withdrawn together with every message after it, and the ones before it
// are answered by then. Only the Stream's submitting goroutine calls join;
// what is not cancelled ends with the Stream's context (Close).
type ctxShare struct {
	cur *sharedCtx
}

const shareDivisor = 32

func (sh *ctxShare) join(parent context.Context, timeout time.Duration) *sharedCtx {
	now := time.Now()
	if g := sh.cur; g != nil {
		if g.timeout == timeout && now.Sub(g.born) < timeout/shareDivisor && g.join() {
			return g
		}
		g.seal()
	}
	g := &sharedCtx{timeout: timeout, born: now, refs: 1}
	g.ctx, g.cancel = context.WithTimeout(parent, timeout)
	sh.cur = g
	return g
}

// sharedCtx is a context shared by consecutive messages of a Stream. It is
// cancelled once it is sealed (no message joins it any more) and every
// message that joined it was answered, or at once to withdraw them.
type sharedCtx struct {
	ctx     context.Context
	cancel  context.CancelFunc
	timeout time.Duration
	born    time.Time

	mu     sync.Mutex
	refs   int
	sealed bool
}

func (g *sharedCtx) join() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.sealed || g.ctx.Err() != nil {
		return false
	}
	g.refs++
	return true
}

func (g *sharedCtx) release() {
	g.mu.Lock()
	g.refs--
	end := g.refs == 0 && g.sealed
	g.mu.Unlock()
	if end {
		g.cancel()
	}
}

func (g *sharedCtx) seal() {
	g.mu.Lock()
	g.sealed = true
	end := g.refs == 0
	g.mu.Unlock()
	if end {
		g.cancel()
	}
}

// withdrawAfter cancels t because an earlier message of its Stream failed
// for reason r. Only the Stream's goroutine calls it, before it waits for t.
// It reports whether t was withdrawn now (false: already, or nothing to
// withdraw).
func (t *Ticket) withdrawAfter(r Reason, err error) bool {
	if t.done == nil || t.cancel == nil || t.withdrawn {
		return false
	}
	t.withdrawn = true
	t.out = Outcome{Reason: r, Err: err}
	t.cancel()
	return true
}

// wait blocks until t's message is decided and classifies the result.
func (t *Ticket) wait() Outcome {
	if t.done == nil {
		return t.out
	}
	if t.shared != nil {
		defer t.shared.release()
	} else {
		defer t.cancel()
	}
	if t.lazy && t.withdrawn {
		return Outcome{Reason: t.out.Reason, Err: fmt.Errorf("%w (%w)", errCancelledAfter, t.out.Err)}
	}
	err := t.done()
	if t.withdrawn {
		// Even if it was stored meanwhile: not acknowledged, so that
		// nothing after the refused message is acknowledged out of order.
		// A stored copy is a duplicate when the device sends it again.
		return Outcome{Reason: t.out.Reason, Err: fmt.Errorf("%w (%w)", errCancelledAfter, t.out.Err)}
	}
	if err == nil {
		return Outcome{Spooled: true}
	}
	base := context.Background()
	if errors.Is(context.Cause(t.ctx), message.ErrShuttingDown) {
		base = t.ctx
	}
	return Outcome{Reason: Classify(base, t.ctx, err), Err: err}
}

// errCancelledAfter is the error of a message withdrawn because an earlier
// message of its Stream was refused.
var errCancelledAfter = errors.New("not stored: an earlier message of this connection was refused")

// ErrCancelledAfter reports (errors.Is) a message withdrawn because an
// earlier one of its connection was refused.
var ErrCancelledAfter = errCancelledAfter
