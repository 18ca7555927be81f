package firmwaresim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mqtt5Session is a minimal MQTT 5 client (paho.mqtt.golang speaks 3.1.1
// only) on mochi-mqtt's packet codec: CONNECT with clean start, PUBLISH
// QoS 0/1/2 carrying the reading id as user property "msg-id" (Ferry's
// default dedupe property), PUBACK/PUBREC/PUBREL/PUBCOMP with reason codes,
// keepalive pings. A reason code ≥ 0x80 (0x97 quota exceeded when the
// spool is full) fails that message; the device then reconnects and
// re-sends, as firmware backing off would.
type mqtt5Session struct {
	nc         net.Conn
	topic      string
	qos        byte
	keepAlive  time.Duration
	writeLimit time.Duration
	readerDone chan struct{}
	stopPing   chan struct{}

	wmu sync.Mutex // serialises writes
	buf bytes.Buffer

	mu      sync.Mutex
	waiting map[uint16]*inflight
	nextID  uint16
	err     error
}

// ReasonError is a negative MQTT 5 reason code (≥ 0x80) from the gateway.
type ReasonError struct {
	Packet string // "CONNACK", "PUBACK", "PUBREC", "PUBCOMP", "DISCONNECT"
	Code   byte
}

func (e *ReasonError) Error() string {
	return fmt.Sprintf("mqtt5: %s reason code 0x%02x", e.Packet, e.Code)
}

func dialMQTT5(ctx context.Context, cfg DeviceConfig, topic string) (session, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("mqtt5 connect %s: %w", cfg.Addr, err)
	}
	deadline := time.Now().Add(cfg.ConnectTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = nc.SetDeadline(deadline)
	ka := uint16(min(cfg.KeepAlive/time.Second, 65535))
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: ka, ClientIdentifier: cfg.ClientID,
		},
	}
	if cfg.Username != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(cfg.Username)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(cfg.Password)
	}
	var b bytes.Buffer
	if err := pk.ConnectEncode(&b); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("mqtt5 connect %s: %w", cfg.Addr, err)
	}
	if _, err := nc.Write(b.Bytes()); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("mqtt5 connect %s: %w", cfg.Addr, err)
	}
	br := bufio.NewReader(nc)
	ack, err := readPacket(br)
	if err == nil && ack.FixedHeader.Type != packets.Connack {
		err = fmt.Errorf("got packet type %d instead of CONNACK", ack.FixedHeader.Type)
	}
	if err == nil && ack.ReasonCode >= 0x80 {
		err = &ReasonError{Packet: "CONNACK", Code: ack.ReasonCode}
	}
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("mqtt5 connect %s: %w", cfg.Addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	s := &mqtt5Session{
		nc: nc, topic: topic, qos: cfg.QoS, keepAlive: time.Duration(ka) * time.Second, writeLimit: cfg.AckTimeout,
		readerDone: make(chan struct{}), stopPing: make(chan struct{}), waiting: map[uint16]*inflight{},
	}
	go s.read(br)
	if s.keepAlive > 0 {
		go s.ping()
	}
	return s, nil
}

// readPacket reads one packet and decodes the kinds a publisher receives.
func readPacket(br *bufio.Reader) (*packets.Packet, error) {
	hb, err := br.ReadByte()
	if err != nil {
		return nil, err
	}
	pk := &packets.Packet{ProtocolVersion: 5}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return nil, err
	}
	n, _, err := packets.DecodeLength(br)
	if err != nil {
		return nil, err
	}
	if n > 1<<20 {
		return nil, fmt.Errorf("mqtt5: packet of %d bytes from the gateway", n)
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	return pk, err
}

