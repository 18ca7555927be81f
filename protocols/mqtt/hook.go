package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/protocols/message"
)

// hook is the one mochi hook of the server: authentication, ACLs, limits and
// ingest. See doc.go for the answers it gives.
type hook struct {
	mochi.HookBase
	ms    *mochi.Server
	opts  *Options
	log   *slog.Logger
	stats counters

	// base is the parent of every Accept context; Close cancels it with
	// message.ErrShuttingDown so that pending waits end before mochi's Close
	// waits for the client goroutines.
	base    context.Context
	cancel  context.CancelCauseFunc
	closing atomic.Bool

	limiters sync.Map // *mochi.Client → *rate.Limiter, only with PublishRate > 0
}

func newHook(s *Server) *hook {
	h := &hook{ms: s.ms, opts: &s.opts, log: s.log}
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
	case mochi.OnConnect, mochi.OnConnectAuthenticate, mochi.OnSessionEstablished, mochi.OnDisconnect,
		mochi.OnACLCheck, mochi.OnSubscribe, mochi.OnPacketRead, mochi.OnPacketEncode,
		mochi.OnPublish, mochi.OnPublishDropped, mochi.OnWillSent:
		return true
	}
	return false
}

// OnConnect admits or refuses a client: shutdown, connection cap,
// credentials, will topic and will ACL. It answers with its own CONNACK so
// that each refusal has the right code for the protocol version and is
// counted; mochi's OnConnectAuthenticate then only confirms.
func (h *hook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	user := string(pk.Connect.Username)
	refuse := func(r Reason, v5, v3 packets.Code, err error) error {
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
		return refuse(ReasonShuttingDown, packets.ErrServerUnavailable, packets.Err3ServerUnavailable, message.ErrShuttingDown)
	}
	if limit := h.opts.MaxConnections; limit > 0 && atomic.LoadInt64(&h.ms.Info.ClientsConnected) >= int64(limit) {
		return refuse(ReasonQuota, packets.ErrServerBusy, packets.Err3ServerUnavailable,
			fmt.Errorf("%w: %d connections", message.ErrQuotaExceeded, limit))
	}
	if err := h.opts.Auth.Authenticate(user, string(pk.Connect.Password), pk.Connect.PasswordFlag); err != nil {
		if user == "" && !pk.Connect.PasswordFlag {
			return refuse(ReasonNotAuthorized, packets.ErrNotAuthorized, packets.Err3NotAuthorized, err)
		}
		return refuse(ReasonNotAuthorized, packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword, err)
	}
	if pk.Connect.WillFlag {
		topic := pk.Connect.WillTopic
		if err := h.checkTopic(topic); err != nil {
			return refuse(ReasonInvalidTopic, packets.ErrTopicNameInvalid, packets.Err3NotAuthorized, fmt.Errorf("will: %w", err))
		}
		if !h.opts.Auth.CanPublish(user, cl.ID, topic) {
			return refuse(ReasonNotAuthorized, packets.ErrNotAuthorized, packets.Err3NotAuthorized,
				fmt.Errorf("will topic %q: %w", topic, message.ErrNotAuthorized))
		}
	}
	return nil
}

// OnConnectAuthenticate confirms what OnConnect decided (mochi denies when
// no hook provides this).
func (h *hook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (h *hook) OnSessionEstablished(*mochi.Client, packets.Packet) { h.stats.connections.Add(1) }

// OnACLCheck authorises a publish (write) or a subscription or delivery.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	user := string(cl.Properties.Username)
	if write {
		if h.opts.Auth.CanPublish(user, cl.ID, topic) {
			return true
		}
		h.stats.rejected[ReasonNotAuthorized].Add(1)
		h.log.Debug("mqtt publish not authorized", "client_id", cl.ID, "user", user, "topic", topic)
		return false
	}
	return h.opts.Auth.CanSubscribe(user, cl.ID, shareless(topic))
}

