package firmwaresim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// VerifierOptions configure a Verifier.
type VerifierOptions struct {
	// Broker is the upstream broker, host:port or a paho URL
	// (tcp://host:port). Needed by Start only.
	Broker   string
	Filter   string // default "#"
	QoS      byte   // subscription QoS; default 1
	ClientID string // default "fsim-verifier-" + random; "fsim-verifier" when Persistent
	Username string
	Password string
	// RunID, when set, makes the verifier ignore readings of other runs
	// (counted as Foreign): leftovers in a spool or a persistent session.
	RunID string
	// Persistent uses CleanSession=false, so that the broker keeps
	// messages for the verifier while its own connection is down.
	Persistent bool
	Logger     *slog.Logger // nil: discard
}

// Verifier records what arrives upstream and checks it against what the
// devices had acknowledged.
type Verifier struct {
	opts   VerifierOptions
	log    *slog.Logger
	client paho.Client

	mu         sync.Mutex
	byID       map[string]*arrival
	maxSeq     map[string]int64 // device+"\x00"+topic -> highest seq among first arrivals
	violations []string         // the first few, for the report
	nViolation int
	deliveries int
	malformed  int
	foreign    int
	lost       int // verifier connection losses
	firstAt    time.Time
	lastAt     time.Time
	notify     chan struct{}
}

type arrival struct {
	at       time.Time // first arrival
	sentAt   time.Time // the reading's ts
	envID    string    // envelope id of the first copy
	copies   int
	sameEnv  int // duplicate copies with the first copy's envelope id
	otherEnv int // duplicate copies with a different envelope id
	noEnv    int // duplicate copies without any envelope id
}

const maxSamples = 20

// NewVerifier returns a verifier that is not connected yet: call Start to
// subscribe, or feed it with Observe.
func NewVerifier(o VerifierOptions) *Verifier {
	if o.Filter == "" {
		o.Filter = "#"
	}
	if o.QoS == 0 {
		o.QoS = 1
	}
	if o.ClientID == "" && o.Persistent {
		o.ClientID = "fsim-verifier" // stable, so that the next run resumes the session
	}
	if o.ClientID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		o.ClientID = "fsim-verifier-" + hex.EncodeToString(b[:])
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Verifier{
		opts: o, log: o.Logger.With("upstream", o.Broker),
		byID: map[string]*arrival{}, maxSeq: map[string]int64{}, notify: make(chan struct{}, 1),
	}
}

// Start connects to the broker and subscribes; it returns once the
// subscription is acknowledged. paho reconnects and resubscribes by itself;
// connection losses are counted in the report because messages published
// while the verifier is away are lost to it (unless Persistent).
func (v *Verifier) Start(ctx context.Context) error {
	url := v.opts.Broker
	if !strings.Contains(url, "://") {
		url = "tcp://" + url
	}
	handler := func(_ paho.Client, m paho.Message) { v.Observe(m.Topic(), m.Payload()) }
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(v.opts.ClientID).
		SetUsername(v.opts.Username).SetPassword(v.opts.Password).
		SetCleanSession(!v.opts.Persistent).SetAutoReconnect(true).
		SetMaxReconnectInterval(time.Second).SetOrderMatters(true).
		SetResumeSubs(true).SetDefaultPublishHandler(handler).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			v.mu.Lock()
			v.lost++
			v.mu.Unlock()
			v.log.Warn("verifier connection lost", "err", err)
		}).
		SetOnConnectHandler(func(c paho.Client) {
			// Resubscribe on every connection: with a clean session the
			// broker forgot the subscription.
			c.Subscribe(v.opts.Filter, v.opts.QoS, handler)
		})
	c := paho.NewClient(opts)
	tok := c.Connect()
	if err := waitToken(ctx, tok); err != nil {
		c.Disconnect(0)
		return fmt.Errorf("firmwaresim: verifier: connect %s: %w", url, err)
	}
	// OnConnect subscribed already; one more Subscribe tells us when the
	// broker acknowledged it (SUBACK), so nothing published after Start
	// returns is missed.
	if err := waitToken(ctx, c.Subscribe(v.opts.Filter, v.opts.QoS, handler)); err != nil {
		c.Disconnect(0)
		return fmt.Errorf("firmwaresim: verifier: subscribe %q: %w", v.opts.Filter, err)
	}
	v.mu.Lock()
	v.client = c
	v.mu.Unlock()
	return nil
}

func waitToken(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close disconnects from the broker.
func (v *Verifier) Close() {
	v.mu.Lock()
	c := v.client
	v.client = nil
	v.mu.Unlock()
	if c != nil {
		c.Disconnect(250)
	}
}

// Observe records one message that arrived upstream on topic, now.
func (v *Verifier) Observe(topic string, payload []byte) { v.ObserveAt(topic, payload, time.Now()) }

// ObserveAt records one message that arrived upstream on topic at at.
// Arrivals must be observed in the order they arrived.
func (v *Verifier) ObserveAt(topic string, payload []byte, at time.Time) {
	r, envID, err := DecodeArrival(payload)
	v.mu.Lock()
	defer func() {
		v.mu.Unlock()
		select {
		case v.notify <- struct{}{}:
		default:
		}
	}()
	if err != nil {
		v.malformed++
		if v.malformed <= 3 {
			v.log.Warn("verifier: payload is not a reading", "topic", topic, "err", err)
		}
		return
	}
	if v.opts.RunID != "" && r.Run != v.opts.RunID {
		v.foreign++
		return
	}
	v.deliveries++
	if v.firstAt.IsZero() {
		v.firstAt = at
	}
	v.lastAt = at
	if a := v.byID[r.ID]; a != nil {
		a.copies++
		switch {
		case envID == "" && a.envID == "":
			a.noEnv++
		case envID == a.envID:
			a.sameEnv++
		default:
			a.otherEnv++
		}
		return
	}
	v.byID[r.ID] = &arrival{at: at, sentAt: time.Unix(0, r.TS), envID: envID, copies: 1}
	key := r.Dev + "\x00" + topic
	if prev, ok := v.maxSeq[key]; ok && r.Seq < prev {
		v.nViolation++
		if len(v.violations) < maxSamples {
			v.violations = append(v.violations, fmt.Sprintf("%s on %s: seq %d after %d", r.Dev, topic, r.Seq, prev))
		}
		return
	}
	v.maxSeq[key] = r.Seq
}

// Arrived is how many distinct readings arrived so far.
func (v *Verifier) Arrived() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.byID)
}

// WaitFor waits until every id in acked arrived, or ctx ends; it returns
// how many are still missing.
func (v *Verifier) WaitFor(ctx context.Context, acked map[string]time.Time) int {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		v.mu.Lock()
		missing := 0
		for id := range acked {
			if v.byID[id] == nil {
				missing++
			}
		}
		v.mu.Unlock()
		if missing == 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return missing
		case <-v.notify:
		case <-tick.C:
		}
	}
}
