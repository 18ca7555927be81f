package mqtt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ferrymq/ferry/protocols/message"
)

// StateKind names one kind of local broker state (the same numbering as
// the spool's StateKind, which the gateway passes through).
type StateKind uint8

// The kinds of state the server keeps.
const (
	StateRetained      StateKind = iota // topic → message.Encode of the retained message
	StateClients                        // client id → its persistent session (JSON)
	StateSubscriptions                  // client id, 0, filter → subscription (JSON)
	StateInflight                       // client id, 0, sequence(8) → queued or in-flight delivery (JSON)
)

// StateWrite is one change of local state.
type StateWrite struct {
	Kind       StateKind
	Key        []byte
	Value      []byte // empty: delete
	Prefix     bool   // delete every key starting with Key
	Stamp      int64  // an older (smaller) stamp never replaces a newer write of Key; 0: always
	BestEffort bool   // skipped, not refused, at the store's own cap
}

// State is the durable store the server keeps its retained messages and
// persistent sessions in: the gateway passes the spool's (one file, one
// writer, group commit). Write queues writes that are applied in order and
// returns their wait (callers may drop it); Iterate reads in key order.
type State interface {
	Write(ctx context.Context, ws ...StateWrite) (wait func() error)
	Iterate(kind StateKind, prefix []byte, fn func(key, value []byte) error) error
}

// StoreOptions bound the local state (Options.Store). Zero values: the
// defaults written next to them; <0: no bound.
type StoreOptions struct {
	// State is where retained messages and persistent sessions are kept;
	// nil: in memory only (mochi's), lost at a restart.
	State State
	// MaxRetainedBytes caps the retained messages (topic + encoded
	// message + 12 bytes each; default 64 MiB). A retained message that
	// does not fit is delivered but not retained (counted); the spool
	// refuses a QoS 1/2 one under the same cap (the publisher's answer of
	// a full spool).
	MaxRetainedBytes int64
	// MaxSessions caps the persistent sessions (default 1000): a CONNECT
	// that would start one more is refused (MQTT 5: 0x97 quota exceeded;
	// 3.1.1: 0x03 server unavailable).
	MaxSessions int
	// MaxSessionMessages and MaxSessionBytes cap the QoS 1/2 messages
	// queued or in flight for one persistent session (defaults 1000 and 8
	// MiB): past either the oldest is dropped (counted).
	MaxSessionMessages int
	MaxSessionBytes    int64
}

// Defaults of StoreOptions.
const (
	DefaultMaxRetainedBytes   = 64 << 20
	DefaultMaxSessions        = 1000
	DefaultMaxSessionMessages = 1000
	DefaultMaxSessionBytes    = 8 << 20
)

func (o *StoreOptions) setDefaults() {
	def := func(v, d int64) int64 {
		switch {
		case v == 0:
			return d
		case v < 0:
			return -1
		}
		return v
	}
	o.MaxRetainedBytes = def(o.MaxRetainedBytes, DefaultMaxRetainedBytes)
	o.MaxSessions = int(def(int64(o.MaxSessions), DefaultMaxSessions))
	o.MaxSessionMessages = int(def(int64(o.MaxSessionMessages), DefaultMaxSessionMessages))
	o.MaxSessionBytes = def(o.MaxSessionBytes, DefaultMaxSessionBytes)
}

// Limits of the local state, indexes of StoreStats.LimitHits.
const (
	LimitRetainedBytes = iota // a retained message delivered but not retained
	LimitSessions             // a CONNECT refused: too many persistent sessions
	LimitSessionQueue         // a queued message dropped: its session's queue was full
	numLimits
)

// LimitNames are the metric label values of the limits.
var LimitNames = [numLimits]string{"retained_bytes", "sessions", "session_queue"}

// StoreStats are the local state's vitals.
type StoreStats struct {
	Retained        int64 // retained messages
	RetainedBytes   int64
	Sessions        int64 // persistent sessions (connected or not)
	Queued          int64 // QoS 1/2 messages queued or in flight for them
	QueuedBytes     int64
	Restored        [4]int64 // at start: retained, sessions, subscriptions, queued messages
	ExpiredSessions uint64   // persistent sessions expired (by mochi, or at their persisted deadline)
	LimitHits       [numLimits]uint64
}

