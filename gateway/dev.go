package gateway

// The development conveniences: the embedded upstream broker
// (bridge.upstream: embedded, as configs/dev.yaml for `make run` has it)
// and the start banner of `ferry run` (Options.Banner) that says how to
// publish and where to watch.

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/ferrymq/ferry/protocols/mqtt"
)

// startEmbedded runs the development upstream: a plain MQTT broker on
// loopback that accepts anyone, so `make run` has somewhere to bridge to.
// Config validation refuses it together with non-loopback listeners.
func (g *Gateway) startEmbedded() error {
	up := mochi.New(&mochi.Options{InlineClient: false, Logger: slog.New(slog.DiscardHandler)})
	if err := up.AddHook(new(auth.AllowHook), nil); err != nil {
		return err
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "embedded-upstream", Address: g.cfg.Bridge.EmbeddedAddress})
	if err := up.AddListener(mqtt.GuardListener(tcp)); err != nil {
		return fmt.Errorf("bridge.embedded_address %s: %w", g.cfg.Bridge.EmbeddedAddress, err)
	}
	go func() {
		if err := up.Serve(); err != nil {
			g.log.Error("embedded upstream stopped", "err", err)
		}
	}()
	g.up = up
	return nil
}

func (g *Gateway) printBanner() {
	if g.banner == nil {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nFerry %s is running (gateway_id %s).\n", Version, g.cfg.GatewayID)
	if a := g.MQTTAddr("mqtt"); a != "" {
		h, p, _ := net.SplitHostPort(a)
		fmt.Fprintf(&b, "  publish over MQTT:   mosquitto_pub -h %s -p %s -q 1 -t sensors/room1/temp -m 21.5\n", h, p)
	}
	if a := g.STOMPAddr(0); a != "" {
		fmt.Fprintf(&b, "  publish over STOMP:  SEND to /topic/sensors.room1.temp on %s\n", a)
	}
	if g.cfg.Bridge.IsEmbedded() {
		h, p, _ := net.SplitHostPort(g.cfg.Bridge.EmbeddedAddress)
		fmt.Fprintf(&b, "  watch upstream:      mosquitto_sub -h %s -p %s -t 'sites/#' -v   (embedded development broker)\n", h, p)
	} else {
		fmt.Fprintf(&b, "  upstream:            %s\n", strings.Join(g.cfg.Bridge.Upstream, ", "))
	}
	if a := g.HTTPAddr(); a != "" {
		scheme := "http"
		if g.cfg.ListenerTLS("http") != nil {
			scheme = "https"
		}
		fmt.Fprintf(&b, "  status page:         %s://%s/   metrics: %s://%s/metrics\n", scheme, a, scheme, a)
	}
	fmt.Fprintf(&b, "  spool:               %s\n", g.cfg.Spool.Path)
	b.WriteString("Stop with Ctrl-C (a second Ctrl-C forces exit).\n\n")
	_, _ = io.WriteString(g.banner, b.String())
}