// OnSubscribe only counts: mochi asks OnACLCheck per filter and answers
// SUBACK 0x87 (3.1.1: 0x80) itself.
func (h *hook) OnSubscribe(cl *mochi.Client, pk packets.Packet) packets.Packet {
	user := string(cl.Properties.Username)
	for _, f := range pk.Filters {
		if !h.opts.Auth.CanSubscribe(user, cl.ID, shareless(f.Filter)) {
			h.stats.subscribeDenied.Add(1)
			h.log.Debug("mqtt subscribe not authorized", "client_id", cl.ID, "user", user, "topic", f.Filter)
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
	if pk.FixedHeader.Type != packets.Publish || pk.TopicName == "" { // "" with a topic alias: checked in OnPublish
		return pk, nil
	}
	if err := h.checkTopic(pk.TopicName); err != nil {
		return pk, h.refuseTopic(cl, pk, err)
	}
	return pk, nil
}

func (h *hook) refuseTopic(cl *mochi.Client, pk packets.Packet, err error) error {
	h.stats.rejected[ReasonInvalidTopic].Add(1)
	h.log.Debug("mqtt publish refused", "client_id", cl.ID, "topic", pk.TopicName, "reason", ReasonInvalidTopic.String(), "err", err)
	h.disconnect(cl, packets.ErrTopicNameInvalid)
	return packets.ErrRejectPacket
}

// OnPacketEncode tells MQTT 5 clients the packet size limit in CONNACK, so
// that they refuse oversized messages themselves.
func (h *hook) OnPacketEncode(cl *mochi.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && h.opts.MaxPacketSize > 0 && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		pk.Properties.MaximumPacketSize = uint32(h.opts.MaxPacketSize)
	}
	return pk
}

func (h *hook) OnPublishDropped(*mochi.Client, packets.Packet) { h.stats.subscriberDrops.Add(1) }

// OnDisconnect forgets the client's rate limiter and counts the packets mochi
// refused while reading (they end the connection before any hook sees them).
func (h *hook) OnDisconnect(cl *mochi.Client, err error, _ bool) {
	h.limiters.Delete(cl)
	var code packets.Code
	switch {
	case err == nil || errors.Is(err, packets.ErrRejectPacket):
		return // normal, or already counted by us
	case errors.Is(err, packets.ErrPacketTooLarge):
		h.stats.rejected[ReasonTooLarge].Add(1)
	case errors.Is(err, packets.ErrMalformedTopic), errors.Is(err, packets.ErrProtocolViolationSurplusWildcard),
		errors.Is(err, packets.ErrProtocolViolationNoTopic), errors.Is(err, packets.ErrTopicAliasInvalid):
		h.stats.rejected[ReasonInvalidTopic].Add(1)
	case errors.As(err, &code) && (code.Code == packets.ErrMalformedPacket.Code || code.Code == packets.ErrProtocolViolation.Code):
		h.stats.rejected[ReasonMalformed].Add(1)
	default:
		return
	}
	h.log.Debug("mqtt client dropped for a bad packet", "client_id", cl.ID, "remote", cl.Net.Remote, "err", err)
}

// OnPublish is the ingest path. It runs in the client's read goroutine before
// mochi writes PUBACK/PUBREC, retains or delivers the message; returning nil
// lets all three happen, ErrRejectPacket none of them, and a packets.Code
// (MQTT 5 QoS 1 only) sends that code in the PUBACK instead.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // PublishLocal: already accepted elsewhere, never back to the Sink
	}
	if err := h.checkTopic(pk.TopicName); err != nil { // again: a topic alias may have resolved to it
		return pk, h.refuseTopic(cl, pk, err)
	}
	if !h.allow(cl) {
		return h.refusePublish(cl, pk, ReasonQuota, fmt.Errorf("%w: more than %g messages/s", message.ErrQuotaExceeded, h.opts.PublishRate))
	}
	m, err := h.newMessage(cl, pk)
	if err != nil {
		return h.refusePublish(cl, pk, ReasonTooLarge, err)
	}
	spooled, r, err := h.ingest(m, h.wait(cl), time.Duration(pk.Properties.MessageExpiryInterval)*time.Second)
	if err != nil {
		return h.refusePublish(cl, pk, r, err)
	}
	if spooled {
		h.stats.accepted[m.QoS].Add(1)
	}
	return pk, nil
}

