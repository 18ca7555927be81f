package stomp

import (
	"strconv"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// Transactions (BEGIN, COMMIT, ABORT). The SENDs of a transaction are
// checked as they arrive (destination, ACL, rate: an ERROR then, as
// outside a transaction) and buffered in the connection, bounded in count
// and bytes per transaction and per connection; COMMIT hands them to the
// connection's ingest.Stream as one batch, which the spool stores in one
// transaction, all or none, and the COMMIT's RECEIPT goes out after that
// commit (fsync'd), in frame order with the connection's other answers.
// ACKs and NACKs of a transaction are checked as they arrive and applied
// after the commit. ABORT, DISCONNECT and a lost connection discard what a
// transaction holds: nothing of it was stored. The reader goroutine owns
// all of this state.

// stompTx is one open transaction.
type stompTx struct {
	msgs  []*message.Message
	bytes int
	acks  []txAck
}

// txAck is an ACK or NACK held for its transaction's COMMIT.
type txAck struct {
	nack   bool
	id     string
	subID  string
	hasSub bool
}

// The names of the transaction limits, as the gateway's configuration
// spells them, for the ERROR that says which one was exceeded.
const (
	limitTransactions        = "limits.stomp.max_transactions"
	limitTxMessages          = "limits.stomp.max_transaction_messages"
	limitTxBytes             = "limits.stomp.max_transaction_bytes"
	limitConnTxMessages      = "limits.stomp.max_connection_transaction_messages"
	limitConnTxBytes         = "limits.stomp.max_connection_transaction_bytes"
	errNoTransaction         = "no transaction "
	errNoTransactionDetail   = "it was never begun on this connection, or it was already committed or aborted"
	errTransactionHdrMissing = " without transaction header"
)

// txID returns f's transaction header, or fails f when it has none.
func (c *conn) txID(f *frame.Frame) (string, bool) {
	id, ok := f.Header.Contains(frame.Transaction)
	if !ok || id == "" {
		c.fail(f, ingest.ReasonProtocol, f.Command+errTransactionHdrMissing, "")
		return "", false
	}
	return id, true
}

// openTx returns the open transaction id names, or fails f.
func (c *conn) openTx(f *frame.Frame, id string) (*stompTx, bool) {
	tx := c.txs[id]
	if tx == nil {
		c.fail(f, ingest.ReasonProtocol, errNoTransaction+strconv.Quote(id), errNoTransactionDetail)
		return nil, false
	}
	return tx, true
}

func (c *conn) onBegin(f *frame.Frame) bool {
	id, ok := c.txID(f)
	if !ok {
		return true
	}
	switch {
	case c.txs[id] != nil:
		return c.fail(f, ingest.ReasonProtocol, "transaction "+strconv.Quote(id)+" already begun", "commit or abort it before beginning it again")
	case len(c.txs) >= c.s.opts.MaxTransactions:
		return c.fail(f, ingest.ReasonTooLarge, "too many open transactions",
			"at most "+strconv.Itoa(c.s.opts.MaxTransactions)+" per connection ("+limitTransactions+")")
	}
	if c.txs == nil {
		c.txs = map[string]*stompTx{}
	}
	c.txs[id] = &stompTx{}
	c.receipt(f)
	return false
}

func (c *conn) onAbort(f *frame.Frame) bool {
	id, ok := c.txID(f)
	if !ok {
		return true
	}
	tx, ok := c.openTx(f, id)
	if !ok {
		return true
	}
	c.dropTx(id, tx)
	c.receipt(f)
	return false
}

func (c *conn) dropTx(id string, tx *stompTx) {
	delete(c.txs, id)
	c.txMsgs -= len(tx.msgs)
	c.txBytes -= tx.bytes
}

// sendInTx buffers m, the SEND f checked, in its transaction.
func (c *conn) sendInTx(f *frame.Frame, id string, m *message.Message) bool {
	tx, ok := c.openTx(f, id)
	if !ok {
		return true
	}
	o := &c.s.opts
	n := len(m.Payload)
	over := func(what, limit string, max int) bool {
		return c.fail(f, ingest.ReasonTooLarge, "transaction "+strconv.Quote(id)+" too large: not committed",
			"more than "+strconv.Itoa(max)+" "+what+" ("+limit+")")
	}
	switch {
	case len(tx.msgs)+1 > o.MaxTransactionMessages:
		return over("messages in one transaction", limitTxMessages, o.MaxTransactionMessages)
	case tx.bytes+n > o.MaxTransactionBytes:
		return over("body bytes in one transaction", limitTxBytes, o.MaxTransactionBytes)
	case c.txMsgs+1 > o.MaxConnectionTransactionMessages:
		return over("messages in the open transactions of one connection", limitConnTxMessages, o.MaxConnectionTransactionMessages)
	case c.txBytes+n > o.MaxConnectionTransactionBytes:
		return over("body bytes in the open transactions of one connection", limitConnTxBytes, o.MaxConnectionTransactionBytes)
	}
	tx.msgs = append(tx.msgs, m)
	tx.bytes += n
	c.txMsgs++
	c.txBytes += n
	// The receipt of a SEND inside a transaction says it was taken into
	// the transaction; the COMMIT's says it is stored.
	c.receipt(f)
	return false
}

func (c *conn) onCommit(f *frame.Frame) bool {
	id, ok := c.txID(f)
	if !ok {
		return true
	}
	tx, ok := c.openTx(f, id)
	if !ok {
		return true
	}
	c.dropTx(id, tx)
	if len(tx.msgs) == 0 {
		c.applyAcks(tx.acks)
		c.receipt(f)
		return false
	}
	p := &pending{batch: tx.msgs, acks: tx.acks, tx: id, done: make(chan struct{})}
	p.receipt, p.hasReceipt = f.Header.Contains(frame.Receipt)
	// As a SEND: submitted in frame order, answered (answer) after the
	// batch's commit, in order with the connection's other frames.
	if !c.stream.SubmitBatch(c.s.ctx, tx.msgs, ingest.SubmitOptions{Timeout: c.s.opts.AcceptTimeout}, p) {
		p.failed, p.reason, p.errMsg = true, ingest.ReasonShuttingDown, "server shutting down: transaction "+strconv.Quote(id)+" not committed"
		close(p.done)
	}
	c.push(p)
	return false
}

// applyAcks applies a committed transaction's ACKs and NACKs. One whose
// message was acknowledged meanwhile (a cumulative ACK outside the
// transaction) has nothing left to do.
func (c *conn) applyAcks(acks []txAck) {
	for _, a := range acks {
		c.ack(a.id, a.subID, a.hasSub, a.nack)
	}
}
