package stomp

import (
	"strconv"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/message"
)

// The writer goroutine of a connection: the only one that writes to the
// socket after CONNECTED.

func (c *conn) errorFrame(p *pending) *frame.Frame {
	f := frame.New(frame.ERROR, frame.Message, p.errMsg)
	if p.hasReceipt {
		f.Header.Add(frame.ReceiptId, p.receipt)
	}
	f.Header.Add(frame.ContentType, "text/plain")
	f.Body = []byte(p.detail)
	f.Header.Add(frame.ContentLength, strconv.Itoa(len(f.Body)))
	c.lastReason, c.lastCount = p.reason, !p.uncounted
	return f
}

// writeLoop is the writer goroutine: it writes the ordered entries as they
// complete (RECEIPTs, ERRORs), MESSAGE frames and heart-beats, until the
// reader closed c.ordered and every entry is done.
func (c *conn) writeLoop() {
	var hbC <-chan time.Time
	if c.hbOut > 0 {
		// Check four times per interval, send after 3/4 of it idle: the
		// gap between heart-beats stays within [3/4, 1] × hbOut.
		t := time.NewTicker(c.hbOut / 4)
		defer t.Stop()
		hbC = t.C
	}
	c.lastWrite = time.Now()
	in := c.ordered
	var head *pending
	for in != nil || head != nil {
		var recv <-chan *pending
		var headDone <-chan struct{}
		if head == nil {
			recv = in
		} else {
			headDone = head.done
		}
		block := len(c.wbuf) == 0
		var ok bool
		if !block {
			// Something is buffered: handle whatever is ready now, flush
			// when nothing is.
			select {
			case head, ok = <-recv:
				if !ok {
					in = nil
				}
				continue
			case <-headDone:
				c.complete(head)
				head = nil
				continue
			case <-c.wake:
				c.writeDeliveries()
				continue
			default:
				c.flush()
				continue
			}
		}
		select {
		case head, ok = <-recv:
			if !ok {
				in = nil
			}
		case <-headDone:
			c.complete(head)
			head = nil
		case <-c.wake:
			c.writeDeliveries()
		case now := <-hbC:
			if !c.dead && now.Sub(c.lastWrite) >= c.hbOut*3/4 {
				c.wbuf = append(c.wbuf, '\n')
				c.flush()
			}
		}
	}
	c.flush()
}

// complete writes the outcome of a finished entry.
func (c *conn) complete(p *pending) {
	if p.failed {
		if c.dead {
			return // the connection already ended with an earlier ERROR
		}
		if !p.uncounted {
			c.s.c.errors[p.reason].Add(1)
		}
		c.write(c.errorFrame(p))
		c.finish()
		return
	}
	if p.msg != nil {
		// Accepted: the message is durable (or local-only) whether or not
		// this client is still there to hear about it. The ingest core
		// fans it out.
		c.s.c.accepted.Add(1)
	}
	c.s.c.accepted.Add(uint64(len(p.batch))) // a COMMIT's
	if p.hasReceipt {
		c.write(frame.New(frame.RECEIPT, frame.ReceiptId, p.receipt))
		if !c.dead {
			c.s.c.receipts.Add(1)
		}
	}
	if p.disconnect {
		c.finish()
	}
}

// finish ends the connection gracefully after the final frame: flush,
// make the reader stop, and let serve linger before closing.
func (c *conn) finish() {
	if c.dead {
		return
	}
	c.flush()
	c.dead = true
	c.killed.Store(true)
	c.dlMu.Lock()
	c.lingering = time.Now().Add(lingerTime)
	_ = c.nc.SetReadDeadline(c.lingering)
	c.dlMu.Unlock()
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func (c *conn) write(f *frame.Frame) {
	if c.dead {
		return
	}
	c.wbuf = AppendFrame(c.wbuf, f, c.version)
	if len(c.wbuf) >= maxWriteBatch || c.perFrame {
		c.flush()
	}
}

func (c *conn) flush() {
	if len(c.wbuf) == 0 {
		return
	}
	if c.dead {
		c.wbuf = c.wbuf[:0]
		return
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.WriteTimeout))
	_, err := c.nc.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	if cap(c.wbuf) > 4*maxWriteBatch {
		c.wbuf = nil
	}
	c.lastWrite = time.Now()
	if err != nil {
		c.log.Info("stomp write failed, closing", "err", err)
		c.dead = true
		_ = c.nc.Close()
	}
}

// writeDeliveries writes queued MESSAGE frames, as many as the unacked
// bounds allow.
func (c *conn) writeDeliveries() {
	if c.dead {
		return // teardown hands the queued messages back (or counts them)
	}
	var batch [64]*delivery
	n := 0
	more := false
	c.mu.Lock()
	for _, sub := range c.subList {
		for len(sub.queue) > 0 {
			if sub.ack != ackAuto && len(sub.unacked) >= c.s.opts.SubscriptionQueue {
				break
			}
			if n == len(batch) {
				more = true
				break
			}
			d := sub.queue[0]
			sub.queue[0] = nil
			sub.queue = sub.queue[1:]
			c.nextAck++
			d.ackID = strconv.FormatUint(c.nextAck, 10)
			if sub.ack != ackAuto {
				sub.unacked = append(sub.unacked, d)
				c.acks[d.ackID] = d
			} else {
				sub.held -= deliverySize(d) // written now; the write buffer bounds it from here
			}
			batch[n] = d
			n++
		}
	}
	c.mu.Unlock()
	for _, d := range batch[:n] {
		c.write(c.messageFrame(d))
		if !c.dead {
			c.s.c.deliveries.Add(1)
		}
	}
	if more {
		c.wakeWriter()
	}
}

// reservedMessageHeaders are set by the server on MESSAGE frames; message
// headers with these keys are not copied.
var reservedMessageHeaders = map[string]bool{
	frame.Destination: true, frame.ContentLength: true, frame.ContentType: true, frame.MessageId: true,
	frame.Subscription: true, frame.Ack: true, "redelivered": true,
}

func (c *conn) messageFrame(d *delivery) *frame.Frame {
	m, sub := d.m, d.sub
	f := frame.New(frame.MESSAGE,
		frame.Destination, message.ToSTOMP(m.Topic, sub.kind),
		frame.MessageId, d.ackID,
		frame.Subscription, sub.id,
	)
	if c.version == V12 && sub.ack != ackAuto {
		f.Header.Add(frame.Ack, d.ackID)
	}
	if m.ContentType != "" {
		f.Header.Add(frame.ContentType, m.ContentType)
	}
	f.Header.Add(frame.ContentLength, strconv.Itoa(len(m.Payload)))
	if d.attempts > 0 {
		f.Header.Add("redelivered", "true")
	}
	for _, h := range m.Headers {
		if !reservedMessageHeaders[h.Key] {
			f.Header.Add(h.Key, h.Value)
		}
	}
	f.Body = m.Payload
	return f
}
