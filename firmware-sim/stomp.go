package firmwaresim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/message"
)

// stompSession is a minimal STOMP 1.2/1.1 client on go-stomp's frame codec.
// go-stomp's own client waits for each RECEIPT under a lock; firmware that
// pipelines SENDs (Window > 1) needs receipts matched by id, so the session
// keeps a table of SENDs waiting for their RECEIPT.
type stompSession struct {
	nc           net.Conn
	w            *frame.Writer
	dest         string
	receipts     bool
	writeTimeout time.Duration
	readerDone   chan struct{}

	mu      sync.Mutex
	waiting map[string]*inflight
	next    uint64
	err     error // set once the session is unusable
}

var errSessionClosed = errors.New("stomp: session closed")

func dialSTOMP(ctx context.Context, cfg DeviceConfig, topic string) (session, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("stomp connect %s: %w", cfg.Addr, err)
	}
	deadline := time.Now().Add(cfg.ConnectTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = nc.SetDeadline(deadline)
	connect := frame.New(frame.CONNECT,
		frame.AcceptVersion, "1.2,1.1",
		frame.Host, "/",
		frame.HeartBeat, "0,0")
	if cfg.ClientID != "" {
		// Names the device (ActiveMQ's client-id header): Ferry scopes
		// dedupe keys and %c in ACLs by it, across reconnects.
		connect.Header.Add("client-id", cfg.ClientID)
	}
	if cfg.Username != "" {
		connect.Header.Add(frame.Login, cfg.Username)
		connect.Header.Add(frame.Passcode, cfg.Password)
	}
	w := frame.NewWriter(nc)
	rd := frame.NewReader(nc)
	if err := w.Write(connect); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("stomp connect %s: %w", cfg.Addr, err)
	}
	var f *frame.Frame
	for f == nil { // skip heart-beats
		if f, err = rd.Read(); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("stomp connect %s: %w", cfg.Addr, err)
		}
	}
	if f.Command != frame.CONNECTED {
		_ = nc.Close()
		return nil, fmt.Errorf("stomp connect %s: %s: %s", cfg.Addr, f.Command, f.Header.Get(frame.Message))
	}
	_ = nc.SetDeadline(time.Time{})
	s := &stompSession{
		nc: nc, w: w, dest: message.ToSTOMP(topic, message.DestTopic), receipts: cfg.QoS > 0,
		writeTimeout: cfg.AckTimeout, readerDone: make(chan struct{}), waiting: map[string]*inflight{},
	}
	go s.read(rd)
	return s, nil
}

// read matches RECEIPTs to their SENDs until the connection ends.
func (s *stompSession) read(rd *frame.Reader) {
	defer close(s.readerDone)
	for {
		f, err := rd.Read()
		if err != nil {
			s.fail(fmt.Errorf("stomp: read: %w", err))
			return
		}
		if f == nil {
			continue // heart-beat
		}
		switch f.Command {
		case frame.RECEIPT:
			id := f.Header.Get(frame.ReceiptId)
			s.mu.Lock()
			in := s.waiting[id]
			delete(s.waiting, id)
			s.mu.Unlock()
			if in != nil {
				in.at = time.Now()
				close(in.done)
			}
		case frame.ERROR:
			s.fail(fmt.Errorf("stomp: ERROR: %s", f.Header.Get(frame.Message)))
			return
		}
	}
}

// fail completes every waiting SEND with err and closes the connection.
func (s *stompSession) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	waiting := s.waiting
	s.waiting = map[string]*inflight{}
	s.mu.Unlock()
	_ = s.nc.Close()
	for _, in := range waiting {
		in.err = err
		close(in.done)
	}
}

func (s *stompSession) publish(m *outMsg) *inflight {
	in := &inflight{msg: m, done: make(chan struct{})}
	f := frame.New(frame.SEND,
		frame.Destination, s.dest,
		frame.ContentType, "application/json",
		frame.ContentLength, strconv.Itoa(len(m.payload)),
		"msg-id", m.id)
	f.Body = m.payload
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		in.err = err
		close(in.done)
		return in
	}
	if s.receipts {
		s.next++
		rid := "r" + strconv.FormatUint(s.next, 10)
		f.Header.Add(frame.Receipt, rid)
		s.waiting[rid] = in
	}
	s.mu.Unlock()
	// Only the device goroutine writes, so the writer needs no lock.
	_ = s.nc.SetWriteDeadline(time.Now().Add(s.writeTimeout))
	if err := s.w.Write(f); err != nil {
		s.fail(fmt.Errorf("stomp: write: %w", err)) // completes in, if waiting
		if !s.receipts {
			in.err = err
			close(in.done)
		}
		return in
	}
	if !s.receipts {
		in.at = time.Now()
		close(in.done)
	}
	return in
}

func (s *stompSession) close() {
	s.fail(errSessionClosed)
	<-s.readerDone
}
