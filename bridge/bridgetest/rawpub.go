package bridgetest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// BrokerTakes connects to the MQTT broker at addr as a bare MQTT 3.1.1
// client, publishes one QoS 1 message on topic followed by a PINGREQ, and
// reports whether the broker took it (PUBACK and PINGRESP) or closed the
// connection instead. It writes the topic bytes as given, unchecked, which
// is the point: it asks the broker, not a client library, what it refuses.
func BrokerTakes(addr, topic string, timeout time.Duration) (bool, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return false, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(timeout))
	connect := append(mqttStr("MQTT"), 4, 0x02, 0, 60) // level 4, clean session, keepalive 60s
	connect = append(connect, mqttStr(fmt.Sprintf("probe-%d", time.Now().UnixNano()))...)
	if _, err := c.Write(mqttPacket(0x10, connect)); err != nil {
		return false, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		return false, fmt.Errorf("bridgetest: no CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		return false, fmt.Errorf("bridgetest: connection refused: CONNACK % x", ack)
	}
	pub := append(mqttStr(topic), 0, 1) // packet id 1
	pub = append(pub, "x"...)
	if _, err := c.Write(append(mqttPacket(0x32, pub), 0xc0, 0)); err != nil {
		return false, err
	}
	// PUBACK (40 02 00 01) then PINGRESP (d0 00), or the connection closes.
	got := make([]byte, 6)
	n, err := io.ReadFull(c, got)
	switch {
	case err == nil && got[0] == 0x40 && got[4] == 0xd0:
		return true, nil
	case err == nil:
		return false, fmt.Errorf("bridgetest: unexpected answer % x", got)
	case n == 0 && isClosed(err):
		return false, nil
	}
	return false, fmt.Errorf("bridgetest: after %d bytes (% x): %w", n, got[:n], err)
}

// isClosed: the broker closed (EOF) or reset the connection; a timeout is
// not an answer.
func isClosed(err error) bool {
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

func mqttStr(s string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(s)))
	return append(b, s...)
}

func mqttPacket(header byte, body []byte) []byte {
	out := []byte{header}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 128
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}
