package gateway

import (
	"context"
	"net"
	"strings"
	"testing"
)

// A busy HTTP (or STOMP) port must not be blamed on mosquitto, which never
// listens there; only the MQTT listeners get that hint.
func TestAddrInUseHintOnlyForMQTT(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := e2eConfig(t, "embedded", "")
	cfg.Bridge.EmbeddedAddress = "127.0.0.1:0"
	cfg.Listeners.HTTP.Address = busy.Addr().String()
	g, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	err = g.Run(context.Background())
	t.Logf("Run: %v", err)
	if err != nil && strings.Contains(err.Error(), "mosquitto") {
		t.Fatalf("HTTP port conflict blamed on mosquitto: %v", err)
	}
}