func (s *mqtt5Session) read(br *bufio.Reader) {
	defer close(s.readerDone)
	for {
		if s.keepAlive > 0 {
			_ = s.nc.SetReadDeadline(time.Now().Add(s.keepAlive * 3 / 2))
		}
		pk, err := readPacket(br)
		if err != nil {
			s.fail(fmt.Errorf("mqtt5: read: %w", err))
			return
		}
		switch pk.FixedHeader.Type {
		case packets.Puback, packets.Pubcomp:
			name := map[byte]string{packets.Puback: "PUBACK", packets.Pubcomp: "PUBCOMP"}[pk.FixedHeader.Type]
			var rerr error
			if pk.ReasonCode >= 0x80 {
				rerr = &ReasonError{Packet: name, Code: pk.ReasonCode}
			}
			s.complete(pk.PacketID, rerr)
		case packets.Pubrec:
			if pk.ReasonCode >= 0x80 {
				s.complete(pk.PacketID, &ReasonError{Packet: "PUBREC", Code: pk.ReasonCode})
				continue
			}
			rel := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, ProtocolVersion: 5, PacketID: pk.PacketID}
			if err := s.write(rel.PubrelEncode); err != nil {
				s.fail(err)
				return
			}
		case packets.Disconnect:
			s.fail(&ReasonError{Packet: "DISCONNECT", Code: pk.ReasonCode})
			return
		}
	}
}

func (s *mqtt5Session) complete(id uint16, err error) {
	s.mu.Lock()
	in := s.waiting[id]
	delete(s.waiting, id)
	s.mu.Unlock()
	if in != nil {
		in.err, in.at = err, time.Now()
		close(in.done)
	}
}

func (s *mqtt5Session) ping() {
	t := time.NewTicker(s.keepAlive * 3 / 4)
	defer t.Stop()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: 5}
	for {
		select {
		case <-s.stopPing:
			return
		case <-t.C:
			if err := s.write(pk.PingreqEncode); err != nil {
				s.fail(err)
				return
			}
		}
	}
}

func (s *mqtt5Session) write(encode func(*bytes.Buffer) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.buf.Reset()
	if err := encode(&s.buf); err != nil {
		return fmt.Errorf("mqtt5: encode: %w", err)
	}
	_ = s.nc.SetWriteDeadline(time.Now().Add(s.writeLimit))
	if _, err := s.nc.Write(s.buf.Bytes()); err != nil {
		return fmt.Errorf("mqtt5: write: %w", err)
	}
	return nil
}

func (s *mqtt5Session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		close(s.stopPing)
	}
	waiting := s.waiting
	s.waiting = map[uint16]*inflight{}
	s.mu.Unlock()
	_ = s.nc.Close()
	for _, in := range waiting {
		in.err = err
		close(in.done)
	}
}

var errNoPacketID = errors.New("mqtt5: all packet ids in use")

func (s *mqtt5Session) publish(m *outMsg) *inflight {
	in := &inflight{msg: m, done: make(chan struct{})}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: s.qos},
		ProtocolVersion: 5,
		TopicName:       s.topic,
		Payload:         m.payload,
		Properties: packets.Properties{
			ContentType: "application/json",
			User:        []packets.UserProperty{{Key: "msg-id", Val: m.id}},
		},
	}
	s.mu.Lock()
	err := s.err
	if err == nil && s.qos > 0 {
		id, ok := s.freeID()
		if !ok {
			err = errNoPacketID
		} else {
			pk.PacketID = id
			s.waiting[id] = in
		}
	}
	s.mu.Unlock()
	if err != nil {
		in.err = err
		close(in.done)
		return in
	}
	if err := s.write(pk.PublishEncode); err != nil {
		s.fail(err) // completes in when it waits for an ack
		if s.qos == 0 {
			in.err = err
			close(in.done)
		}
		return in
	}
	if s.qos == 0 {
		in.at = time.Now()
		close(in.done)
	}
	return in
}

// freeID returns an unused packet id; s.mu must be held.
func (s *mqtt5Session) freeID() (uint16, bool) {
	for range 65535 {
		s.nextID++
		if s.nextID == 0 {
			s.nextID = 1
		}
		if _, used := s.waiting[s.nextID]; !used {
			return s.nextID, true
		}
	}
	return 0, false
}

func (s *mqtt5Session) close() {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5}
	s.mu.Lock()
	open := s.err == nil
	s.mu.Unlock()
	if open {
		_ = s.write(pk.DisconnectEncode) // best effort: normal disconnection
	}
	s.fail(errSessionClosed)
	<-s.readerDone
}
