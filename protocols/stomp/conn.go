package stomp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/message"
)

// lingerTime is how long a connection is drained after its final frame
// (ERROR, DISCONNECT receipt) before it is closed: closing a TCP socket with
// unread input sends RST, and the peer may then lose the ERROR frame.
const lingerTime = time.Second

// maxWriteBatch bounds the bytes a writer buffers before writing.
const maxWriteBatch = 64 << 10

// closedCh is the done channel of a pending that is ready at once.
var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// pending is one entry of a connection's ordered output: a SEND being
// accepted, a receipt, an error or a DISCONNECT. The writer handles them in
// frame order, each after its done channel is closed.
type pending struct {
	done       chan struct{}
	receipt    string
	hasReceipt bool
	msg        *message.Message // a SEND; fanned out when accepted
	disconnect bool

	// Set (before done is closed) when the frame failed: the writer sends
	// an ERROR and ends the connection.
	failed bool
	reason int
	errMsg string
	detail string
}

// conn is one client connection. Goroutines: the reader (serve), the writer
// (writeLoop), and one per SEND in flight (accept). Only the writer writes to
// nc, after the CONNECTED frame.
type conn struct {
	s   *Server
	nc  net.Conn
	r   *Reader
	log *slog.Logger

	// Set during CONNECT, read-only afterwards.
	session string
	login   string
	version Version
	hbIn    time.Duration // expected client->server interval; 0: none
	hbOut   time.Duration // server->client interval; 0: none

	ordered chan *pending // reader -> writer, in frame order
	wake    chan struct{} // cap 1: deliveries are waiting or acks made room

	frameStarted bool                // reader goroutine only
	lastByTopic  map[string]*pending // reader only: last SEND per topic, for ordering

	dlMu      sync.Mutex // orders read-deadline changes against stop/kill
	stopping  bool       // the server is closing
	lingering time.Time  // non-zero: the final frame is out; read deadline
	killed    atomic.Bool

	// writer goroutine only
	wbuf       []byte
	lastWrite  time.Time
	lastReason int  // reason of the last ERROR built (writer, or reader before CONNECTED)
	dead       bool // no more writes: the connection failed or ended

	mu      sync.Mutex // guards the fields below and the subscriptions' queues
	subs    map[string]*subscription
	subList []*subscription
	acks    map[string]*delivery
	nextAck uint64
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		s:       s,
		nc:      nc,
		log:     s.log,
		ordered: make(chan *pending, s.opts.MaxPipelined-1),
		wake:    make(chan struct{}, 1),
		subs:    map[string]*subscription{},
		acks:    map[string]*delivery{},

		lastByTopic: map[string]*pending{},
	}
	c.r = NewReader(nc, Limits{MaxBody: s.opts.MaxFrameSize, MaxHeaders: s.opts.MaxHeaders, MaxLine: s.opts.MaxHeaderLine})
	c.r.FrameStarted = c.onFrameStarted
	return c
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer func() { _ = c.nc.Close() }()
	if !c.connect() {
		c.linger()
		return
	}
	c.s.c.connTotal.Add(1)
	c.log.Debug("stomp client connected", "version", c.version.String(), "heart_beat_in", c.hbIn, "heart_beat_out", c.hbOut)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	c.readLoop()
	close(c.ordered)
	<-writerDone
	c.teardown()
	if c.killed.Load() {
		c.linger()
	}
	c.log.Debug("stomp client disconnected")
}

// linger half-closes the connection and drains its input for a short
// while, so that the peer reads our last frame instead of a reset.
func (c *conn) linger() {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	c.setReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.nc, int64(c.s.opts.MaxFrameSize)+1<<20))
}

// stop makes the reader give up: called by Server.Close.
func (c *conn) stop() {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	c.stopping = true
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
}

func (c *conn) isStopping() bool {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return c.stopping
}

// setReadDeadline sets t unless the server is stopping or the connection is
// lingering, whose deadlines win.
func (c *conn) setReadDeadline(t time.Time) {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	switch {
	case c.stopping:
		t = time.Unix(1, 0)
	case !c.lingering.IsZero():
		t = c.lingering
	}
	_ = c.nc.SetReadDeadline(t)
}