// OnWillSent spools a will. mochi has already delivered it locally.
func (h *hook) OnWillSent(cl *mochi.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	m, err := h.newMessage(cl, pk)
	if err != nil {
		h.stats.rejected[ReasonTooLarge].Add(1)
		h.log.Warn("mqtt will not spooled", "client_id", cl.ID, "topic", pk.TopicName, "err", err)
		return
	}
	spooled, r, err := h.ingest(m, h.opts.AcceptTimeout, 0)
	if err != nil {
		h.stats.rejected[r].Add(1)
		h.log.Warn("mqtt will not spooled", "client_id", cl.ID, "topic", m.Topic, "msg_id", m.ID, "reason", r.String(), "err", err)
		return
	}
	if spooled {
		h.stats.wills.Add(1)
	}
}

// ingest routes m and hands it to the Sink (unless the route keeps it
// local), then to Options.Local. spooled reports whether the Sink took it;
// on error r says why it was refused.
func (h *hook) ingest(m *message.Message, wait, expiry time.Duration) (spooled bool, r Reason, err error) {
	route := h.opts.Router.Route(m.Topic)
	route.Apply(m)
	if expiry > 0 { // MQTT 5 message expiry: the earlier of it and the route's TTL
		if exp := m.AcceptedAt.Add(expiry); m.ExpiresAt.IsZero() || exp.Before(m.ExpiresAt) {
			m.ExpiresAt = exp
		}
	}
	if route.LocalOnly || (m.QoS == 0 && route.QoS0 == message.QoS0Drop) {
		h.stats.localOnly.Add(1)
		h.fanOut(m)
		return false, 0, nil
	}
	if h.closing.Load() {
		return false, ReasonShuttingDown, message.ErrShuttingDown
	}
	ctx, cancel := context.WithTimeout(h.base, wait)
	defer cancel()
	if err = h.opts.Sink.Accept(ctx, m); err != nil {
		return false, h.classify(ctx, err), err
	}
	h.fanOut(m)
	return true, 0, nil
}

func (h *hook) fanOut(m *message.Message) {
	if h.opts.Local != nil {
		h.opts.Local.PublishLocal(m)
	}
}

func (h *hook) classify(ctx context.Context, err error) Reason {
	switch {
	case errors.Is(err, message.ErrFull):
		return ReasonFull
	case errors.Is(err, message.ErrQuotaExceeded):
		return ReasonQuota
	case errors.Is(err, message.ErrTooLarge):
		return ReasonTooLarge
	case errors.Is(err, message.ErrExpired):
		return ReasonExpired
	case errors.Is(err, message.ErrNotAuthorized):
		return ReasonNotAuthorized
	case errors.Is(err, message.ErrShuttingDown), h.base.Err() != nil:
		return ReasonShuttingDown
	case ctx.Err() != nil:
		return ReasonTimeout
	}
	return ReasonInternal
}

// refusePublish counts and answers a publish the Sink (or a limit) refused;
// see the table in doc.go.
func (h *hook) refusePublish(cl *mochi.Client, pk packets.Packet, r Reason, err error) (packets.Packet, error) {
	h.stats.rejected[r].Add(1)
	qos := pk.FixedHeader.Qos
	lvl := slog.LevelDebug
	if r == ReasonInternal {
		lvl = slog.LevelWarn
	}
	h.log.Log(context.Background(), lvl, "mqtt publish refused", "client_id", cl.ID, "topic", pk.TopicName,
		"qos", qos, "reason", r.String(), "err", err)
	if qos == 0 {
		return pk, packets.ErrRejectPacket // no answer exists for QoS 0: dropped, counted
	}
	if cl.Properties.ProtocolVersion == 5 && qos == 1 && r != ReasonShuttingDown {
		return pk, pubackCode(r)
	}
	h.disconnect(cl, disconnectCode(r))
	return pk, packets.ErrRejectPacket
}