// store is the mochi hook that mirrors retained messages and persistent
// sessions into State, restores them at start (restore: mochi's own
// readStore loses session deadlines and message expiry) and keeps them
// within StoreOptions. Its writes are not awaited, except a retained
// publish, which the Sink commits with the message (spoolsink): the
// publisher's ack waits for that commit.
type store struct {
	mochi.HookBase
	srv *Server
	st  State
	o   StoreOptions
	ctx context.Context

	loading atomic.Bool // restore is running: mochi's callbacks are ours

	mu        sync.Mutex
	retained  map[string]int64 // topic → bytes counted
	retBytes  int64
	sessions  map[string]*persisted
	seq       uint64
	restored  [4]int64
	deadlines map[string]time.Time // restored sessions that have not reconnected: when they expire

	expired atomic.Uint64
	hits    [numLimits]atomic.Uint64

	stop chan struct{}
	done chan struct{}
}

// persisted is the state of one persistent session.
type persisted struct {
	queued map[uint16]queuedMsg // packet id → its record
	bytes  int64
}

type queuedMsg struct {
	key  []byte
	size int64
	seq  uint64
}

// clientRecord is a StateClients value.
type clientRecord struct {
	Client storage.Client `json:"client"`
	// DisconnectedAt is when the session lost its connection (unix
	// seconds); 0: connected. Expiry is its session expiry in seconds: it
	// ends at DisconnectedAt + Expiry, whatever restarts happen between.
	DisconnectedAt int64  `json:"disconnected_at,omitempty"`
	Expiry         uint32 `json:"expiry"`
}

// inflightRecord is a StateInflight value.
type inflightRecord struct {
	Msg    storage.Message `json:"msg"`
	Expiry int64           `json:"expiry,omitempty"` // unix seconds; 0: none
	V      byte            `json:"v,omitempty"`      // protocol version the packet was made for
}

func newStore(srv *Server, o StoreOptions) *store {
	o.setDefaults()
	return &store{srv: srv, st: o.State, o: o, ctx: context.Background(),
		retained: map[string]int64{}, sessions: map[string]*persisted{}, deadlines: map[string]time.Time{},
		stop: make(chan struct{}), done: make(chan struct{})}
}

func (h *store) ID() string { return "ferry-store" }

func (h *store) Provides(b byte) bool {
	switch b {
	case mochi.OnConnect, mochi.OnSessionEstablished, mochi.OnDisconnect, mochi.OnSubscribed, mochi.OnUnsubscribed,
		mochi.OnQosPublish, mochi.OnQosComplete, mochi.OnQosDropped, mochi.OnClientExpired, mochi.OnRetainedExpired:
		return true
	}
	return false
}

func (h *store) write(ws ...StateWrite) { _ = h.st.Write(h.ctx, ws...) }

func persistent(cl *mochi.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// expiry is cl's session expiry in seconds, as mochi applies it.
func (h *store) expiry(cl *mochi.Client) uint32 {
	limit := h.srv.ms.Options.Capabilities.MaximumSessionExpiryInterval
	if cl.Properties.ProtocolVersion == 5 {
		return min(cl.Properties.Props.SessionExpiryInterval, limit)
	}
	return limit
}

func clientPrefix(id string) []byte { return append([]byte(id), 0) }

// OnConnect refuses a persistent session beyond MaxSessions.
func (h *store) OnConnect(cl *mochi.Client, _ packets.Packet) error {
	if cl.Net.Inline || !persistent(cl) || h.o.MaxSessions < 0 {
		return nil
	}
	h.mu.Lock()
	_, known := h.sessions[cl.ID]
	n := len(h.sessions)
	h.mu.Unlock()
	if known || n < h.o.MaxSessions {
		return nil
	}
	h.hits[LimitSessions].Add(1)
	h.srv.log.Info("mqtt connection refused: too many persistent sessions", "client_id", cl.ID, "remote", cl.Net.Remote,
		"listener", cl.Net.Listener, "max_sessions", h.o.MaxSessions)
	code := packets.Err3ServerUnavailable
	if cl.Properties.ProtocolVersion == 5 {
		code = packets.ErrQuotaExceeded
	}
	_ = h.srv.ms.SendConnack(cl, code, false, nil)
	return fmt.Errorf("mqtt: connect %s refused: %w: %d persistent sessions", cl.ID, message.ErrQuotaExceeded, h.o.MaxSessions)
}

// OnSessionEstablished records a persistent session, or forgets the one
// a clean start replaced.
func (h *store) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	if cl.Net.Inline {
		return
	}
	h.mu.Lock()
	delete(h.deadlines, cl.ID)
	_, known := h.sessions[cl.ID]
	if cl.Properties.Clean || !persistent(cl) {
		// mochi started this session empty: what was stored is gone.
		if known {
			delete(h.sessions, cl.ID)
			h.mu.Unlock()
			h.write(StateWrite{Kind: StateSubscriptions, Key: clientPrefix(cl.ID), Prefix: true},
				StateWrite{Kind: StateInflight, Key: clientPrefix(cl.ID), Prefix: true},
				StateWrite{Kind: StateClients, Key: []byte(cl.ID)})
			h.mu.Lock()
			known = false
		}
	}
	if !persistent(cl) {
		h.mu.Unlock()
		return
	}
	if !known {
		h.sessions[cl.ID] = &persisted{queued: map[uint16]queuedMsg{}}
	}
	h.mu.Unlock()
	h.writeClient(cl, 0)
}