func (c *conn) onFrameStarted() {
	c.frameStarted = true
	c.setReadDeadline(time.Now().Add(c.s.opts.ReadTimeout))
}

// readFrame reads the next frame or heart-beat with the idle deadline: none
// without heart-beats, twice the client's interval with them.
func (c *conn) readFrame() (*frame.Frame, error) {
	c.frameStarted = false
	if c.r.Buffered() == 0 {
		var dl time.Time
		if c.hbIn > 0 {
			dl = time.Now().Add(2 * c.hbIn)
		}
		c.setReadDeadline(dl)
	}
	return c.r.Read()
}

// connect reads and answers the CONNECT frame. It writes the answer itself
// (the writer is not running yet) and reports whether the session is up.
func (c *conn) connect() bool {
	c.setReadDeadline(time.Now().Add(c.s.opts.ReadTimeout))
	var f *frame.Frame
	for f == nil {
		var err error
		if f, err = c.r.Read(); err != nil {
			if p := c.readError(err); p != nil {
				c.writeDirect(c.errorFrame(p))
			}
			return false
		}
	}
	if f.Command != frame.CONNECT && f.Command != frame.STOMP {
		c.failDirect(f, ReasonProtocol, "expected CONNECT or STOMP, got "+f.Command, "")
		return false
	}
	_, explicit := f.Header.Contains(frame.AcceptVersion)
	v, ok := negotiate(f.Header)
	if !ok {
		c.failDirect(f, ReasonVersion, "supported protocol versions are 1.0 1.1 1.2", "", frame.Version, "1.0,1.1,1.2")
		return false
	}
	c.version = v
	login, _ := f.Header.Contains(frame.Login)
	pass, hasPass := f.Header.Contains(frame.Passcode)
	if err := c.s.opts.Auth.Authenticate(login, pass, hasPass); err != nil {
		c.log.Info("stomp login refused", "user", login, "remote", c.nc.RemoteAddr().String(), "err", err)
		c.failDirect(f, ReasonAuth, "authentication failed", err.Error())
		return false
	}
	c.login = login
	c.session = c.s.newSessionID()
	c.log = c.s.log.With("client_id", c.session, "user", login)
	hdr := []string{frame.Session, c.session, frame.Server, "ferry"}
	if v >= V11 {
		cx, cy := time.Duration(0), time.Duration(0)
		if hb, ok := f.Header.Contains(frame.HeartBeat); ok {
			var err error
			if cx, cy, err = frame.ParseHeartBeat(hb); err != nil {
				c.failDirect(f, ReasonProtocol, "invalid heart-beat header", "want two non-negative integers (ms), e.g. 10000,10000")
				return false
			}
		}
		sx, sy := c.s.opts.HeartBeat[0], c.s.opts.HeartBeat[1]
		if sx > 0 && cy > 0 {
			c.hbOut = max(sx, cy)
		}
		if sy > 0 && cx > 0 {
			c.hbIn = max(sy, cx)
		}
		hdr = append(hdr, frame.HeartBeat, strconv.FormatInt(sx.Milliseconds(), 10)+","+strconv.FormatInt(sy.Milliseconds(), 10))
	}
	if explicit {
		hdr = append([]string{frame.Version, v.String()}, hdr...)
	}
	c.r.SetVersion(v)
	return c.writeDirect(frame.New(frame.CONNECTED, hdr...))
}

// negotiate picks the highest version both sides speak; no accept-version
// header means 1.0.
func negotiate(h *frame.Header) (Version, bool) {
	av, ok := h.Contains(frame.AcceptVersion)
	if !ok {
		return V10, true
	}
	best, found := V10, false
	for _, s := range strings.Split(av, ",") {
		var v Version
		switch strings.TrimSpace(s) {
		case "1.0":
			v = V10
		case "1.1":
			v = V11
		case "1.2":
			v = V12
		default:
			continue
		}
		if !found || v > best {
			best, found = v, true
		}
	}
	return best, found
}

