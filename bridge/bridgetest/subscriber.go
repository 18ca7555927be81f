package bridgetest

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/internal/testkit"
)

// Record is one message the Subscriber received.
type Record struct {
	Topic   string
	Payload []byte // the original payload (envelope unwrapped)
	ID      string // envelope id; "" for raw
	Dup     bool   // MQTT DUP flag

	// MQTT 5 subscribers (NewSubscriber5) only:
	Retain      bool
	User        [][2]string // user properties, in order
	ContentType string
	Expiry      *uint32 // Message Expiry Interval as received
}

// Subscriber is a paho client that records everything arriving on a filter.
// It uses a persistent session (CleanSession false) with QoS 1 and
// reconnects by itself, so with a persistent mosquitto it loses nothing
// across a broker restart.
type Subscriber struct {
	client paho.Client

	mu      sync.Mutex
	records []Record
	notify  chan struct{}
}

// SubscriberOptions configure NewSubscriber.
type SubscriberOptions struct {
	URL      string
	Filter   string
	ClientID string // default: unique
	Envelope bool   // unwrap bridge envelopes (id, payload)
	Username string
	Password string
	TLS      *tls.Config
}

// NewSubscriber connects, subscribes and starts recording. Cleanup
// disconnects.
func NewSubscriber(t testing.TB, o SubscriberOptions) *Subscriber {
	t.Helper()
	s := &Subscriber{notify: make(chan struct{}, 1)}
	if o.ClientID == "" {
		o.ClientID = fmt.Sprintf("sub-%d", time.Now().UnixNano())
	}
	handler := func(_ paho.Client, m paho.Message) {
		r := Record{Topic: m.Topic(), Payload: m.Payload(), Dup: m.Duplicate()}
		if o.Envelope {
			var e struct {
				ID       string          `json:"id"`
				Payload  json.RawMessage `json:"payload"`
				Encoding string          `json:"encoding"`
			}
			if err := json.Unmarshal(m.Payload(), &e); err == nil {
				r.ID = e.ID
				if e.Encoding == "base64" {
					var b []byte
					_ = json.Unmarshal(e.Payload, &b)
					r.Payload = b
				} else {
					r.Payload = []byte(e.Payload)
				}
			}
		}
		s.mu.Lock()
		s.records = append(s.records, r)
		s.mu.Unlock()
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	opts := paho.NewClientOptions().AddBroker(o.URL).SetClientID(o.ClientID).
		SetUsername(o.Username).SetPassword(o.Password).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetResumeSubs(true).SetOrderMatters(true).SetDefaultPublishHandler(handler)
	if o.TLS != nil {
		opts.SetTLSConfig(o.TLS)
	}
	s.client = paho.NewClient(opts)
	if tok := s.client.Connect(); !tok.WaitTimeout(testkit.Timeout(30*time.Second)) || tok.Error() != nil {
		t.Fatalf("bridgetest: subscriber connect: %v", tok.Error())
	}
	if tok := s.client.Subscribe(o.Filter, 1, handler); !tok.WaitTimeout(testkit.Timeout(30*time.Second)) || tok.Error() != nil {
		t.Fatalf("bridgetest: subscribe %q: %v", o.Filter, tok.Error())
	}
	t.Cleanup(func() { s.client.Disconnect(100) })
	return s
}

// Len is how many messages arrived so far (duplicates included).
func (s *Subscriber) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// Records returns a copy of what arrived, in arrival order.
func (s *Subscriber) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.records...)
}

// WaitFor waits until cond holds for the records (checked on every
// arrival and every 50ms) or the hang guard testkit.Timeout(timeout)
// passes; it reports whether it held.
func (s *Subscriber) WaitFor(timeout time.Duration, cond func([]Record) bool) bool {
	end := time.Now().Add(testkit.Timeout(timeout))
	for {
		s.mu.Lock()
		ok := cond(s.records)
		s.mu.Unlock()
		if ok {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		select {
		case <-s.notify:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Report is what Check found.
type Report struct {
	Received   int
	Unique     int
	Duplicates int
	Missing    []string // "key#seq" never received
	OutOfOrder []string // a first arrival of key#seq before an earlier seq of key
	IDMismatch []string // the same key#seq arrived with different envelope ids
}

// OK reports no loss, no reordering and stable ids.
func (r Report) OK() bool {
	return len(r.Missing) == 0 && len(r.OutOfOrder) == 0 && len(r.IDMismatch) == 0
}

func (r Report) String() string {
	short := func(s []string) string {
		if len(s) > 10 {
			return strings.Join(s[:10], ",") + fmt.Sprintf(",… (%d)", len(s))
		}
		return strings.Join(s, ",")
	}
	return fmt.Sprintf("received=%d unique=%d duplicates=%d missing=[%s] out_of_order=[%s] id_mismatch=[%s]",
		r.Received, r.Unique, r.Duplicates, short(r.Missing), short(r.OutOfOrder), short(r.IDMismatch))
}

// Check verifies records against expected: for each key (an ordering
// domain, usually the topic), sequence numbers 0..expected[key]-1 must all
// arrive, and each one's first arrival must come after the first arrival
// of every smaller one. seqOf extracts key and sequence from a record.
// Re-deliveries of already seen numbers are counted as duplicates, and all
// copies of one number must carry the same id.
func Check(records []Record, expected map[string]int, seqOf func(Record) (key string, seq int, ok bool)) Report {
	rep := Report{Received: len(records)}
	next := map[string]int{}
	seen := map[string]map[int]string{}
	for _, r := range records {
		k, n, ok := seqOf(r)
		if !ok {
			continue
		}
		if seen[k] == nil {
			seen[k] = map[int]string{}
		}
		if id, dup := seen[k][n]; dup {
			rep.Duplicates++
			if id != r.ID {
				rep.IDMismatch = append(rep.IDMismatch, fmt.Sprintf("%s#%d", k, n))
			}
			continue
		}
		seen[k][n] = r.ID
		rep.Unique++
		if n != next[k] {
			rep.OutOfOrder = append(rep.OutOfOrder, fmt.Sprintf("%s#%d(want #%d)", k, n, next[k]))
		}
		if n >= next[k] {
			next[k] = n + 1
		}
	}
	keys := make([]string, 0, len(expected))
	for k := range expected {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for i := range expected[k] {
			if _, ok := seen[k][i]; !ok {
				rep.Missing = append(rep.Missing, fmt.Sprintf("%s#%d", k, i))
			}
		}
	}
	return rep
}