func (h *store) writeClient(cl *mochi.Client, disconnected int64) {
	props := cl.Properties.Props.Copy(false)
	rec := clientRecord{
		Client: storage.Client{ID: cl.ID, Remote: cl.Net.Remote, Listener: cl.Net.Listener, Username: cl.Properties.Username,
			Clean: cl.Properties.Clean, ProtocolVersion: cl.Properties.ProtocolVersion,
			Properties: storage.ClientProperties{SessionExpiryInterval: props.SessionExpiryInterval,
				SessionExpiryIntervalFlag: props.SessionExpiryIntervalFlag, ReceiveMaximum: props.ReceiveMaximum,
				TopicAliasMaximum: props.TopicAliasMaximum, User: props.User, MaximumPacketSize: props.MaximumPacketSize,
				RequestProblemInfo: props.RequestProblemInfo, RequestProblemInfoFlag: props.RequestProblemInfoFlag,
				RequestResponseInfo: props.RequestResponseInfo}},
		DisconnectedAt: disconnected, Expiry: h.expiry(cl),
	}
	b, _ := json.Marshal(rec)
	h.write(StateWrite{Kind: StateClients, Key: []byte(cl.ID), Value: b})
}

// OnDisconnect starts a persistent session's expiry (persisted) or
// forgets a clean one.
func (h *store) OnDisconnect(cl *mochi.Client, _ error, expire bool) {
	if cl.Net.Inline || h.loading.Load() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return
	}
	h.mu.Lock()
	_, known := h.sessions[cl.ID]
	h.mu.Unlock()
	if !known {
		return
	}
	if expire {
		h.forget(cl.ID)
		return
	}
	h.writeClient(cl, h.srv.opts.Now().Unix())
}

// forget deletes every record of a session.
func (h *store) forget(id string) {
	h.mu.Lock()
	delete(h.sessions, id)
	delete(h.deadlines, id)
	h.mu.Unlock()
	h.write(StateWrite{Kind: StateSubscriptions, Key: clientPrefix(id), Prefix: true},
		StateWrite{Kind: StateInflight, Key: clientPrefix(id), Prefix: true},
		StateWrite{Kind: StateClients, Key: []byte(id)})
}

func (h *store) persisted(cl *mochi.Client) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.sessions[cl.ID]
	return ok && !cl.Net.Inline
}

// OnSubscribed stores the granted subscriptions of a persistent session.
func (h *store) OnSubscribed(cl *mochi.Client, pk packets.Packet, codes []byte) {
	if !h.persisted(cl) {
		return
	}
	var ws []StateWrite
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= 0x80 {
			continue
		}
		b, _ := json.Marshal(storage.Subscription{Client: cl.ID, Filter: f.Filter, Identifier: f.Identifier, Qos: codes[i],
			RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished, NoLocal: f.NoLocal})
		ws = append(ws, StateWrite{Kind: StateSubscriptions, Key: append(clientPrefix(cl.ID), f.Filter...), Value: b})
	}
	if len(ws) > 0 {
		h.write(ws...)
	}
}

