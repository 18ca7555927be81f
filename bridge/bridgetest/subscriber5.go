package bridgetest

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/ferrymq/ferry/internal/testkit"
)

// Subscriber5Options configure NewSubscriber5.
type Subscriber5Options struct {
	URL    string
	Filter string
	// IDProperty: the user property whose value becomes Record.ID (the
	// bridge's message id property); empty: none.
	IDProperty string
}

// NewSubscriber5 is an MQTT 5 subscriber (paho.golang's autopaho) that
// records everything arriving on a filter, user properties, expiry and
// retain flag included. Its session persists across reconnects (session
// expiry 1h), QoS 1. Cleanup disconnects.
func NewSubscriber5(t testing.TB, o Subscriber5Options) *Subscriber {
	t.Helper()
	s := &Subscriber{notify: make(chan struct{}, 1)}
	u, err := url.Parse(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	subscribed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         3600,
		ReconnectBackoff:              autopaho.NewConstantBackoff(100 * time.Millisecond),
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			sctx, c := context.WithTimeout(ctx, testkit.Timeout(30*time.Second))
			defer c()
			if _, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: o.Filter, QoS: 1, RetainAsPublished: true}}}); err == nil {
				select {
				case subscribed <- struct{}{}:
				default:
				}
			}
		},
		ClientConfig: paho.ClientConfig{
			ClientID: fmt.Sprintf("sub5-%d", time.Now().UnixNano()),
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				p := pr.Packet
				r := Record{Topic: p.Topic, Payload: p.Payload, Dup: p.Duplicate(), Retain: p.Retain}
				if pp := p.Properties; pp != nil {
					for _, up := range pp.User {
						r.User = append(r.User, [2]string{up.Key, up.Value})
						if o.IDProperty != "" && up.Key == o.IDProperty && r.ID == "" {
							r.ID = up.Value
						}
					}
					r.ContentType, r.Expiry = pp.ContentType, pp.MessageExpiry
				}
				s.mu.Lock()
				s.records = append(s.records, r)
				s.mu.Unlock()
				select {
				case s.notify <- struct{}{}:
				default:
				}
				return true, nil
			}},
		},
	}
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	select {
	case <-subscribed:
	case <-testkit.After(30 * time.Second):
		cancel()
		t.Fatalf("bridgetest: MQTT 5 subscriber to %s did not subscribe", o.URL)
	}
	t.Cleanup(func() {
		dctx, c := context.WithTimeout(context.Background(), time.Second)
		_ = cm.Disconnect(dctx)
		c()
		cancel()
		<-cm.Done()
	})
	return s
}
