package mqtt

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// hook is the one mochi hook of the server: authentication, ACLs, limits and
// ingest. See doc.go for the answers it gives.
type hook struct {
	mochi.HookBase
	ms    *mochi.Server
	opts  *Options
	core  *ingest.Core
	log   *slog.Logger
	stats counters
	// refusals rate-limits the Info lines about denied and bad publishes
	// and packets; stats counts every one.
	refusals ingest.RefusalLimiter

	closing atomic.Bool
	// base is the parent of every Stream: Close cancels it with
	// message.ErrShuttingDown, failing what is pending before mochi's
	// Close waits for the client goroutines.
	base   context.Context
	cancel context.CancelCauseFunc

	sessions sync.Map // *mochi.Client → *session, from OnSessionEstablished to OnDisconnect

	// claims holds, per client id, the client whose CONNECT was admitted
	// and whose session is not yet in mochi's registry: with the registry
	// it tells which user holds a client id (see ownerOf).
	claimMu sync.Mutex
	claims  map[string]*mochi.Client
}

// session is the ingest state of one connection.
type session struct {
	cl      *mochi.Client
	stream  *ingest.Stream
	limiter *rate.Limiter // nil without PublishRate

	// unacked counts the client's QoS 1/2 publishes we have not completed:
	// submitted and not yet answered, and QoS 2 ones answered with PUBREC
	// whose PUBREL has not come. An MQTT 5 client may have at most
	// Receive Maximum of them.
	unacked atomic.Int32

	mu      sync.Mutex
	pending map[uint16]struct{} // packet ids submitted and not yet answered
}

// pubTag is what the answer needs to know about a publish.
type pubTag struct {
	id      uint16
	qos     byte
	counted bool          // in session.pending and session.unacked
	done    chan struct{} // closed after the answer; nil: nobody waits for it
}

func newHook(s *Server) *hook {
	h := &hook{ms: s.ms, opts: &s.opts, core: s.opts.Ingest, log: s.log, claims: map[string]*mochi.Client{}}
	h.base, h.cancel = context.WithCancelCause(context.Background())
	return h
}

func (h *hook) shutdown() {
	if h.closing.CompareAndSwap(false, true) {
		h.cancel(message.ErrShuttingDown)
	}
}

func (h *hook) ID() string { return "ferry" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mochi.OnConnect, mochi.OnConnectAuthenticate, mochi.OnSessionEstablish, mochi.OnSessionEstablished, mochi.OnDisconnect,
		mochi.OnACLCheck, mochi.OnSubscribe, mochi.OnPacketRead, mochi.OnPacketEncode,
		mochi.OnPublish, mochi.OnPublishDropped, mochi.OnWillSent, mochi.OnQosComplete, mochi.OnQosDropped,
		mochi.OnQosPublish:
		return true
	}
	return false
}