// OnUnsubscribed deletes them.
func (h *store) OnUnsubscribed(cl *mochi.Client, pk packets.Packet) {
	if !h.persisted(cl) {
		return
	}
	ws := make([]StateWrite, 0, len(pk.Filters))
	for _, f := range pk.Filters {
		ws = append(ws, StateWrite{Kind: StateSubscriptions, Key: append(clientPrefix(cl.ID), f.Filter...)})
	}
	h.write(ws...)
}

func inflightKey(id string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(clientPrefix(id), seq)
}

// OnQosPublish stores a QoS 1/2 delivery queued or sent to a persistent
// session (and the PUBREL that replaces a QoS 2 one), dropping the oldest
// when the session's queue is full.
func (h *store) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if cl.Net.Inline || (pk.FixedHeader.Type != packets.Publish && pk.FixedHeader.Type != packets.Pubrel) {
		return
	}
	h.mu.Lock()
	ss, ok := h.sessions[cl.ID]
	if !ok || h.loading.Load() {
		h.mu.Unlock()
		return
	}
	q, again := ss.queued[pk.PacketID]
	if again && pk.FixedHeader.Type == packets.Publish {
		h.mu.Unlock()
		return // a resend: stored already
	}
	if !again && pk.FixedHeader.Type == packets.Pubrel {
		h.mu.Unlock()
		return // an inbound QoS 2 flow of the client's own: not a delivery
	}
	rec := inflightRecord{Msg: toStorage(cl.ID, pk), Expiry: pk.Expiry, V: pk.ProtocolVersion}
	b, _ := json.Marshal(rec)
	size := int64(len(b))
	if again {
		ss.bytes += size - q.size
		q.size = size
		ss.queued[pk.PacketID] = q
		h.mu.Unlock()
		h.write(StateWrite{Kind: StateInflight, Key: q.key, Value: b})
		return
	}
	var drop []uint16
	var ws []StateWrite
	fits := true
	if h.o.MaxSessionBytes > 0 && size > h.o.MaxSessionBytes {
		drop, fits = append(drop, pk.PacketID), false // never fits
	} else {
		for (h.o.MaxSessionMessages > 0 && len(ss.queued) >= h.o.MaxSessionMessages) ||
			(h.o.MaxSessionBytes > 0 && ss.bytes+size > h.o.MaxSessionBytes) {
			oldest, found := uint16(0), false
			for id, m := range ss.queued {
				if !found || m.seq < ss.queued[oldest].seq {
					oldest, found = id, true
				}
			}
			if !found {
				break
			}
			drop = append(drop, oldest)
			q := ss.queued[oldest]
			delete(ss.queued, oldest)
			ss.bytes -= q.size
			ws = append(ws, StateWrite{Kind: StateInflight, Key: q.key})
		}
	}
	if fits {
		h.seq++
		k := inflightKey(cl.ID, h.seq)
		ss.queued[pk.PacketID] = queuedMsg{key: k, size: size, seq: h.seq}
		ss.bytes += size
		ws = append(ws, StateWrite{Kind: StateInflight, Key: k, Value: b})
	}
	h.mu.Unlock()
	for _, id := range drop {
		h.hits[LimitSessionQueue].Add(1)
		if cl.State.Inflight.Delete(id) {
			atomic.AddInt64(&h.srv.ms.Info.Inflight, -1)
			cl.State.Inflight.IncreaseSendQuota()
		}
	}
	if len(drop) > 0 {
		h.srv.log.Info("mqtt session queue full: oldest message dropped", "client_id", cl.ID, "dropped", len(drop),
			"max_session_messages", h.o.MaxSessionMessages, "max_session_bytes", h.o.MaxSessionBytes)
	}
	if len(ws) > 0 {
		h.write(ws...)
	}
}

// OnQosComplete deletes a delivery the subscriber completed.
func (h *store) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	if cl.Net.Inline || h.loading.Load() {
		return
	}
	h.mu.Lock()
	ss, ok := h.sessions[cl.ID]
	var q queuedMsg
	if ok {
		q, ok = ss.queued[pk.PacketID]
	}
	if ok {
		delete(ss.queued, pk.PacketID)
		ss.bytes -= q.size
	}
	h.mu.Unlock()
	if ok {
		h.write(StateWrite{Kind: StateInflight, Key: q.key})
	}
}

// OnQosDropped: mochi gave up a delivery (expired).
func (h *store) OnQosDropped(cl *mochi.Client, pk packets.Packet) { h.OnQosComplete(cl, pk) }