func (c *conn) failDirect(f *frame.Frame, reason int, msg, detail string, extra ...string) {
	p := &pending{failed: true, reason: reason, errMsg: msg, detail: detail}
	p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
	ef := c.errorFrame(p)
	for i := 0; i+1 < len(extra); i += 2 {
		ef.Header.Add(extra[i], extra[i+1])
	}
	c.writeDirect(ef)
}

func (c *conn) writeDirect(f *frame.Frame) bool {
	if f.Command == frame.ERROR && c.lastReason >= 0 {
		c.s.c.errors[c.lastReason].Add(1)
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.WriteTimeout))
	_, err := c.nc.Write(AppendFrame(nil, f, c.version))
	return err == nil
}

func (c *conn) readLoop() {
	for {
		f, err := c.readFrame()
		if c.killed.Load() {
			return
		}
		if err != nil {
			if p := c.readError(err); p != nil {
				c.push(p)
			}
			return
		}
		if f == nil {
			continue
		}
		if c.handle(f) {
			return
		}
	}
}

// readError turns a read error into the ERROR to send, or nil when the peer
// is gone and there is nobody to tell.
func (c *conn) readError(err error) *pending {
	fail := func(reason int, msg string) *pending {
		c.log.Info("stomp frame refused", "reason", ReasonNames[reason], "err", err)
		return &pending{done: closedCh, failed: true, reason: reason, errMsg: msg, detail: err.Error()}
	}
	var ne net.Error
	switch {
	case c.isStopping():
		return &pending{done: closedCh, failed: true, reason: ReasonShuttingDown, errMsg: "server shutting down"}
	case errors.As(err, &ne) && ne.Timeout():
		if c.frameStarted || c.session == "" {
			return fail(ReasonReadTimeout, "frame not completed in time")
		}
		c.s.c.hbTimeouts.Add(1)
		c.log.Info("stomp heart-beat timeout", "heart_beat_in", c.hbIn)
		return &pending{done: closedCh, failed: true, reason: -1, errMsg: "heart-beat timeout"}
	case errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrTooManyHeaders), errors.Is(err, ErrLineTooLong):
		return fail(ReasonTooLarge, "frame too large")
	case errors.Is(err, ErrMalformedFrame):
		return fail(ReasonMalformed, "malformed frame")
	}
	c.log.Debug("stomp read ended", "err", err)
	return nil
}

// push hands p to the writer; it blocks while MaxPipelined entries wait.
func (c *conn) push(p *pending) {
	c.ordered <- p
}

// fail queues an ERROR answering f; the reader stops after it.
func (c *conn) fail(f *frame.Frame, reason int, msg, detail string) bool {
	p := &pending{done: closedCh, failed: true, reason: reason, errMsg: msg, detail: detail}
	p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
	c.log.Info("stomp frame refused", "reason", ReasonNames[reason], "command", f.Command, "err", msg)
	c.push(p)
	return true
}

// receipt queues the RECEIPT of f, if it asked for one.
func (c *conn) receipt(f *frame.Frame) {
	if r, ok := f.Header.Contains(frame.Receipt); ok {
		c.push(&pending{done: closedCh, receipt: r, hasReceipt: true})
	}
}

// handle processes one frame and reports whether the reader must stop.
func (c *conn) handle(f *frame.Frame) bool {
	switch f.Command {
	case frame.SEND:
		return c.onSend(f)
	case frame.SUBSCRIBE:
		return c.onSubscribe(f)
	case frame.UNSUBSCRIBE:
		return c.onUnsubscribe(f)
	case frame.ACK, frame.NACK:
		return c.onAck(f)
	case frame.DISCONNECT:
		p := &pending{done: closedCh, disconnect: true}
		p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
		c.push(p)
		return true
	case frame.BEGIN, frame.COMMIT, frame.ABORT:
		return c.fail(f, ReasonProtocol, "transactions are not supported", "send without a transaction header")
	case frame.CONNECT, frame.STOMP:
		return c.fail(f, ReasonProtocol, "already connected", "")
	}
	return c.fail(f, ReasonProtocol, "unexpected command "+f.Command, "only client frames are accepted")
}

