package mqtt

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
)

// pipeClient is a pipelining MQTT publisher written for the tests: it keeps
// up to window QoS 1 or 2 publishes in flight (MQTT 3.1.1 or 5), checks that
// the acknowledgements come in publish order, completes QoS 2 flows (PUBREL,
// PUBCOMP), and reports each acknowledged payload. paho cannot do this: its
// 3.1.1 client is one-at-a-time per token wait, and it has no MQTT 5.
type pipeClient struct {
	c      net.Conn
	br     *bufio.Reader
	v5     bool
	qos    byte
	window int
	retain bool // publish with the retain flag

	wmu sync.Mutex // writes: the sender and the reader (PUBREL) share the socket

	mu       sync.Mutex
	inflight []pipeMsg // sent, in order, not yet acknowledged (PUBACK / PUBREC)
	open     int       // packet ids in use: inflight plus QoS 2 flows waiting for PUBCOMP
	nextID   uint16
	room     chan struct{}
}

type pipeMsg struct {
	id      uint16
	topic   string
	payload []byte
}

// dialPipe connects (clean session) and returns a client; CONNACK must be
// a success.
func dialPipe(addr, clientID string, v5 bool, qos byte, window int) (*pipeClient, error) {
	c, err := net.DialTimeout("tcp", addr, guard())
	if err != nil {
		return nil, err
	}
	p := &pipeClient{c: c, br: bufio.NewReader(c), v5: v5, qos: qos, window: window, room: make(chan struct{}, 1)}
	ver := byte(4)
	if v5 {
		ver = 5
	}
	body := append(mqttString("MQTT"), ver, 0x02, 0, 0)
	binary.BigEndian.PutUint16(body[8:], testKeepalive())
	if v5 {
		body = append(body, 0)
	}
	body = append(body, mqttString(clientID)...)
	if _, err := c.Write(packet(0x10, body)); err != nil {
		_ = c.Close()
		return nil, err
	}
	pk, err := p.read()
	if err != nil || pk.typ != 2 || len(pk.body) < 2 || pk.body[1] != 0 {
		_ = c.Close()
		return nil, fmt.Errorf("connack %v %x: %w", pk.typ, pk.body, err)
	}
	return p, nil
}

func (p *pipeClient) read() (rawPacket, error) { return readPacket(p.br) }

func (p *pipeClient) write(b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_, err := p.c.Write(b)
	return err
}

// publish sends one message (with DUP when dup), waiting for a free slot
// first; stop ends the wait (false).
func (p *pipeClient) publish(topic string, payload []byte, dup bool, stop <-chan struct{}) bool {
	for {
		p.mu.Lock()
		if p.open < p.window {
			break
		}
		p.mu.Unlock()
		select {
		case <-p.room:
		case <-stop:
			return false
		}
	}
	p.nextID++
	if p.nextID == 0 {
		p.nextID = 1
	}
	id := p.nextID
	p.inflight = append(p.inflight, pipeMsg{id, topic, payload})
	p.open++
	p.mu.Unlock()
	body := binary.BigEndian.AppendUint16(mqttString(topic), id)
	if p.v5 {
		body = append(body, 0)
	}
	first := 0x30 | p.qos<<1
	if dup {
		first |= 0x08
	}
	if p.retain {
		first |= 0x01
	}
	return p.write(packet(first, append(body, payload...))) == nil
}

// readAcks reads until the connection ends, calling acked for each
// acknowledged message in order; it returns why it ended (an ack out of
// order or a negative reason code is an error). A DISCONNECT ends it too.
func (p *pipeClient) readAcks(acked func(pipeMsg)) error {
	for {
		pk, err := p.read()
		if err != nil {
			return err
		}
		switch pk.typ {
		case 4, 5: // PUBACK, PUBREC
			if len(pk.body) < 2 {
				return fmt.Errorf("short ack %x", pk.body)
			}
			id := binary.BigEndian.Uint16(pk.body)
			if len(pk.body) > 2 && pk.body[2] >= 0x80 {
				return fmt.Errorf("packet %d refused with %#x", id, pk.body[2])
			}
			p.mu.Lock()
			if len(p.inflight) == 0 || p.inflight[0].id != id {
				want := -1
				if len(p.inflight) > 0 {
					want = int(p.inflight[0].id)
				}
				p.mu.Unlock()
				return fmt.Errorf("ack for packet %d, want %d: out of publish order", id, want)
			}
			m := p.inflight[0]
			p.inflight = p.inflight[1:]
			if pk.typ == 4 {
				p.open--
			}
			p.mu.Unlock()
			acked(m)
			if pk.typ == 5 {
				if err := p.write(packet(0x62, binary.BigEndian.AppendUint16(nil, id))); err != nil {
					return err
				}
			} else {
				signalRoom(p.room)
			}
		case 7: // PUBCOMP
			p.mu.Lock()
			p.open--
			p.mu.Unlock()
			signalRoom(p.room)
		case 14: // DISCONNECT
			return fmt.Errorf("disconnected %x", pk.body)
		default:
			return fmt.Errorf("unexpected packet type %d", pk.typ)
		}
	}
}

// unacked returns the messages sent and not acknowledged, oldest first.
func (p *pipeClient) unacked() []pipeMsg {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pipeMsg(nil), p.inflight...)
}

func (p *pipeClient) close() { _ = p.c.Close() }

func signalRoom(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