// OnClientExpired: mochi expired a session.
func (h *store) OnClientExpired(cl *mochi.Client) {
	h.expired.Add(1)
	h.forget(cl.ID)
}

// OnRetainedExpired: mochi dropped an expired retained message.
func (h *store) OnRetainedExpired(topic string) {
	h.mu.Lock()
	h.retBytes -= h.retained[topic]
	delete(h.retained, topic)
	h.mu.Unlock()
	h.write(StateWrite{Kind: StateRetained, Key: []byte(topic)})
}

// retain records a retained publish (PublishLocal) and reports whether
// it is to be retained: false when it does not fit MaxRetainedBytes (it is
// then delivered as a plain message and counted).
func (h *store) retain(m *message.Message) bool {
	stamp := int64(0)
	if !m.AcceptedAt.IsZero() {
		stamp = m.AcceptedAt.UnixNano()
	}
	if len(m.Payload) == 0 {
		h.mu.Lock()
		h.retBytes -= h.retained[m.Topic]
		delete(h.retained, m.Topic)
		h.mu.Unlock()
		h.write(StateWrite{Kind: StateRetained, Key: []byte(m.Topic), Stamp: stamp})
		return true
	}
	enc := message.Encode(nil, m)
	size := RetainedSize(m.Topic, enc)
	h.mu.Lock()
	old := h.retained[m.Topic]
	if h.o.MaxRetainedBytes > 0 && h.retBytes-old+size > h.o.MaxRetainedBytes {
		h.mu.Unlock()
		h.hits[LimitRetainedBytes].Add(1)
		h.srv.log.Info("mqtt retained message not retained: max_retained_bytes reached", "topic", m.Topic, "msg_id", m.ID,
			"max_retained_bytes", h.o.MaxRetainedBytes)
		return false
	}
	h.retained[m.Topic] = size
	h.retBytes += size - old
	h.mu.Unlock()
	// The Sink wrote it already when it stored the message (spoolsink):
	// this write covers the messages that were not stored (local-only
	// routes), and the stamp keeps it from replacing a newer one.
	h.write(StateWrite{Kind: StateRetained, Key: []byte(m.Topic), Value: enc, Stamp: stamp, BestEffort: true})
	return true
}

// RetainedSize is what a retained message counts against
// MaxRetainedBytes: its topic, its encoding and a 12-byte record header
// (what the spool counts).
func RetainedSize(topic string, enc []byte) int64 { return int64(len(topic) + len(enc) + 12) }

func toStorage(client string, pk packets.Packet) storage.Message {
	props := pk.Properties.Copy(false)
	return storage.Message{Client: client, Origin: pk.Origin, FixedHeader: pk.FixedHeader, TopicName: pk.TopicName,
		Payload: pk.Payload, Created: pk.Created, PacketID: pk.PacketID,
		Properties: storage.MessageProperties{PayloadFormat: props.PayloadFormat, PayloadFormatFlag: props.PayloadFormatFlag,
			MessageExpiryInterval: props.MessageExpiryInterval, ContentType: props.ContentType, ResponseTopic: props.ResponseTopic,
			CorrelationData: props.CorrelationData, SubscriptionIdentifier: props.SubscriptionIdentifier, User: props.User}}
}