func pubackCode(r Reason) packets.Code {
	switch r {
	case ReasonFull:
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "spool full"}
	case ReasonQuota:
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "publish quota exceeded"}
	case ReasonTimeout:
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "spool busy"}
	case ReasonNotAuthorized:
		return packets.ErrNotAuthorized
	case ReasonInvalidTopic:
		return packets.ErrTopicNameInvalid
	case ReasonTooLarge:
		return packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "message too large"}
	case ReasonExpired:
		return packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "message expired"}
	}
	return packets.ErrImplementationSpecificError
}

func disconnectCode(r Reason) packets.Code {
	switch r {
	case ReasonFull, ReasonQuota:
		return packets.ErrQuotaExceeded
	case ReasonTimeout:
		return packets.ErrServerBusy
	case ReasonNotAuthorized:
		return packets.ErrNotAuthorized
	case ReasonInvalidTopic:
		return packets.ErrTopicNameInvalid
	case ReasonTooLarge:
		return packets.ErrPacketTooLarge
	case ReasonShuttingDown:
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

// wait is the bound on one Accept for cl: AcceptTimeout, but at most 3/4 of
// the client's keepalive, so that it gets its PINGRESP in time.
func (h *hook) wait(cl *mochi.Client) time.Duration {
	d := h.opts.AcceptTimeout
	if ka := cl.State.Keepalive; ka > 0 {
		d = min(d, time.Duration(ka)*time.Second*3/4)
	}
	return d
}

func (h *hook) allow(cl *mochi.Client) bool {
	if h.opts.PublishRate <= 0 {
		return true
	}
	v, ok := h.limiters.Load(cl)
	if !ok {
		v, _ = h.limiters.LoadOrStore(cl, rate.NewLimiter(rate.Limit(h.opts.PublishRate), h.opts.PublishBurst))
	}
	return v.(*rate.Limiter).AllowN(h.opts.Now(), 1)
}

// checkTopic applies the topic limits to a topic name.
func (h *hook) checkTopic(topic string) error {
	if len(topic) > h.opts.MaxTopicLength {
		return fmt.Errorf("%w: %d bytes, more than %d", message.ErrInvalidTopic, len(topic), h.opts.MaxTopicLength)
	}
	if limit := h.opts.MaxTopicLevels; limit > 0 {
		if n := strings.Count(topic, "/") + 1; n > limit {
			return fmt.Errorf("%w: %d levels, more than %d", message.ErrInvalidTopic, n, limit)
		}
	}
	if len(topic) >= len(mochi.SysPrefix) && strings.EqualFold(topic[:len(mochi.SysPrefix)], mochi.SysPrefix) {
		return fmt.Errorf("%w: %s is reserved", message.ErrInvalidTopic, mochi.SysPrefix)
	}
	return message.ValidateTopic(topic)
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
		AcceptedAt: now,
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
// Error), except the per-message "publish packet error" that mochi logs for
// every reason code the hook returns: the hook logs and counts those itself.
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
	if r.Message == "publish packet error" {
		return nil
	}
	r.Level = demote(r.Level)
	if !m.h.Enabled(ctx, r.Level) {
		return nil
	}
	return m.h.Handle(ctx, r)
}

func (m mochiLogHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return mochiLogHandler{m.h.WithAttrs(a)}
}

func (m mochiLogHandler) WithGroup(g string) slog.Handler { return mochiLogHandler{m.h.WithGroup(g)} }