// OnConnect admits or refuses a client: shutdown, connection cap,
// credentials (or the client certificate's user), the owner of the client
// id, will topic and will ACL. It answers with its own CONNACK so that each
// refusal has the right code for the protocol version and is counted;
// mochi's OnConnectAuthenticate then only confirms.
func (h *hook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	user := string(pk.Connect.Username)
	refuse := func(r ingest.Reason, v5, v3 packets.Code, err error) error {
		h.stats.refused[r].Add(1)
		h.log.Info("mqtt connection refused", "client_id", cl.ID, "user", user, "remote", cl.Net.Remote,
			"listener", cl.Net.Listener, "reason", r.String(), "err", err)
		code := v3
		if cl.Properties.ProtocolVersion == 5 {
			code = v5
		}
		_ = h.ms.SendConnack(cl, code, false, nil) // the connection closes either way
		return fmt.Errorf("mqtt: connect %s refused: %w", cl.ID, err)
	}
	if h.closing.Load() {
		return refuse(ingest.ReasonShuttingDown, packets.ErrServerUnavailable, packets.Err3ServerUnavailable, message.ErrShuttingDown)
	}
	if limit := h.opts.MaxConnections; limit > 0 && atomic.LoadInt64(&h.ms.Info.ClientsConnected) >= int64(limit) {
		return refuse(ingest.ReasonQuota, packets.ErrServerBusy, packets.Err3ServerUnavailable,
			fmt.Errorf("%w: %d connections", message.ErrQuotaExceeded, limit))
	}
	if err := h.capKeepalive(cl); err != nil {
		return refuse(ingest.ReasonProtocol, packets.ErrUnspecifiedError, packets.Err3ClientIdentifierNotValid, err)
	}
	login := message.Login{Username: user, Password: string(pk.Connect.Password), HasPassword: pk.Connect.PasswordFlag,
		Remote: cl.Net.Remote, Protocol: message.ProtoMQTT}
	ctx := h.base
	if oc, ok := cl.Net.Conn.(*outConn); ok && oc.login != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(oc.login.pending.Context(), oc.login.deadline)
		defer cancel()
		name, ok, err := certUser(cl.Net.Conn, oc.login.certUsername)
		switch {
		case err != nil:
			return refuse(ingest.ReasonNotAuthorized, packets.ErrNotAuthorized, packets.Err3NotAuthorized, err)
		case ok && user != "" && user != name:
			return refuse(ingest.ReasonNotAuthorized, packets.ErrNotAuthorized, packets.Err3NotAuthorized,
				fmt.Errorf("%w: username %q is not the certificate's %q", message.ErrNotAuthorized, user, name))
		case ok:
			user = name
			login = message.Login{Username: name, Certified: true, Remote: cl.Net.Remote, Protocol: message.ProtoMQTT}
			cl.Properties.Username = []byte(name)
		}
	}
	if err := h.opts.Auth.Authenticate(ctx, login); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return refuse(ingest.ReasonTimeout, packets.ErrServerBusy, packets.Err3ServerUnavailable, err)
		}
		if user == "" && !pk.Connect.PasswordFlag {
			return refuse(ingest.ReasonNotAuthorized, packets.ErrNotAuthorized, packets.Err3NotAuthorized, err)
		}
		return refuse(ingest.ReasonNotAuthorized, packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword, err)
	}
	if pk.Connect.WillFlag {
		topic := pk.Connect.WillTopic
		if err := h.checkTopic(topic); err != nil {
			return refuse(ingest.ReasonInvalidTopic, packets.ErrTopicNameInvalid, packets.Err3NotAuthorized, fmt.Errorf("will: %w", err))
		}
		if !h.opts.Auth.CanPublish(user, cl.ID, topic) {
			return refuse(ingest.ReasonNotAuthorized, packets.ErrNotAuthorized, packets.Err3NotAuthorized,
				fmt.Errorf("will topic %q: %w", topic, message.ErrNotAuthorized))
		}
	}
	if !h.claim(cl, user) {
		// Taking the id over would hand this user the other one's session
		// (its subscriptions and queued messages) and disconnect it.
		return refuse(ingest.ReasonNotAuthorized, packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid,
			fmt.Errorf("%w: client id %q is in use by another user", message.ErrNotAuthorized, cl.ID))
	}
	return nil
}

// certUser returns the user named by the verified client certificate of
// c, if the listener maps certificates to users and the client sent one.
func certUser(c net.Conn, name func(*x509.Certificate) (string, error)) (string, bool, error) {
	if name == nil {
		return "", false, nil
	}
	cs, ok := connState(c)
	if !ok || len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return "", false, nil
	}
	u, err := name(cs.PeerCertificates[0])
	if err != nil {
		return "", false, fmt.Errorf("%w: client certificate: %w", message.ErrNotAuthorized, err)
	}
	return u, true, nil
}

// claim records that user is taking client id cl.ID and reports whether
// it may: no session of another user holds the id, connected or kept for
// a clean=false client, and no other user's CONNECT for it is being
// admitted. The claim ends when the session is established (mochi's
// registry knows it then) or the connection closes.
func (h *hook) claim(cl *mochi.Client, user string) bool {
	h.claimMu.Lock()
	defer h.claimMu.Unlock()
	if c, ok := h.claims[cl.ID]; ok && c != cl && !c.Closed() && string(c.Properties.Username) != user {
		return false
	}
	if ex, ok := h.ms.Clients.Get(cl.ID); ok && ex != cl && string(ex.Properties.Username) != user {
		return false
	}
	h.claims[cl.ID] = cl
	return true
}

func (h *hook) unclaim(cl *mochi.Client) {
	h.claimMu.Lock()
	if h.claims[cl.ID] == cl {
		delete(h.claims, cl.ID)
	}
	h.claimMu.Unlock()
}

