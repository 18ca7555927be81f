package mqtt

import (
	"fmt"

	mochi "github.com/mochi-mqtt/server/v2"
)

// Keepalive cap (Options.MaxKeepalive), as Mosquitto's max_keepalive: a
// client that asks for more than the cap, or for none (0), gets the cap.
// MQTT 5 has the words for it: the CONNACK carries Server Keep Alive, and
// the client must use it (MQTT-3.2.2-21). MQTT 3.1.1 has none, so such a
// client is refused with 0x02 (identifier rejected), as Mosquitto does.

// capKeepalive applies the cap to cl; it returns an error when a 3.1.1
// client must be refused.
func (h *hook) capKeepalive(cl *mochi.Client) error {
	max := h.opts.MaxKeepalive
	ka := cl.State.Keepalive
	if max == 0 || (ka > 0 && ka <= max) {
		return nil
	}
	if cl.Properties.ProtocolVersion == 5 {
		cl.State.Keepalive = max
		cl.State.ServerKeepalive = true // mochi puts it in the CONNACK
		return nil
	}
	return fmt.Errorf("keepalive %ds: more than the server's maximum of %ds, or 0 (none) (limits.mqtt.max_keepalive)", ka, max)
}
