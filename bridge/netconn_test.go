package bridge

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestAppendPublish: paho's own decoder reads what appendPublish writes.
func TestAppendPublish(t *testing.T) {
	for _, n := range []int{0, 1, 100, 127 - 8, 200, 20000, 3 << 20} {
		payload := bytes.Repeat([]byte{'p'}, n)
		b := appendPublish(nil, 4242, "a/b", payload)
		cp, err := packets.ReadPacket(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("payload %d: %v", n, err)
		}
		p, ok := cp.(*packets.PublishPacket)
		if !ok || p.Qos != 1 || p.Dup || p.Retain || p.TopicName != "a/b" || p.MessageID != 4242 || !bytes.Equal(p.Payload, payload) {
			t.Fatalf("payload %d: read back %v", n, cp)
		}
	}
}

func encode(t *testing.T, cps ...packets.ControlPacket) []byte {
	t.Helper()
	var buf bytes.Buffer
	for _, cp := range cps {
		if err := cp.Write(&buf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func pubackPacket(id uint16) packets.ControlPacket {
	p := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
	p.MessageID = id
	return p
}

func publishPacket(topic, payload string, id uint16) packets.ControlPacket {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.TopicName, p.Payload, p.Qos, p.MessageID = topic, []byte(payload), 1, id
	return p
}

// chunks reads b in reads of the given sizes.
type chunks struct {
	b     []byte
	sizes []int
}

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(c.b), len(p))
	if len(c.sizes) > 0 {
		n = min(n, c.sizes[0])
		c.sizes = c.sizes[1:]
	}
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// TestScannerTakesPubacks: whatever the read boundaries, the scanner takes
// every PUBACK out, reports their ids in order, counts PINGRESPs, and hands
// paho everything else unchanged.
func TestScannerTakesPubacks(t *testing.T) {
	big := string(bytes.Repeat([]byte{'x'}, 300)) // a two-byte remaining length
	stream := encode(t,
		pubackPacket(1), packets.NewControlPacket(packets.Pingresp), pubackPacket(2),
		publishPacket("cmd/a", big, 7), pubackPacket(3), pubackPacket(65535),
		packets.NewControlPacket(packets.Pingresp), publishPacket("cmd/b", "x", 8), pubackPacket(1))
	rest := encode(t, packets.NewControlPacket(packets.Pingresp), publishPacket("cmd/a", big, 7),
		packets.NewControlPacket(packets.Pingresp), publishPacket("cmd/b", "x", 8))
	for _, sizes := range [][]int{nil, {1}, {3, 1, 2}, {5}, {4, 4, 300, 1}, {len(stream)}} {
		t.Run(fmt.Sprint(sizes), func(t *testing.T) {
			var seq []int
			for i := 0; i < 400; i++ {
				seq = append(seq, sizes...)
			}
			if len(sizes) == 0 {
				seq = nil
			}
			var acks []uint16
			pongs := 0
			s := &scanner{r: &chunks{b: slices.Clone(stream), sizes: seq},
				onAck: func(ids []uint16) { acks = append(acks, ids...) }, onPong: func() { pongs++ }}
			got, err := io.ReadAll(s)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, rest) {
				t.Fatalf("passed through %d bytes, want %d", len(got), len(rest))
			}
			if !slices.Equal(acks, []uint16{1, 2, 3, 65535, 1}) || pongs != 2 {
				t.Fatalf("acks %v pongs %d", acks, pongs)
			}
			// What is left is what paho reads: packets it can parse.
			r := bytes.NewReader(got)
			for r.Len() > 0 {
				if _, err := packets.ReadPacket(r); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestPidOffset(t *testing.T) {
	for _, tc := range []struct {
		front, pid uint16
		want       int
	}{{1, 1, 0}, {1, 5, 4}, {65534, 65535, 1}, {65534, 1, 2}, {65535, 1, 1}, {5, 4, 65534}} {
		if got := pidOffset(tc.front, tc.pid); got != tc.want {
			t.Errorf("pidOffset(%d, %d) = %d, want %d", tc.front, tc.pid, got, tc.want)
		}
	}
}