// OnSessionEstablish runs before mochi hands cl the session its client id
// left (clean=false): what the session holds is checked against the
// user's rights now (a reload may have changed them): subscriptions it may
// no longer have are dropped, and so are queued deliveries on topics it may
// no longer read.
func (h *hook) OnSessionEstablish(cl *mochi.Client, _ packets.Packet) {
	ex, ok := h.ms.Clients.Get(cl.ID)
	if !ok || ex == cl {
		return
	}
	user := string(cl.Properties.Username)
	if string(ex.Properties.Username) != user {
		// Only reachable if claim was bypassed: inherit nothing.
		h.log.Warn("mqtt session of another user not inherited", "client_id", cl.ID, "user", user)
		h.ms.UnsubscribeClient(ex)
		ex.ClearInflights()
		return
	}
	for _, sub := range ex.State.Subscriptions.GetAll() {
		if !h.opts.Auth.CanSubscribe(user, cl.ID, shareless(sub.Filter)) {
			ex.State.Subscriptions.Delete(sub.Filter)
			if h.ms.Topics.Unsubscribe(sub.Filter, ex.ID) {
				atomic.AddInt64(&h.ms.Info.Subscriptions, -1)
			}
			h.stats.subscribeDenied.Add(1)
			h.log.Info("mqtt session subscription dropped: no longer allowed", "client_id", cl.ID, "user", user, "topic", sub.Filter)
		}
	}
	for _, pk := range ex.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish && !h.opts.Auth.CanSubscribe(user, cl.ID, pk.TopicName) {
			if ex.State.Inflight.Delete(pk.PacketID) {
				atomic.AddInt64(&h.ms.Info.Inflight, -1)
			}
		}
	}
}

// OnConnectAuthenticate confirms what OnConnect decided (mochi denies when
// no hook provides this).
func (h *hook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

// OnSessionEstablished opens the connection's ingest Stream. mochi calls it
// after CONNACK and before it reads the first packet.
func (h *hook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	h.unclaim(cl)
	if oc, ok := cl.Net.Conn.(*outConn); ok && oc.login != nil {
		oc.login.established.Store(true)
		oc.login.pending.Done()
	}
	h.stats.connections.Add(1)
	ss := &session{cl: cl, pending: map[uint16]struct{}{}}
	if h.opts.PublishRate > 0 {
		ss.limiter = rate.NewLimiter(rate.Limit(h.opts.PublishRate), h.opts.PublishBurst)
	}
	ss.stream = h.core.NewStream(h.base, h.opts.MaxInflight, func(t *ingest.Ticket, out ingest.Outcome) { h.answer(ss, t, out) })
	h.sessions.Store(cl, ss)
}

// OnDisconnect closes the Stream (what is still pending is withdrawn: the
// device will send it again) and counts the packets mochi refused while
// reading (they end the connection before any hook sees them).
func (h *hook) OnDisconnect(cl *mochi.Client, err error, _ bool) {
	h.unclaim(cl)
	if v, ok := h.sessions.LoadAndDelete(cl); ok {
		v.(*session).stream.Close()
	}
	var code packets.Code
	var r ingest.Reason
	switch {
	case err == nil || errors.Is(err, packets.ErrRejectPacket):
		return // normal, or already counted by us
	case errors.Is(err, errSlowConsumer):
		return // counted where it was found
	case errors.Is(err, packets.ErrPacketTooLarge):
		r = ingest.ReasonTooLarge
	case errors.Is(err, errPacketTimeout):
		r = ingest.ReasonReadTimeout
	case errors.Is(err, packets.ErrMalformedTopic), errors.Is(err, packets.ErrProtocolViolationSurplusWildcard),
		errors.Is(err, packets.ErrProtocolViolationNoTopic), errors.Is(err, packets.ErrTopicAliasInvalid):
		r = ingest.ReasonInvalidTopic
	case errors.As(err, &code) && (code.Code == packets.ErrMalformedPacket.Code || code.Code == packets.ErrProtocolViolation.Code):
		r = ingest.ReasonMalformed
	default:
		return
	}
	h.stats.rejected[r].Add(1)
	// mochi refuses the packet while reading it: no topic is known.
	if ok, n := h.refusals.Allow(r); ok {
		h.log.Info("mqtt client dropped for a bad packet", "client_id", cl.ID, "user", string(cl.Properties.Username),
			"remote", cl.Net.Remote, "reason", r.String(), "suppressed", n, "err", err)
	}
}

func (h *hook) session(cl *mochi.Client) *session {
	if v, ok := h.sessions.Load(cl); ok {
		return v.(*session)
	}
	return nil
}

// OnACLCheck authorises a subscription or a delivery. Publishes (write)
// pass here and are checked in OnPublish instead, where a topic alias has
// been resolved and a refusal can wait for the answers of the client's
// earlier messages (mochi's own refusal disconnects at once).
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if write {
		return true
	}
	return h.opts.Auth.CanSubscribe(string(cl.Properties.Username), cl.ID, shareless(topic))
}

// OnSubscribe only counts: mochi asks OnACLCheck per filter and answers
// SUBACK 0x87 (3.1.1: 0x80) itself.
func (h *hook) OnSubscribe(cl *mochi.Client, pk packets.Packet) packets.Packet {
	user := string(cl.Properties.Username)
	for _, f := range pk.Filters {
		if !h.opts.Auth.CanSubscribe(user, cl.ID, shareless(f.Filter)) {
			h.stats.subscribeDenied.Add(1)
			if ok, n := h.refusals.Allow(ingest.ReasonNotAuthorized); ok {
				h.log.Info("mqtt subscribe not authorized", "client_id", cl.ID, "user", user, "topic", f.Filter, "suppressed", n)
			}
		}
	}
	return pk
}