// standardSendHeaders are not copied into Message.Headers.
var standardSendHeaders = map[string]bool{
	frame.Destination: true, frame.ContentLength: true, frame.ContentType: true,
	frame.Receipt: true, frame.Transaction: true,
}

func (c *conn) onSend(f *frame.Frame) bool {
	dest, ok := f.Header.Contains(frame.Destination)
	if !ok {
		return c.fail(f, ReasonProtocol, "SEND without destination header", "")
	}
	if _, ok := f.Header.Contains(frame.Transaction); ok {
		return c.fail(f, ReasonProtocol, "transactions are not supported", "send without a transaction header")
	}
	topic, _, err := message.FromSTOMP(dest)
	if err == nil {
		err = message.ValidateTopic(topic)
	}
	if err != nil {
		return c.fail(f, ReasonInvalidDestination, "invalid destination", err.Error())
	}
	if !c.s.opts.Auth.CanPublish(c.login, c.session, topic) {
		return c.fail(f, ReasonNotAuthorized, "not authorized to send to "+dest, "")
	}
	now := c.s.opts.Now()
	m := &message.Message{
		ID:         message.NewID(now),
		Topic:      topic,
		Payload:    f.Body,
		QoS:        1,
		Source:     message.Source{Protocol: message.ProtoSTOMP, ClientID: c.session, Username: c.login},
		AcceptedAt: now,
	}
	m.ContentType, _ = f.Header.Contains(frame.ContentType)
	for i := range f.Header.Len() {
		k, v := f.Header.GetAt(i)
		if !standardSendHeaders[k] {
			m.Headers = append(m.Headers, message.Header{Key: k, Value: v})
		}
	}
	var route message.Route
	if c.s.opts.Router != nil {
		route = c.s.opts.Router.Route(topic)
	}
	route.Apply(m)
	p := &pending{msg: m}
	p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
	if route.LocalOnly {
		p.done = closedCh
		c.push(p)
		return false
	}
	p.done = make(chan struct{})
	if os, ok := c.s.opts.Sink.(message.OrderedSink); ok {
		// Submitted here, in frame order, by the reader: the sink keeps
		// that order while all of them are in flight.
		ctx, cancel := context.WithTimeout(c.s.ctx, c.s.opts.AcceptTimeout)
		wait := os.Submit(ctx, m)
		c.push(p)
		go func() {
			defer close(p.done)
			err := wait()
			cancel()
			c.acceptResult(p, dest, err)
		}()
		return false
	}
	// A plain Sink gives no order between concurrent Accepts, so SENDs to
	// one topic are accepted one after another (G3: order per topic);
	// SENDs to different topics are in flight together.
	prev := c.lastByTopic[topic]
	c.lastByTopic[topic] = p
	c.pruneTopics()
	c.push(p)
	go func() {
		defer close(p.done)
		if prev != nil {
			<-prev.done
			if prev.failed {
				// The connection ends with prev's ERROR; storing this one
				// would put it ahead of prev when the client resends.
				p.failed, p.reason, p.errMsg = true, prev.reason, prev.errMsg
				return
			}
		}
		ctx, cancel := context.WithTimeout(c.s.ctx, c.s.opts.AcceptTimeout)
		err := c.s.opts.Sink.Accept(ctx, m)
		cancel()
		c.acceptResult(p, dest, err)
	}()
	return false
}

// pruneTopics forgets the per-topic predecessors that are done, once the
// map has grown: it only needs the SENDs still in flight.
func (c *conn) pruneTopics() {
	if len(c.lastByTopic) <= 2*c.s.opts.MaxPipelined {
		return
	}
	for t, p := range c.lastByTopic {
		select {
		case <-p.done:
			delete(c.lastByTopic, t)
		default:
		}
	}
}