// restore loads the stored state into mochi before it serves: retained
// messages (with their expiry), persistent sessions (with their persisted
// deadline: those past it are deleted), their subscriptions and their
// queued deliveries in the order they were queued. It does what mochi's
// readStore does, without its losses: readStore restarts every session's
// expiry at the restart and drops the expiry of messages.
func (h *store) restore() error {
	h.loading.Store(true)
	defer h.loading.Store(false)
	ms := h.srv.ms
	now := h.srv.opts.Now()
	var errs []error
	var dead [][]byte
	err := h.st.Iterate(StateRetained, nil, func(k, v []byte) error {
		m, err := message.Decode(v)
		if err != nil || m.Topic != string(k) {
			errs = append(errs, fmt.Errorf("retained %q: unreadable: %w", k, err))
			dead = append(dead, k)
			return nil
		}
		if m.Expired(now) {
			dead = append(dead, k)
			return nil
		}
		pk, ok := localPacket(m, now)
		if !ok {
			dead = append(dead, k)
			return nil
		}
		pk.ProtocolVersion = 5
		pk.Created = now.Unix()
		if !m.ExpiresAt.IsZero() {
			pk.Expiry = m.ExpiresAt.Unix()
		}
		pk.Origin = m.Source.ClientID
		ms.Topics.RetainMessage(pk)
		h.retained[m.Topic] = RetainedSize(m.Topic, v)
		h.retBytes += h.retained[m.Topic]
		h.restored[0]++
		return nil
	})
	if err != nil {
		return fmt.Errorf("mqtt: restore retained: %w", err)
	}
	atomic.StoreInt64(&ms.Info.Retained, int64(ms.Topics.Retained.Len()))
	var ws []StateWrite
	for _, k := range dead {
		ws = append(ws, StateWrite{Kind: StateRetained, Key: k})
	}

	clients := map[string]*mochi.Client{}
	err = h.st.Iterate(StateClients, nil, func(k, v []byte) error {
		var rec clientRecord
		if err := json.Unmarshal(v, &rec); err != nil || rec.Client.ID != string(k) {
			errs = append(errs, fmt.Errorf("session %q: unreadable: %w", k, err))
			ws = append(ws, StateWrite{Kind: StateClients, Key: k})
			return nil
		}
		if rec.DisconnectedAt == 0 {
			// Connected when the gateway stopped without a clean
			// shutdown: the session's expiry starts now.
			rec.DisconnectedAt = now.Unix()
			b, _ := json.Marshal(rec)
			ws = append(ws, StateWrite{Kind: StateClients, Key: k, Value: b})
		}
		deadline := time.Unix(rec.DisconnectedAt+int64(rec.Expiry), 0)
		if !now.Before(deadline) {
			h.expired.Add(1)
			ws = append(ws, StateWrite{Kind: StateSubscriptions, Key: clientPrefix(rec.Client.ID), Prefix: true},
				StateWrite{Kind: StateInflight, Key: clientPrefix(rec.Client.ID), Prefix: true},
				StateWrite{Kind: StateClients, Key: k})
			return nil
		}
		c := rec.Client
		cl := ms.NewClient(nil, c.Listener, c.ID, false)
		cl.Properties.Username = c.Username
		cl.Properties.Clean = c.Clean
		cl.Properties.ProtocolVersion = c.ProtocolVersion
		cl.Properties.Props = packets.Properties{SessionExpiryInterval: c.Properties.SessionExpiryInterval,
			SessionExpiryIntervalFlag: c.Properties.SessionExpiryIntervalFlag, ReceiveMaximum: c.Properties.ReceiveMaximum,
			TopicAliasMaximum: c.Properties.TopicAliasMaximum, User: c.Properties.User, MaximumPacketSize: c.Properties.MaximumPacketSize,
			RequestProblemInfo: c.Properties.RequestProblemInfo, RequestProblemInfoFlag: c.Properties.RequestProblemInfoFlag,
			RequestResponseInfo: c.Properties.RequestResponseInfo}
		cl.Stop(packets.ErrServerShuttingDown) // disconnected: mochi queues for it
		ms.Clients.Add(cl)
		clients[c.ID] = cl
		h.sessions[c.ID] = &persisted{queued: map[uint16]queuedMsg{}}
		h.deadlines[c.ID] = deadline
		h.restored[1]++
		return nil
	})
	if err != nil {
		return fmt.Errorf("mqtt: restore sessions: %w", err)
	}

	err = h.st.Iterate(StateSubscriptions, nil, func(k, v []byte) error {
		var sub storage.Subscription
		if err := json.Unmarshal(v, &sub); err != nil {
			errs = append(errs, fmt.Errorf("subscription %q: unreadable: %w", k, err))
			ws = append(ws, StateWrite{Kind: StateSubscriptions, Key: k})
			return nil
		}
		cl, ok := clients[sub.Client]
		if !ok {
			ws = append(ws, StateWrite{Kind: StateSubscriptions, Key: k}) // of a session that is gone
			return nil
		}
		sb := packets.Subscription{Filter: sub.Filter, RetainHandling: sub.RetainHandling, Qos: sub.Qos,
			RetainAsPublished: sub.RetainAsPublished, NoLocal: sub.NoLocal, Identifier: sub.Identifier}
		if ms.Topics.Subscribe(sub.Client, sb) {
			atomic.AddInt64(&ms.Info.Subscriptions, 1)
		}
		cl.State.Subscriptions.Add(sub.Filter, sb)
		h.restored[2]++
		return nil
	})
	if err != nil {
		return fmt.Errorf("mqtt: restore subscriptions: %w", err)
	}

	// Deliveries in queue order (their keys): mochi resends a session's
	// in the order of their Created time (seconds, compared as uint16), so
	// each gets a Created after the one before it.
	created := map[string]int64{}
	err = h.st.Iterate(StateInflight, nil, func(k, v []byte) error {
		var rec inflightRecord
		if err := json.Unmarshal(v, &rec); err != nil || len(k) < 9 {
			errs = append(errs, fmt.Errorf("queued message %q: unreadable: %w", k, err))
			ws = append(ws, StateWrite{Kind: StateInflight, Key: k})
			return nil
		}
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		h.seq = max(h.seq, seq)
		cl, ok := clients[rec.Msg.Client]
		if !ok || (rec.Expiry > 0 && rec.Expiry < now.Unix()) {
			ws = append(ws, StateWrite{Kind: StateInflight, Key: k})
			return nil
		}
		pk := rec.Msg.ToPacket()
		pk.Expiry = rec.Expiry
		pk.ProtocolVersion = rec.V
		c := max(pk.Created, created[cl.ID]+1)
		created[cl.ID] = c
		pk.Created = c
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&ms.Info.Inflight, 1)
			cl.State.Inflight.DecreaseSendQuota()
		}
		ss := h.sessions[cl.ID]
		ss.queued[pk.PacketID] = queuedMsg{key: clone(k), size: int64(len(v)), seq: seq}
		ss.bytes += int64(len(v))
		h.restored[3]++
		return nil
	})
	if err != nil {
		return fmt.Errorf("mqtt: restore queued messages: %w", err)
	}
	if len(ws) > 0 {
		_ = h.st.Write(h.ctx, ws...)
	}
	if len(errs) > 0 {
		h.srv.log.Warn("mqtt state: unreadable records dropped", "count", len(errs), "err", errors.Join(errs[:min(3, len(errs))]...))
	}
	if h.restored != [4]int64{} {
		h.srv.log.Info("mqtt state restored", "retained", h.restored[0], "sessions", h.restored[1],
			"subscriptions", h.restored[2], "queued", h.restored[3], "expired_sessions", h.expired.Load())
	}
	return nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// expireLoop ends the restored sessions that do not come back at their