// shareless strips a shared-subscription prefix ($share/group/), so that the
// ACL sees the filter itself.
func shareless(filter string) string {
	if len(filter) > 7 && strings.EqualFold(filter[:7], "$share/") {
		if _, rest, ok := strings.Cut(filter[7:], "/"); ok {
			return rest
		}
	}
	return filter
}

// OnPacketRead checks publish topics before mochi does: mochi silently drops
// a publish to $SYS (a QoS 1 publisher would wait forever for its PUBACK)
// and knows no length or level limits.
func (h *hook) OnPacketRead(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Connect && pk.ReservedBit != 0 {
		// [MQTT-3.1.2-3]: a malformed packet. mochi would answer 0x82,
		// which is no 3.1.1 return code: MQTT 5 gets 0x81, 3.1.1 the
		// connection closed without CONNACK, as both specifications say.
		h.stats.refused[ingest.ReasonMalformed].Add(1)
		h.log.Info("mqtt connection refused", "remote", cl.Net.Remote, "listener", cl.Net.Listener,
			"reason", ingest.ReasonMalformed.String(), "err", "CONNECT reserved flag set")
		if pk.ProtocolVersion == 5 {
			cl.Properties.ProtocolVersion = 5
			_ = h.ms.SendConnack(cl, packets.ErrMalformedPacket, false, nil)
		}
		return pk, packets.ErrRejectPacket // the only error mochi does not ignore here: ends the connection
	}
	if pk.FixedHeader.Type != packets.Publish || pk.TopicName == "" { // "" with a topic alias: checked in OnPublish
		return pk, nil
	}
	if err := h.checkTopic(pk.TopicName); err != nil {
		return pk, h.refuseNow(cl, pk, nil, ingest.ReasonInvalidTopic, err)
	}
	return pk, nil
}

// OnPacketEncode tells MQTT 5 clients in CONNACK the packet size limit, so
// that they refuse oversized messages themselves, and the topic alias
// maximum (mochi accepts aliases but does not say so, and a client must not
// use them unless told).
func (h *hook) OnPacketEncode(cl *mochi.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		if h.opts.MaxPacketSize > 0 {
			pk.Properties.MaximumPacketSize = uint32(h.opts.MaxPacketSize)
		}
		pk.Properties.TopicAliasMaximum = h.ms.Options.Capabilities.TopicAliasMaximum
	}
	return pk
}

// OnPublishDropped: mochi's queue for a local subscriber is full. A QoS 0
// message is dropped for it (counted); a subscriber that cannot take its
// QoS 1/2 messages is disconnected (counted), so that it gets them again
// from its session rather than silently not at all.
func (h *hook) OnPublishDropped(cl *mochi.Client, pk packets.Packet) {
	h.stats.subscriberDrops.Add(1)
	if pk.FixedHeader.Qos == 0 || cl.Closed() {
		return
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		if sub.Qos > 0 && message.Match(shareless(sub.Filter), pk.TopicName) {
			h.slowConsumer(cl, "local delivery queue full")
			return
		}
	}
}

// OnQosPublish: a QoS 1/2 message is now waiting for a connected
// subscriber's acknowledgement. A subscriber with SubscriberQueue of them
// unacknowledged is not keeping up: disconnected (counted), before mochi
// reaches its own bound, where it would drop further messages silently.
func (h *hook) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type == packets.Publish && !cl.Net.Inline && !cl.Closed() && cl.State.Inflight.Len() >= h.opts.SubscriberQueue {
		h.slowConsumer(cl, "too many unacknowledged QoS 1/2 deliveries")
	}
}

// slowConsumer disconnects a subscriber that does not keep up.
func (h *hook) slowConsumer(cl *mochi.Client, why string) {
	h.stats.slowConsumers.Add(1)
	h.log.Info("mqtt subscriber disconnected: not keeping up", "client_id", cl.ID, "remote", cl.Net.Remote, "reason", why)
	cl.Stop(errSlowConsumer)
}

// OnQosComplete ends a client's QoS 2 publish when mochi answered its
// PUBREL with PUBCOMP: it no longer counts against Receive Maximum.
func (h *hook) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Pubrel {
		if ss := h.session(cl); ss != nil {
			ss.unacked.Add(-1)
		}
	}
}

// OnQosDropped: a PUBREL with a failure code also ends the QoS 2 flow.
func (h *hook) OnQosDropped(cl *mochi.Client, pk packets.Packet) { h.OnQosComplete(cl, pk) }