// acceptResult records the Sink's answer for p (before p.done is closed).
func (c *conn) acceptResult(p *pending, dest string, err error) {
	if err == nil {
		return
	}
	p.failed = true
	switch {
	case errors.Is(err, message.ErrFull):
		p.reason, p.errMsg = ReasonSinkFull, "spool full: message not accepted, send it again later"
	case errors.Is(err, message.ErrQuotaExceeded):
		p.reason, p.errMsg = ReasonSinkQuota, "quota exceeded: message not accepted"
	case errors.Is(err, message.ErrTooLarge):
		p.reason, p.errMsg = ReasonSinkTooLarge, "message too large"
	case errors.Is(err, message.ErrExpired):
		p.reason, p.errMsg = ReasonSinkExpired, "message expired before it was stored"
	case errors.Is(err, message.ErrNotAuthorized):
		p.reason, p.errMsg = ReasonNotAuthorized, "not authorized to send to "+dest
	case errors.Is(err, message.ErrShuttingDown), c.s.ctx.Err() != nil:
		p.reason, p.errMsg = ReasonShuttingDown, "server shutting down: message not accepted"
	case errors.Is(err, context.DeadlineExceeded):
		p.reason, p.errMsg = ReasonSinkTimeout, "timed out storing the message: not accepted"
	default:
		p.reason, p.errMsg = ReasonSinkError, "internal error: message not accepted"
		c.log.Error("stomp sink accept failed", "topic", p.msg.Topic, "msg_id", p.msg.ID, "err", err)
		return
	}
	p.detail = err.Error()
	c.log.Info("stomp message refused", "topic", p.msg.Topic, "msg_id", p.msg.ID, "reason", ReasonNames[p.reason], "err", err)
}

func (c *conn) onSubscribe(f *frame.Frame) bool {
	dest, ok := f.Header.Contains(frame.Destination)
	if !ok {
		return c.fail(f, ReasonProtocol, "SUBSCRIBE without destination header", "")
	}
	id, ok := f.Header.Contains(frame.Id)
	if !ok {
		if c.version >= V11 {
			return c.fail(f, ReasonProtocol, "SUBSCRIBE without id header", "")
		}
		id = dest // 1.0: the destination identifies the subscription
	}
	var ack ackMode
	switch a, _ := f.Header.Contains(frame.Ack); a {
	case "", "auto":
	case "client":
		ack = ackClient
	case "client-individual":
		ack = ackClientIndividual
	default:
		return c.fail(f, ReasonProtocol, "invalid ack mode "+strconv.Quote(a), "want auto, client or client-individual")
	}
	filter, kind, err := message.FilterFromSTOMP(dest)
	if err == nil {
		err = message.ValidateFilter(filter)
	}
	if err != nil {
		return c.fail(f, ReasonInvalidDestination, "invalid destination", err.Error())
	}
	if !c.s.opts.Auth.CanSubscribe(c.login, c.session, filter) {
		return c.fail(f, ReasonNotAuthorized, "not authorized to subscribe to "+dest, "")
	}
	sub := &subscription{c: c, id: id, dest: dest, filter: filter, kind: kind, ack: ack}
	c.mu.Lock()
	switch {
	case c.subs[id] != nil:
		c.mu.Unlock()
		return c.fail(f, ReasonProtocol, "subscription id "+strconv.Quote(id)+" already in use", "")
	case len(c.subs) >= c.s.opts.MaxSubscriptions:
		c.mu.Unlock()
		return c.fail(f, ReasonTooLarge, "too many subscriptions", "at most "+strconv.Itoa(c.s.opts.MaxSubscriptions)+" per connection")
	}
	c.subs[id] = sub
	c.subList = append(c.subList, sub)
	c.mu.Unlock()
	c.s.reg.add(sub)
	c.receipt(f)
	return false
}

