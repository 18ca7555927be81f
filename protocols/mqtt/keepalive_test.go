package mqtt

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"
)

// serverKeepAlive returns the Server Keep Alive property (0x13) of a v5
// CONNACK body, and whether it is there.
func serverKeepAlive(t *testing.T, body []byte) (uint16, bool) {
	t.Helper()
	// flags, reason, property length (a varint), properties.
	b := body[2:]
	n, shift, i := 0, 0, 0
	for ; i < len(b); i++ {
		n |= int(b[i]&0x7f) << shift
		shift += 7
		if b[i]&0x80 == 0 {
			i++
			break
		}
	}
	props := b[i : i+n]
	for len(props) > 0 {
		id := props[0]
		props = props[1:]
		switch id {
		case 0x13: // Server Keep Alive
			return binary.BigEndian.Uint16(props), true
		case 0x21, 0x22: // Receive Maximum, Topic Alias Maximum: two bytes
			props = props[2:]
		case 0x24, 0x25, 0x28, 0x29, 0x2a: // one byte
			props = props[1:]
		case 0x27, 0x11: // four bytes
			props = props[4:]
		case 0x12, 0x1a, 0x1c, 0x1f: // strings
			l := int(binary.BigEndian.Uint16(props))
			props = props[2+l:]
		case 0x26: // user property: two strings
			for range 2 {
				l := int(binary.BigEndian.Uint16(props))
				props = props[2+l:]
			}
		default:
			t.Fatalf("CONNACK property %#x not known to the test: %x", id, body)
		}
	}
	return 0, false
}

// TestMaxKeepalive: Options.MaxKeepalive (limits.mqtt.max_keepalive) caps
// the keepalive a client asks for, as Mosquitto's max_keepalive: MQTT 5
// gets the cap as Server Keep Alive (for more than the cap, and for 0);
// MQTT 3.1.1 has no way to be told and is refused with 0x02; a keepalive
// within the cap is left alone.
func TestMaxKeepalive(t *testing.T) {
	s, _ := startServer(t, testOptions{Options: Options{MaxKeepalive: 60}})
	addr := s.Addr("tcp")
	for i, tc := range []struct {
		v5        bool
		keepalive uint16
		code      byte
		server    uint16 // Server Keep Alive (v5); 0: none
	}{
		{true, 120, 0, 60},
		{true, 0, 0, 60},
		{true, 60, 0, 0},
		{true, 30, 0, 0},
		{false, 120, 0x02, 0},
		{false, 0, 0x02, 0},
		{false, 60, 0, 0},
		{false, 30, 0, 0},
	} {
		rc, code := dialRaw(t, addr, "ka"+strconv.Itoa(i), connectOpts{v5: tc.v5, keepalive: tc.keepalive, zeroKeepalive: tc.keepalive == 0})
		if code != tc.code {
			t.Errorf("v5 %v keepalive %d: CONNACK %#x, want %#x", tc.v5, tc.keepalive, code, tc.code)
			continue
		}
		if tc.v5 {
			got, ok := serverKeepAlive(t, rc.connack)
			if tc.server == 0 && ok || tc.server != 0 && got != tc.server {
				t.Errorf("v5 keepalive %d: Server Keep Alive %d (present %v), want %d", tc.keepalive, got, ok, tc.server)
			}
		}
	}

	// Real clients: mosquitto_sub -k over the cap.
	bin := requireTool(t, "mosquitto_sub", "mosquitto-clients")
	r := runTool(t, guard(), bin, pubArgs(t, s, "311", "mk311", "-k", "120", "-t", "x", "-C", "1", "-W", "1")...)
	if r.code == 0 || !strings.Contains(strings.ToLower(r.out), "identifier rejected") {
		t.Errorf("mosquitto_sub 3.1.1 -k 120: exit %d, output %q; want identifier rejected", r.code, r.out)
	}
	r = runTool(t, guard(), "mosquitto_pub", pubArgs(t, s, "5", "mk5", "-k", "120", "-t", "x", "-m", "y", "-q", "1")...)
	if r.code != 0 {
		t.Errorf("mosquitto_pub 5 -k 120: exit %d, output %q; want accepted (with Server Keep Alive)", r.code, r.out)
	}
}