// OnPublish is the ingest path, in the client's read goroutine. Every
// publish from a device is handed to the ingest Stream and mochi is told
// to do nothing (taken, or ErrRejectPacket for a refusal: no
// acknowledgement, no retain, no local delivery): the Stream answers in
// order after each commit (answer) and fans the message out, retained or
// not, through PublishLocal.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // PublishLocal: already accepted, never back to the Sink
	}
	ss := h.session(cl)
	if ss == nil {
		return pk, packets.ErrRejectPacket // not established: cannot happen with mochi's order of calls
	}
	qos := min(pk.FixedHeader.Qos, 2)
	if qos > 0 {
		ss.mu.Lock()
		_, again := ss.pending[pk.PacketID]
		if !again {
			ss.pending[pk.PacketID] = struct{}{}
		}
		ss.mu.Unlock()
		if again {
			// The client sent this packet id again before we answered it:
			// the same message, whose answer is on its way.
			h.stats.retransmits.Add(1)
			return pk, packets.ErrRejectPacket
		}
		if n := ss.unacked.Add(1); cl.Properties.ProtocolVersion == 5 && int(n) > h.opts.MaxInflight {
			ss.unacked.Add(-1)
			h.stats.rejected[ingest.ReasonProtocol].Add(1)
			h.log.Info("mqtt client exceeded receive maximum", "client_id", cl.ID, "receive_maximum", h.opts.MaxInflight)
			_ = h.ms.DisconnectClient(cl, packets.ErrReceiveMaximum)
			return pk, packets.ErrRejectPacket
		}
	}
	if err := h.checkTopic(pk.TopicName); err != nil { // again: a topic alias may have resolved to it
		return pk, h.refuseNow(cl, pk, ss, ingest.ReasonInvalidTopic, err)
	}
	user := string(cl.Properties.Username)
	if !h.opts.Auth.CanPublish(user, cl.ID, pk.TopicName) {
		return pk, h.refuse(cl, pk, ss, ingest.ReasonNotAuthorized, fmt.Errorf("%w: %q", message.ErrNotAuthorized, pk.TopicName))
	}
	if ss.limiter != nil && !ss.limiter.AllowN(h.opts.Now(), 1) {
		return pk, h.refuse(cl, pk, ss, ingest.ReasonQuota, fmt.Errorf("%w: more than %g messages/s", message.ErrQuotaExceeded, h.opts.PublishRate))
	}
	m, err := h.newMessage(cl, pk)
	if err != nil {
		return pk, h.refuse(cl, pk, ss, ingest.ReasonTooLarge, err)
	}
	o := ingest.SubmitOptions{Expiry: time.Duration(pk.Properties.MessageExpiryInterval) * time.Second, Timeout: h.wait(cl)}
	// Submit waits while MaxInflight messages of this client are pending:
	// the client is not read meanwhile (an MQTT 5 client that sends more
	// QoS 1/2 messages than that was disconnected above).
	if !ss.stream.Submit(h.base, m, o, pubTag{id: pk.PacketID, qos: qos, counted: qos > 0}) {
		return pk, packets.ErrRejectPacket // the server is closing
	}
	return taken(pk), nil
}

// taken is what OnPublish gives back for a publish handed to the Stream: a
// packet mochi does nothing more with, as with ErrRejectPacket (marked
// ignored, which retainMessage and publishToSubscribers skip, and QoS 0: no
// acknowledgement, no inflight entry), but without the debug log mochi
// writes for a rejected packet, whose arguments put a copy of the packet on
// the heap whether debug logging is on or not: five allocations and ≈ 1 KB
// per message, 15 → 12 CPU µs per message in BenchmarkIngestPipelinedInstant.
// Refusals still return ErrRejectPacket.
func taken(pk packets.Packet) packets.Packet {
	pk.Ignore = true
	pk.FixedHeader.Qos = 0
	return pk
}

// refuse answers a publish refused before the Sink, in order behind the
// client's earlier messages. When the answer ends the connection (MQTT
// 3.1.1, and MQTT 5 where the table says DISCONNECT), the reader waits for
// it, so that nothing the client sent later is read and stored.
func (h *hook) refuse(cl *mochi.Client, pk packets.Packet, ss *session, r ingest.Reason, err error) error {
	qos := min(pk.FixedHeader.Qos, 2)
	if !disconnects(cl.Properties.ProtocolVersion, qos, r) {
		ss.stream.Refuse(&message.Message{Topic: pk.TopicName, QoS: qos}, r, err, pubTag{id: pk.PacketID, qos: qos, counted: qos > 0})
		return packets.ErrRejectPacket
	}
	return h.refuseNow(cl, pk, ss, r, err)
}

