package firmwaresim

import (
	"context"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// mqttSession is one paho connection. Like the bridge (docs/design.md §4) it uses
// a fresh client per connection with CleanSession and no auto-reconnect:
// the device, not paho's store, owns unacknowledged messages, so a lost
// connection completes every pending token with an error and the device
// re-sends.
type mqttSession struct {
	c     paho.Client
	topic string
	qos   byte
}

func dialMQTT(ctx context.Context, cfg DeviceConfig, topic string) (session, error) {
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + cfg.Addr).
		SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(min(cfg.KeepAlive, 10*time.Second)).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetWriteTimeout(cfg.AckTimeout).
		SetOrderMatters(false)
	c := paho.NewClient(opts)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, fmt.Errorf("mqtt connect %s: %w", cfg.Addr, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("mqtt connect %s: %w", cfg.Addr, err)
	}
	return &mqttSession{c: c, topic: topic, qos: cfg.QoS}, nil
}

func (s *mqttSession) publish(m *outMsg) *inflight {
	f := &inflight{msg: m, done: make(chan struct{})}
	tok := s.c.Publish(s.topic, s.qos, false, m.payload)
	if !m.wantAck {
		// QoS 0: nothing to wait for (and paho may never complete the
		// token of a packet it dropped with the connection).
		f.at = time.Now()
		close(f.done)
		return f
	}
	go func() {
		<-tok.Done()
		f.at = time.Now()
		// paho completes a QoS>0 token without error only on the
		// broker's PUBACK (QoS 1) or PUBCOMP (QoS 2).
		f.err = tok.Error()
		close(f.done)
	}()
	return f
}

func (s *mqttSession) close() {
	// Disconnect completes every pending token (with an error).
	s.c.Disconnect(50)
}
