package stomp

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/protocols/ingest"
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
	msg        *message.Message // a SEND
	dest       string           // its destination, for the error text
	disconnect bool
	// A COMMIT: the transaction's SENDs, stored all or none, and its ACKs
	// and NACKs, applied once they are.
	batch []*message.Message
	acks  []txAck
	tx    string

	// Set (before done is closed) when the frame failed: the writer sends
	// an ERROR and ends the connection.
	failed    bool
	reason    ingest.Reason
	uncounted bool // not a refusal (heart-beat timeout): not in Stats.Errors
	errMsg    string
	detail    string
}

// conn is one client connection. Goroutines: the reader (serve), the writer
// (writeLoop), and one per SEND in flight (accept). Only the writer writes to
// nc, after the CONNECTED frame.
type conn struct {
	s   *Server
	nc  net.Conn
	r   *Reader
	log *slog.Logger

	certUsername func(*x509.Certificate) (string, error) // from the listener; nil: none
	pending      *pendingConn                            // in the pre-login set until CONNECTED

	// Set during CONNECT, read-only afterwards.
	counted  bool   // holds a slot in Server's sessions count (MaxConnections)
	session  string // server-made, unique: the CONNECTED session header
	clientID string // the client-id header, else session: %c in ACLs, Source.ClientID
	login    string
	limiter  *rate.Limiter // nil without PublishRate
	version  Version
	hbIn     time.Duration // expected client->server interval; 0: none
	hbOut    time.Duration // server->client interval; 0: none

	ordered chan *pending // reader -> writer, in frame order
	wake    chan struct{} // cap 1: deliveries are waiting or acks made room
	stream  *ingest.Stream

	frameStarted bool // reader goroutine only

	// Open transactions (reader goroutine only) and what they hold in all.
	txs             map[string]*stompTx
	txMsgs, txBytes int

	dlMu      sync.Mutex // orders read-deadline changes against stop/kill
	stopping  bool       // the server is closing
	lingering time.Time  // non-zero: the final frame is out; read deadline
	killed    atomic.Bool

	// writer goroutine only
	perFrame   bool // each frame is written on its own: one WebSocket message per frame
	wbuf       []byte
	lastWrite  time.Time
	lastReason ingest.Reason // reason of the last ERROR built (writer, or reader before CONNECTED)
	lastCount  bool          // count lastReason when the ERROR is written directly
	dead       bool          // no more writes: the connection failed or ended
	slow       atomic.Bool   // disconnected as a slow consumer

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
	}
	_, c.perFrame = nc.(*wsConn)
	c.r = NewReader(nc, Limits{MaxBody: s.opts.MaxFrameSize, MaxHeaders: s.opts.MaxHeaders, MaxLine: s.opts.MaxHeaderLine})
	c.r.FrameStarted = c.onFrameStarted
	return c
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer func() { _ = c.nc.Close() }()
	ok := c.connect()
	c.pending.Done()
	if !ok {
		if c.counted {
			c.s.c.sessions.Add(-1)
		}
		c.linger()
		return
	}
	defer c.s.c.sessions.Add(-1)
	c.log.Debug("stomp client connected", "version", c.version.String(), "heart_beat_in", c.hbIn, "heart_beat_out", c.hbOut)
	c.stream = c.s.opts.Ingest.NewStream(c.s.ctx, c.s.opts.MaxPipelined, c.answer)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	c.readLoop()
	close(c.ordered)
	<-writerDone
	c.stream.Close()
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