// refuseNow answers a refusal that ends the connection, after the answers
// to the client's earlier messages; the reader waits for it, so that
// nothing the client sent later is read. ss nil: from OnPacketRead, before
// the packet was counted.
func (h *hook) refuseNow(cl *mochi.Client, pk packets.Packet, ss *session, r ingest.Reason, err error) error {
	counted := ss != nil
	if ss == nil {
		ss = h.session(cl)
	}
	qos := min(pk.FixedHeader.Qos, 2)
	if ss == nil {
		h.refused(cl, pk.TopicName, qos, r, err)
		h.disconnect(cl, disconnectCode(r))
		return packets.ErrRejectPacket
	}
	tag := pubTag{id: pk.PacketID, qos: qos, counted: counted && qos > 0, done: make(chan struct{})}
	ss.stream.Refuse(&message.Message{Topic: pk.TopicName, QoS: qos}, r, err, tag)
	<-tag.done
	return packets.ErrRejectPacket
}

// disconnects reports whether the answer to a refusal for r ends the
// connection (see the table in doc.go).
func disconnects(version, qos byte, r ingest.Reason) bool {
	switch {
	case qos == 0:
		return r == ingest.ReasonInvalidTopic
	case version != 5:
		return true
	case r == ingest.ReasonShuttingDown || r == ingest.ReasonInvalidTopic:
		return true
	case qos == 2:
		return r != ingest.ReasonNotAuthorized
	}
	return false
}

// answer writes the answer to one publish, in the client's order, after
// its outcome is known: PUBACK or PUBREC once it is stored (G1), or the
// refusal of the table in doc.go.
func (h *hook) answer(ss *session, t *ingest.Ticket, out ingest.Outcome) {
	tag := t.Tag.(pubTag)
	cl := ss.cl
	if tag.done != nil {
		defer close(tag.done)
	}
	if tag.counted {
		ss.mu.Lock()
		delete(ss.pending, tag.id)
		ss.mu.Unlock()
	}
	if out.OK() {
		if out.Spooled {
			h.stats.accepted[tag.qos].Add(1)
		}
		switch tag.qos {
		case 1:
			ss.unacked.Add(-1)
			_ = cl.WritePacket(ack(packets.Puback, tag.id, packets.CodeSuccess))
		case 2:
			// mochi answers the PUBREL from its inflight store; the flow
			// counts against Receive Maximum until then (OnQosComplete).
			rec := ack(packets.Pubrec, tag.id, packets.CodeSuccess)
			if cl.State.Inflight.Set(rec) {
				atomic.AddInt64(&h.ms.Info.Inflight, 1)
			}
			_ = cl.WritePacket(rec)
		}
		return
	}
	if tag.counted {
		ss.unacked.Add(-1)
	}
	topic := ""
	if t.M != nil {
		topic = t.M.Topic
	}
	h.refused(cl, topic, tag.qos, out.Reason, out.Err)
	switch {
	case tag.qos == 0 && out.Reason != ingest.ReasonInvalidTopic:
		// No answer exists for QoS 0: dropped, counted.
	case disconnects(cl.Properties.ProtocolVersion, tag.qos, out.Reason):
		h.disconnect(cl, disconnectCode(out.Reason))
	case tag.qos == 2: // MQTT 5, not authorized
		_ = cl.WritePacket(ack(packets.Pubrec, tag.id, pubackCode(out.Reason)))
	default:
		_ = cl.WritePacket(ack(packets.Puback, tag.id, pubackCode(out.Reason)))
	}
}

// refused counts and logs a refusal: at Info (a failure of ours at Warn),
// rate-limited per reason.
func (h *hook) refused(cl *mochi.Client, topic string, qos byte, r ingest.Reason, err error) {
	h.stats.rejected[r].Add(1)
	ok, n := h.refusals.Allow(r)
	if !ok {
		return
	}
	lvl := slog.LevelInfo
	if r == ingest.ReasonInternal {
		lvl = slog.LevelWarn
	}
	h.log.Log(context.Background(), lvl, "mqtt publish refused", "client_id", cl.ID, "user", string(cl.Properties.Username),
		"topic", topic, "qos", qos, "reason", r.String(), "suppressed", n, "err", err)
}

// ack builds a PUBACK or PUBREC; the reason string goes with a failure code
// (mochi drops it when the client asked for no problem information).
func ack(typ byte, id uint16, code packets.Code) packets.Packet {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: id, ReasonCode: code.Code}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		pk.Properties.ReasonString = code.Reason
	}
	return pk
}