func (c *conn) onUnsubscribe(f *frame.Frame) bool {
	var sub *subscription
	id, ok := f.Header.Contains(frame.Id)
	c.mu.Lock()
	switch {
	case ok:
		sub = c.subs[id]
	case c.version == V10:
		// 1.0 may unsubscribe by destination.
		id, ok = f.Header.Contains(frame.Destination)
		for _, s := range c.subList {
			if ok && s.dest == id {
				sub = s
				break
			}
		}
	}
	c.mu.Unlock()
	if !ok {
		return c.fail(f, ReasonProtocol, "UNSUBSCRIBE without id header", "")
	}
	if sub == nil {
		return c.fail(f, ReasonProtocol, "no subscription with id "+strconv.Quote(id), "")
	}
	c.removeSub(sub)
	c.receipt(f)
	return false
}

// removeSub unregisters sub and hands back what it still held.
func (c *conn) removeSub(sub *subscription) {
	c.s.reg.remove(sub)
	c.mu.Lock()
	sub.removed = true
	delete(c.subs, sub.id)
	for i, s := range c.subList {
		if s == sub {
			c.subList = append(c.subList[:i:i], c.subList[i+1:]...)
			break
		}
	}
	// Older first: the unacked ones were delivered before the queued.
	left := make([]*delivery, 0, len(sub.unacked)+len(sub.queue))
	left = append(append(left, sub.unacked...), sub.queue...)
	for _, d := range sub.unacked {
		delete(c.acks, d.ackID)
	}
	sub.queue, sub.unacked = nil, nil
	c.mu.Unlock()
	c.s.release(sub, left)
}

func (c *conn) teardown() {
	c.mu.Lock()
	subs := append([]*subscription(nil), c.subList...)
	c.mu.Unlock()
	for _, sub := range subs {
		c.removeSub(sub)
	}
}

func (c *conn) onAck(f *frame.Frame) bool {
	nack := f.Command == frame.NACK
	if nack && c.version == V10 {
		return c.fail(f, ReasonProtocol, "NACK is not defined in STOMP 1.0", "")
	}
	// 1.2 acks by the MESSAGE's ack header (sent as id); 1.0/1.1 by
	// message-id. Accept either, the version's own form first.
	first, second := frame.MessageId, frame.Id
	if c.version == V12 {
		first, second = frame.Id, frame.MessageId
	}
	id, ok := f.Header.Contains(first)
	if !ok {
		id, ok = f.Header.Contains(second)
	}
	if !ok {
		return c.fail(f, ReasonProtocol, f.Command+" without "+first+" header", "")
	}
	subID, hasSub := f.Header.Contains(frame.Subscription)
	c.mu.Lock()
	d := c.acks[id]
	if d == nil || (hasSub && d.sub.id != subID) {
		c.mu.Unlock()
		return c.fail(f, ReasonProtocol, f.Command+" for unknown message "+strconv.Quote(id), "not delivered on this connection, already acknowledged, or another subscription")
	}
	sub := d.sub
	var done []*delivery
	if sub.ack == ackClient {
		// Cumulative: everything delivered on sub up to and including d.
		i := 0
		for i < len(sub.unacked) && sub.unacked[i] != d {
			i++
		}
		done = append(done, sub.unacked[:i+1]...)
		sub.unacked = append(sub.unacked[:0:0], sub.unacked[i+1:]...)
	} else {
		for i, u := range sub.unacked {
			if u == d {
				sub.unacked = append(sub.unacked[:i:i], sub.unacked[i+1:]...)
				break
			}
		}
		done = append(done, d)
	}
	for _, d := range done {
		delete(c.acks, d.ackID)
	}
	c.mu.Unlock()
	c.wakeWriter() // room for more unacked deliveries
	if nack {
		for _, d := range done {
			c.s.redeliver(d)
		}
	}
	c.receipt(f)
	return false
}

// enqueue queues d for sub unless sub is gone or its queue is full.
func (c *conn) enqueue(sub *subscription, d *delivery) bool {
	c.mu.Lock()
	if sub.removed || len(sub.queue) >= c.s.opts.SubscriptionQueue {
		c.mu.Unlock()
		return false
	}
	d.sub = sub
	sub.queue = append(sub.queue, d)
	c.mu.Unlock()
	c.wakeWriter()
	return true
}

func (c *conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}