// slowConsumer ends a connection whose subscriber does not keep up: its
// socket is closed at once (its writer may be stuck in a write), which ends
// the reader and the session. It never blocks.
func (c *conn) slowConsumer() {
	if !c.slow.CompareAndSwap(false, true) {
		return
	}
	c.s.c.slowConsumers.Add(1)
	c.log.Info("stomp subscriber disconnected: not keeping up", "queue", c.s.opts.SubscriptionQueue)
	c.killed.Store(true)
	_ = c.nc.Close()
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
// Before the login, the frame is read with the small MaxConnectSize limit
// and within ConnectTimeout.
func (c *conn) connect() bool {
	deadline := time.Now().Add(c.s.opts.ConnectTimeout)
	c.setReadDeadline(deadline)
	lim := Limits{MaxBody: c.s.opts.MaxFrameSize, MaxHeaders: c.s.opts.MaxHeaders, MaxLine: c.s.opts.MaxHeaderLine}
	pre := lim
	pre.MaxFrame = c.s.opts.MaxConnectSize
	c.r.SetLimits(pre)
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
	c.r.SetLimits(lim)
	if f.Command != frame.CONNECT && f.Command != frame.STOMP {
		c.failDirect(f, ingest.ReasonProtocol, "expected CONNECT or STOMP, got "+f.Command, "")
		return false
	}
	_, explicit := f.Header.Contains(frame.AcceptVersion)
	v, ok := negotiate(f.Header)
	if !ok {
		c.failDirect(f, ingest.ReasonVersion, "supported protocol versions are 1.0 1.1 1.2", "", frame.Version, "1.0,1.1,1.2")
		return false
	}
	c.version = v
	// The slot is taken here, before the login, and given back by serve
	// if the login fails: checked and taken in one step, so that a second
	// CONNECT cannot slip in before the first is counted (it did, on a
	// slow machine: the count went up only after CONNECTED was sent).
	c.counted = true
	if n, max := c.s.c.sessions.Add(1), c.s.opts.MaxConnections; max > 0 && n > int64(max) {
		c.s.c.connRefused.Add(1)
		c.log.Warn("connection refused: too many connections", "remote", c.nc.RemoteAddr().String(), "max", max)
		c.failDirect(f, ingest.ReasonQuota, "too many connections", "at most "+strconv.Itoa(max))
		return false
	}
	login, _ := f.Header.Contains(frame.Login)
	pass, hasPass := f.Header.Contains(frame.Passcode)
	l := message.Login{Username: login, Password: pass, HasPassword: hasPass, Remote: c.nc.RemoteAddr().String(), Protocol: message.ProtoSTOMP}
	if name, ok, err := c.certUser(); err != nil {
		c.log.Info("stomp login refused", "user", login, "remote", l.Remote, "err", err)
		c.failDirect(f, ingest.ReasonNotAuthorized, "authentication failed", err.Error())
		return false
	} else if ok {
		if login != "" && login != name {
			c.log.Info("stomp login refused", "user", login, "remote", l.Remote, "err", "login is not the certificate's user", "cert_user", name)
			c.failDirect(f, ingest.ReasonNotAuthorized, "authentication failed", "login "+strconv.Quote(login)+" is not the certificate's user")
			return false
		}
		login = name
		l = message.Login{Username: name, Certified: true, Remote: l.Remote, Protocol: message.ProtoSTOMP}
	}
	ctx, cancel := context.WithDeadline(c.pending.Context(), deadline)
	stop := context.AfterFunc(c.s.ctx, cancel)
	err := c.s.opts.Auth.Authenticate(ctx, l)
	stop()
	cancel()
	if err != nil {
		c.log.Info("stomp login refused", "user", login, "remote", l.Remote, "err", err)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			c.failDirect(f, ingest.ReasonTimeout, "server busy: login not checked in time, try again", "")
			return false
		}
		c.failDirect(f, ingest.ReasonNotAuthorized, "authentication failed", err.Error())
		return false
	}
	c.login = login
	c.session = c.s.newSessionID()
	c.clientID = c.session
	if id, ok := f.Header.Contains(clientIDHeader); ok && id != "" {
		c.clientID = id
	}
	if c.s.opts.PublishRate > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(c.s.opts.PublishRate), c.s.opts.PublishBurst)
	}
	c.log = c.s.log.With("client_id", c.clientID, "session", c.session, "user", login)
	hdr := []string{frame.Session, c.session, frame.Server, "ferry"}
	if v >= V11 {
		cx, cy := time.Duration(0), time.Duration(0)
		if hb, ok := f.Header.Contains(frame.HeartBeat); ok {
			var err error
			if cx, cy, err = frame.ParseHeartBeat(hb); err != nil {
				c.failDirect(f, ingest.ReasonProtocol, "invalid heart-beat header", "want two non-negative integers (ms), e.g. 10000,10000")
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
	// Counted before CONNECTED goes out: a client that has its CONNECTED
	// finds itself in Stats (it did not, on a slow machine).
	c.s.c.connTotal.Add(1)
	return c.writeDirect(frame.New(frame.CONNECTED, hdr...))
}

// clientIDHeader is the CONNECT header that names the client (as ActiveMQ
// and Artemis read it): %c in ACLs and the message source's client id.
const clientIDHeader = "client-id"

// certUser returns the user named by the client's verified certificate, if
// the listener maps certificates to users and the client sent one.
func (c *conn) certUser() (string, bool, error) {
	tc, ok := tlsConnOf(c.nc)
	if c.certUsername == nil || !ok {
		return "", false, nil
	}
	cs := tc.ConnectionState()
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return "", false, nil
	}
	name, err := c.certUsername(cs.PeerCertificates[0])
	if err != nil {
		return "", false, fmt.Errorf("%w: client certificate: %w", message.ErrNotAuthorized, err)
	}
	return name, true, nil
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

func (c *conn) failDirect(f *frame.Frame, reason ingest.Reason, msg, detail string, extra ...string) {
	p := &pending{failed: true, reason: reason, errMsg: msg, detail: detail}
	p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
	ef := c.errorFrame(p)
	for i := 0; i+1 < len(extra); i += 2 {
		ef.Header.Add(extra[i], extra[i+1])
	}
	c.writeDirect(ef)
}

func (c *conn) writeDirect(f *frame.Frame) bool {
	if f.Command == frame.ERROR && c.lastCount {
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
	fail := func(reason ingest.Reason, msg string) *pending {
		if ok, n := c.s.refusals.Allow(reason); ok {
			c.log.Info("stomp frame refused", "remote", c.nc.RemoteAddr().String(), "reason", reason.String(), "suppressed", n, "err", err)
		}
		return &pending{done: closedCh, failed: true, reason: reason, errMsg: msg, detail: err.Error()}
	}
	var ne net.Error
	switch {
	case c.isStopping():
		return &pending{done: closedCh, failed: true, reason: ingest.ReasonShuttingDown, errMsg: "server shutting down"}
	case errors.As(err, &ne) && ne.Timeout():
		if c.frameStarted || c.session == "" {
			return fail(ingest.ReasonReadTimeout, "frame not completed in time")
		}
		c.s.c.hbTimeouts.Add(1)
		c.log.Info("stomp heart-beat timeout", "heart_beat_in", c.hbIn)
		return &pending{done: closedCh, failed: true, uncounted: true, errMsg: "heart-beat timeout"}
	case errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrTooManyHeaders), errors.Is(err, ErrLineTooLong):
		return fail(ingest.ReasonTooLarge, "frame too large")
	case errors.Is(err, ErrMalformedFrame):
		return fail(ingest.ReasonMalformed, "malformed frame")
	}
	c.log.Debug("stomp read ended", "err", err)
	return nil
}

// push hands p to the writer; it blocks while MaxPipelined entries wait.
func (c *conn) push(p *pending) {
	c.ordered <- p
}

// fail queues an ERROR answering f; the reader stops after it.
func (c *conn) fail(f *frame.Frame, reason ingest.Reason, msg, detail string) bool {
	p := &pending{done: closedCh, failed: true, reason: reason, errMsg: msg, detail: detail}
	p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
	if ok, n := c.s.refusals.Allow(reason); ok {
		dest, _ := f.Header.Contains(frame.Destination)
		c.log.Info("stomp frame refused", "remote", c.nc.RemoteAddr().String(), "command", f.Command, "destination", dest,
			"reason", reason.String(), "suppressed", n, "err", msg)
	}
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
	case frame.BEGIN:
		return c.onBegin(f)
	case frame.COMMIT:
		return c.onCommit(f)
	case frame.ABORT:
		return c.onAbort(f)
	case frame.CONNECT, frame.STOMP:
		return c.fail(f, ingest.ReasonProtocol, "already connected", "")
	}
	return c.fail(f, ingest.ReasonProtocol, "unexpected command "+f.Command, "only client frames are accepted")
}

// standardSendHeaders are not copied into Message.Headers.
var standardSendHeaders = map[string]bool{
	frame.Destination: true, frame.ContentLength: true, frame.ContentType: true,
	frame.Receipt: true, frame.Transaction: true,
}

func (c *conn) onSend(f *frame.Frame) bool {
	dest, ok := f.Header.Contains(frame.Destination)
	if !ok {
		return c.fail(f, ingest.ReasonProtocol, "SEND without destination header", "")
	}
	topic, _, err := message.FromSTOMP(dest)
	if err == nil {
		err = ingest.CheckTopic(topic, c.s.opts.MaxTopicLength, c.s.opts.MaxTopicLevels)
	}
	if err != nil {
		return c.fail(f, ingest.ReasonInvalidTopic, "invalid destination", err.Error())
	}
	if !c.s.opts.Auth.CanPublish(c.login, c.clientID, topic) {
		return c.fail(f, ingest.ReasonNotAuthorized, "not authorized to send to "+dest, "")
	}
	if c.limiter != nil && !c.limiter.AllowN(c.s.opts.Now(), 1) {
		return c.fail(f, ingest.ReasonQuota, "quota exceeded: message not accepted",
			fmt.Sprintf("more than %g messages/s on this connection", c.s.opts.PublishRate))
	}
	now := c.s.opts.Now()
	m := &message.Message{
		ID:         message.NewID(now),
		Topic:      topic,
		Payload:    f.Body,
		QoS:        1,
		Source:     message.Source{Protocol: message.ProtoSTOMP, ClientID: c.clientID, Username: c.login},
		AcceptedAt: now,
	}
	m.ContentType, _ = f.Header.Contains(frame.ContentType)
	if id, ok := f.Header.Contains(frame.MessageId); ok && id != "" {
		// The client names its message: sent again (after a lost
		// receipt) it is found and not stored twice. STOMP has no DUP
		// flag, so every such SEND is checked.
		m.SendID, m.Resend = id, true
	}
	for i := range f.Header.Len() {
		k, v := f.Header.GetAt(i)
		if !standardSendHeaders[k] {
			m.Headers = append(m.Headers, message.Header{Key: k, Value: v})
		}
	}
	if txID, ok := f.Header.Contains(frame.Transaction); ok {
		return c.sendInTx(f, txID, m)
	}
	p := &pending{msg: m, done: make(chan struct{}), dest: dest}
	p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
	// Submitted here, in frame order, by the reader; answered in that order
	// by the Stream (answer) after each commit, while up to MaxPipelined are
	// in flight. Submit waits while that many are pending: the connection
	// is not read meanwhile.
	if !c.stream.Submit(c.s.ctx, m, ingest.SubmitOptions{Timeout: c.s.opts.AcceptTimeout}, p) {
		p.failed, p.reason, p.errMsg = true, ingest.ReasonShuttingDown, "server shutting down: message not accepted"
		close(p.done)
	}
	c.push(p)
	return false
}

// answer records the outcome of a SEND, in frame order, for the writer;
// the ingest core fans an accepted message out after it returns.
func (c *conn) answer(t *ingest.Ticket, out ingest.Outcome) {
	p := t.Tag.(*pending)
	defer close(p.done)
	if out.OK() {
		c.applyAcks(p.acks) // a COMMIT's: the transaction is stored
		return
	}
	p.failed, p.reason, p.detail = true, out.Reason, out.Err.Error()
	what := "message"
	if p.batch != nil {
		what = "transaction " + strconv.Quote(p.tx)
	}
	switch out.Reason {
	case ingest.ReasonFull:
		p.errMsg = "spool full: " + what + " not accepted, send it again later"
	case ingest.ReasonQuota:
		p.errMsg = "quota exceeded: " + what + " not accepted"
	case ingest.ReasonTooLarge:
		p.errMsg = what + " too large"
	case ingest.ReasonExpired:
		p.errMsg = what + " expired before it was stored"
	case ingest.ReasonNotAuthorized:
		p.errMsg = "not authorized to send to " + p.dest
	case ingest.ReasonInvalidTopic:
		p.errMsg = "invalid destination"
	case ingest.ReasonShuttingDown:
		p.errMsg = "server shutting down: " + what + " not accepted"
	case ingest.ReasonTimeout:
		p.errMsg = "timed out storing the " + what + ": not accepted"
	default:
		p.errMsg = "internal error: " + what + " not accepted"
		if ok, n := c.s.refusals.Allow(out.Reason); ok {
			c.log.Error("stomp message not stored", append(p.logAttrs(), "suppressed", n, "err", out.Err)...)
		}
		return
	}
	if ok, n := c.s.refusals.Allow(out.Reason); ok {
		c.log.Info("stomp message refused", append(p.logAttrs(), "reason", out.Reason.String(), "suppressed", n, "err", out.Err)...)
	}
}

// logAttrs name a SEND's message, or a COMMIT's transaction.
func (p *pending) logAttrs() []any {
	if p.msg == nil {
		return []any{"transaction", p.tx, "messages", len(p.batch)}
	}
	return []any{"topic", p.msg.Topic, "msg_id", p.msg.ID}
}

func (c *conn) onSubscribe(f *frame.Frame) bool {
	dest, ok := f.Header.Contains(frame.Destination)
	if !ok {
		return c.fail(f, ingest.ReasonProtocol, "SUBSCRIBE without destination header", "")
	}
	id, ok := f.Header.Contains(frame.Id)
	if !ok {
		if c.version >= V11 {
			return c.fail(f, ingest.ReasonProtocol, "SUBSCRIBE without id header", "")
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
		return c.fail(f, ingest.ReasonProtocol, "invalid ack mode "+strconv.Quote(a), "want auto, client or client-individual")
	}
	filter, kind, err := message.FilterFromSTOMP(dest)
	if err == nil {
		err = message.ValidateFilter(filter)
	}
	if err != nil {
		return c.fail(f, ingest.ReasonInvalidTopic, "invalid destination", err.Error())
	}
	if !c.s.opts.Auth.CanSubscribe(c.login, c.clientID, filter) {
		return c.fail(f, ingest.ReasonNotAuthorized, "not authorized to subscribe to "+dest, "")
	}
	sub := &subscription{c: c, id: id, dest: dest, filter: filter, kind: kind, ack: ack}
	c.mu.Lock()
	switch {
	case c.subs[id] != nil:
		c.mu.Unlock()
		return c.fail(f, ingest.ReasonProtocol, "subscription id "+strconv.Quote(id)+" already in use", "")
	case len(c.subs) >= c.s.opts.MaxSubscriptions:
		c.mu.Unlock()
		return c.fail(f, ingest.ReasonTooLarge, "too many subscriptions", "at most "+strconv.Itoa(c.s.opts.MaxSubscriptions)+" per connection")
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
		return c.fail(f, ingest.ReasonProtocol, "UNSUBSCRIBE without id header", "")
	}
	if sub == nil {
		return c.fail(f, ingest.ReasonProtocol, "no subscription with id "+strconv.Quote(id), "")
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
	sub.queue, sub.unacked, sub.held = nil, nil, 0
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
		return c.fail(f, ingest.ReasonProtocol, "NACK is not defined in STOMP 1.0", "")
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
		return c.fail(f, ingest.ReasonProtocol, f.Command+" without "+first+" header", "")
	}
	subID, hasSub := f.Header.Contains(frame.Subscription)
	unknown := func() bool {
		return c.fail(f, ingest.ReasonProtocol, f.Command+" for unknown message "+strconv.Quote(id), "not delivered on this connection, already acknowledged, or another subscription")
	}
	if txID, ok := f.Header.Contains(frame.Transaction); ok {
		tx, ok := c.openTx(f, txID)
		if !ok {
			return true
		}
		c.mu.Lock()
		d := c.acks[id]
		c.mu.Unlock()
		if d == nil || (hasSub && d.sub.id != subID) {
			return unknown()
		}
		tx.acks = append(tx.acks, txAck{nack: nack, id: id, subID: subID, hasSub: hasSub})
		c.receipt(f)
		return false
	}
	if !c.ack(id, subID, hasSub, nack) {
		return unknown()
	}
	c.receipt(f)
	return false
}

// ack acknowledges (or, with nack, refuses) the delivery acked as id; false
// when there is none (on subscription subID, when hasSub).
func (c *conn) ack(id, subID string, hasSub, nack bool) bool {
	c.mu.Lock()
	d := c.acks[id]
	if d == nil || (hasSub && d.sub.id != subID) {
		c.mu.Unlock()
		return false
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
		sub.held -= deliverySize(d)
	}
	c.mu.Unlock()
	c.wakeWriter() // room for more unacked deliveries
	if nack {
		for _, d := range done {
			c.s.redeliver(d)
		}
	}
	return true
}

// enqueue queues d for sub unless sub is gone or its queue is full.
func (c *conn) enqueue(sub *subscription, d *delivery) bool {
	c.mu.Lock()
	size := deliverySize(d)
	if sub.removed || len(sub.queue) >= c.s.opts.SubscriptionQueue ||
		(sub.held > 0 && sub.held+size > c.s.opts.SubscriptionQueueBytes) {
		c.mu.Unlock()
		return false
	}
	d.sub = sub
	sub.held += size
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