// OnWillSent spools a will. mochi has already delivered it locally.
func (h *hook) OnWillSent(cl *mochi.Client, pk packets.Packet) {
	if cl.Net.Inline || h.closing.Load() {
		return // wills of our own shutdown are not spooled: the Sink is closing
	}
	m, err := h.newMessage(cl, pk)
	if err != nil {
		h.stats.rejected[ingest.ReasonTooLarge].Add(1)
		h.log.Warn("mqtt will not spooled", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
		return
	}
	out := h.core.Accept(context.Background(), m, ingest.SubmitOptions{Timeout: h.opts.AcceptTimeout}, false)
	switch {
	case !out.OK():
		h.stats.rejected[out.Reason].Add(1)
		h.log.Warn("mqtt will not spooled", "client_id", cl.ID, "topic", m.Topic, "msg_id", m.ID, "reason", out.Reason.String(), "err", out.Err)
	case out.Spooled:
		h.stats.wills.Add(1)
	}
}

func pubackCode(r ingest.Reason) packets.Code {
	switch r {
	case ingest.ReasonFull:
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "spool full"}
	case ingest.ReasonQuota:
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "publish quota exceeded"}
	case ingest.ReasonTimeout:
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "spool busy"}
	case ingest.ReasonNotAuthorized:
		return packets.ErrNotAuthorized
	case ingest.ReasonInvalidTopic:
		return packets.ErrTopicNameInvalid
	case ingest.ReasonTooLarge:
		return packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "message too large"}
	case ingest.ReasonExpired:
		return packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "message expired"}
	}
	return packets.ErrImplementationSpecificError
}

func disconnectCode(r ingest.Reason) packets.Code {
	switch r {
	case ingest.ReasonFull, ingest.ReasonQuota:
		return packets.ErrQuotaExceeded
	case ingest.ReasonTimeout:
		return packets.ErrServerBusy
	case ingest.ReasonNotAuthorized:
		return packets.ErrNotAuthorized
	case ingest.ReasonInvalidTopic:
		return packets.ErrTopicNameInvalid
	case ingest.ReasonTooLarge:
		return packets.ErrPacketTooLarge
	case ingest.ReasonShuttingDown:
		return packets.ErrServerShuttingDown
	}
	return packets.ErrImplementationSpecificError
}

// disconnect ends a client's connection: MQTT 5 clients get a DISCONNECT
// with the reason code, 3.1.1 clients (which have no server DISCONNECT) just
// see the connection close.
func (h *hook) disconnect(cl *mochi.Client, code packets.Code) {
	if cl.Properties.ProtocolVersion == 5 {
		_ = h.ms.DisconnectClient(cl, code) // returns code itself; the client is stopped either way
		return
	}
	cl.Stop(code)
}

// wait is the bound on one message's commit for cl: AcceptTimeout, but at
// most 3/4 of the client's keepalive, so that it gets its PINGRESP in time.
func (h *hook) wait(cl *mochi.Client) time.Duration {
	d := h.opts.AcceptTimeout
	if ka := cl.State.Keepalive; ka > 0 {
		d = min(d, time.Duration(ka)*time.Second*3/4)
	}
	return d
}

// checkTopic applies the topic rules and limits to a topic name, and
// refuses a first level of $share: mochi silently drops such publishes (the
// prefix is reserved for shared subscriptions), which would leave a QoS 1
// publisher waiting for its PUBACK forever (found by FuzzPublishTopic).
func (h *hook) checkTopic(topic string) error {
	if err := ingest.CheckTopic(topic, h.opts.MaxTopicLength, h.opts.MaxTopicLevels); err != nil {
		return err
	}
	if sharePrefix(topic) {
		return fmt.Errorf("%w: %q: $share is reserved for shared subscriptions", message.ErrInvalidTopic, topic)
	}
	return nil
}

// sharePrefix reports whether topic's first level is $share (any case).
func sharePrefix(topic string) bool {
	first, _, _ := strings.Cut(topic, "/")
	return strings.EqualFold(first, "$share")
}

// newMessage builds the message for a publish or will packet.
func (h *hook) newMessage(cl *mochi.Client, pk packets.Packet) (*message.Message, error) {
	if n := len(pk.Properties.User); n > message.MaxHeaders {
		return nil, fmt.Errorf("%w: %d user properties, more than %d", message.ErrTooLarge, n, message.MaxHeaders)
	}
	now := h.opts.Now()
	m := &message.Message{
		ID:          message.NewID(now),
		Topic:       pk.TopicName,
		Payload:     pk.Payload,
		QoS:         min(pk.FixedHeader.Qos, 2),
		Retain:      pk.FixedHeader.Retain,
		ContentType: pk.Properties.ContentType,
		Source: message.Source{
			Protocol: message.ProtoMQTT,
			ClientID: cl.ID,
			Username: string(bytes.Clone(cl.Properties.Username)),
		},
		AcceptedAt:      now,
		Resend:          pk.FixedHeader.Dup,
		ResponseTopic:   pk.Properties.ResponseTopic,
		CorrelationData: pk.Properties.CorrelationData,
		PayloadUTF8:     pk.Properties.PayloadFormatFlag && pk.Properties.PayloadFormat == 1,
	}
	if m.QoS > 0 && pk.FixedHeader.Type == packets.Publish {
		m.SendID = strconv.Itoa(int(pk.PacketID))
	}
	if n := len(pk.Properties.User); n > 0 {
		m.Headers = make([]message.Header, n)
		for i, u := range pk.Properties.User {
			m.Headers[i] = message.Header{Key: u.Key, Value: u.Val}
		}
	}
	return m, nil
}