// persisted deadline (mochi's own sweep counts from the restart).
func (h *store) expireLoop() {
	defer close(h.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		h.mu.Lock()
		next := time.Duration(math.MaxInt64)
		now := h.srv.opts.Now()
		var due []string
		for id, d := range h.deadlines {
			if !now.Before(d) {
				due = append(due, id)
			} else {
				next = min(next, d.Sub(now))
			}
		}
		h.mu.Unlock()
		for _, id := range due {
			h.expireRestored(id)
		}
		if len(due) > 0 {
			continue
		}
		if next == time.Duration(math.MaxInt64) {
			next = time.Hour
		}
		timer.Reset(next)
		select {
		case <-h.stop:
			return
		case <-timer.C:
		}
	}
}

// expireRestored ends a restored session at its deadline unless its client
// came back.
func (h *store) expireRestored(id string) {
	h.mu.Lock()
	delete(h.deadlines, id)
	h.mu.Unlock()
	ms := h.srv.ms
	cl, ok := ms.Clients.Get(id)
	if !ok || !cl.Closed() {
		return // reconnected (OnSessionEstablished dropped the deadline) or gone
	}
	h.srv.log.Info("mqtt persistent session expired", "client_id", id)
	h.expired.Add(1)
	ms.UnsubscribeClient(cl)
	cl.ClearInflights()
	ms.Clients.Delete(id)
	h.forget(id)
}

func (h *store) shutdown() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
}

func (h *store) stats() StoreStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := StoreStats{Retained: int64(len(h.retained)), RetainedBytes: h.retBytes, Sessions: int64(len(h.sessions)),
		Restored: h.restored, ExpiredSessions: h.expired.Load()}
	for _, ss := range h.sessions {
		st.Queued += int64(len(ss.queued))
		st.QueuedBytes += ss.bytes
	}
	for i := range st.LimitHits {
		st.LimitHits[i] = h.hits[i].Load()
	}
	return st
}