// mochiLogHandler passes mochi's log records on at Debug (Error stays
// Error), except the per-message records that mochi logs with a dump of the
// whole packet for every publish the hook takes over ("publish packet
// rejected": all of them, since the ingest core answers) or answers with a
// reason code: the hook logs and counts those itself.
//
// It also brings mochi's attributes into our vocabulary ("error" → "err",
// "client" → "client_id") and never writes a packet or will whole: mochi
// passes packets.Packet values (payload, CONNECT password and all) that the
// text handler would print as multi-kilobyte structs. They become a
// one-line summary; any other struct or slice its type name; long strings
// are cut.
type mochiLogHandler struct{ h slog.Handler }

func demote(l slog.Level) slog.Level {
	if l < slog.LevelError {
		return slog.LevelDebug
	}
	return l
}

func (m mochiLogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return m.h.Enabled(ctx, demote(l))
}

func (m mochiLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "publish packet error" || r.Message == "publish packet rejected" {
		return nil
	}
	lvl := demote(r.Level)
	if !m.h.Enabled(ctx, lvl) {
		return nil
	}
	out := slog.NewRecord(r.Time, lvl, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(mochiAttr(a))
		return true
	})
	return m.h.Handle(ctx, out)
}

func (m mochiLogHandler) WithAttrs(a []slog.Attr) slog.Handler {
	conv := make([]slog.Attr, len(a))
	for i := range a {
		conv[i] = mochiAttr(a[i])
	}
	return mochiLogHandler{m.h.WithAttrs(conv)}
}

func (m mochiLogHandler) WithGroup(g string) slog.Handler { return mochiLogHandler{m.h.WithGroup(g)} }

// maxLogString bounds a string attribute from mochi.
const maxLogString = 256

var mochiKeys = map[string]string{"error": "err", "client": "client_id"}

func mochiAttr(a slog.Attr) slog.Attr {
	if k, ok := mochiKeys[a.Key]; ok {
		a.Key = k
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		if s := v.String(); len(s) > maxLogString {
			return slog.String(a.Key, s[:maxLogString]+"…")
		}
		return slog.Attr{Key: a.Key, Value: v}
	case slog.KindAny:
	default:
		return slog.Attr{Key: a.Key, Value: v}
	}
	switch x := v.Any().(type) {
	case packets.Packet:
		return slog.String(a.Key, packetSummary(&x))
	case *packets.Packet:
		return slog.String(a.Key, packetSummary(x))
	case mochi.Will:
		return slog.String(a.Key, fmt.Sprintf("will topic=%q payload_bytes=%d", x.TopicName, len(x.Payload)))
	case error:
		return slog.String(a.Key, cut(x.Error()))
	case fmt.Stringer:
		return slog.String(a.Key, cut(x.String()))
	case nil:
		return slog.Attr{Key: a.Key, Value: v}
	default:
		return slog.String(a.Key, fmt.Sprintf("%T", x))
	}
}

func cut(s string) string {
	if len(s) > maxLogString {
		return s[:maxLogString] + "…"
	}
	return s
}

// packetSummary is a packet in one line: type, id, and for a publish its
// topic, QoS and payload size (never the payload or a CONNECT's password).
func packetSummary(pk *packets.Packet) string {
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = fmt.Sprintf("type %d", pk.FixedHeader.Type)
	}
	var b strings.Builder
	b.WriteString(name)
	if pk.PacketID != 0 {
		fmt.Fprintf(&b, " id=%d", pk.PacketID)
	}
	switch pk.FixedHeader.Type {
	case packets.Publish:
		fmt.Fprintf(&b, " topic=%q qos=%d payload_bytes=%d", cut(pk.TopicName), pk.FixedHeader.Qos, len(pk.Payload))
	case packets.Subscribe, packets.Unsubscribe:
		fmt.Fprintf(&b, " filters=%d", len(pk.Filters))
	case packets.Connect:
		fmt.Fprintf(&b, " client_id=%q", cut(string(pk.Connect.ClientIdentifier)))
	}
	return b.String()
}
