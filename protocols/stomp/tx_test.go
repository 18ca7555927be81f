package stomp

import (
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// startSpoolServer runs a server whose ingest core stores in a real spool
// (the gateway's adapter), as the gateway wires it.
func startSpoolServer(t *testing.T, so spool.Options, o Options) (*spool.Spool, *Server, string) {
	t.Helper()
	so.LowerLaneShare = -1
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	s, addr := startServer(t, testOptions{Sink: spoolSink(sp), Options: o})
	return sp, s, addr
}

// spooled returns the payloads in the spool, in lease order (it leases
// them: call it once, at the end).
func spooled(t *testing.T, sp *spool.Spool) []string {
	t.Helper()
	items, err := sp.TryLease(10000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, it := range items {
		m, err := message.Decode(it.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(m.Payload))
	}
	return out
}

// expectReceipt reads the next frame and checks it is the RECEIPT id.
func (c *rawClient) expectReceipt(id string) {
	c.t.Helper()
	f := c.next()
	if f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != id {
		c.t.Fatalf("got %s %v %q, want RECEIPT %s", f.Command, f.Header, f.Body, id)
	}
}

// TestTransactionCommit: the SENDs of a transaction are not stored before
// COMMIT (their receipts say they were taken into it); a SEND outside the
// transaction meanwhile is; the COMMIT's RECEIPT comes once all of them
// are stored, in one commit; local subscribers get them after the commit,
// in order. Every version.
func TestTransactionCommit(t *testing.T) {
	for _, v := range []Version{V10, V11, V12} {
		t.Run(v.String(), func(t *testing.T) {
			sp, _, addr := startSpoolServer(t, spool.Options{}, Options{})
			sub := connectRaw(t, addr, v)
			sub.send(fr(frame.SUBSCRIBE, "", frame.Destination, "/topic/tx.#", frame.Id, "s", frame.Receipt, "sub"))
			sub.expectReceipt("sub")

			c := connectRaw(t, addr, v)
			c.send(fr(frame.BEGIN, "", frame.Transaction, "t1", frame.Receipt, "b"))
			c.expectReceipt("b")
			for i := range 3 {
				c.send(fr(frame.SEND, "in"+strconv.Itoa(i), frame.Destination, "/topic/tx.a", frame.Transaction, "t1", frame.Receipt, "s"+strconv.Itoa(i)))
				c.expectReceipt("s" + strconv.Itoa(i))
			}
			c.send(fr(frame.SEND, "outside", frame.Destination, "/topic/tx.b", frame.Receipt, "o"))
			c.expectReceipt("o")
			if st := sp.Stats(); st.Messages != 1 {
				t.Fatalf("%d messages stored before COMMIT, want only the one sent outside the transaction", st.Messages)
			}
			commits := sp.Stats().Commits
			c.send(fr(frame.COMMIT, "", frame.Transaction, "t1", frame.Receipt, "c"))
			c.expectReceipt("c")
			st := sp.Stats()
			if st.Messages != 4 || st.Commits != commits+1 {
				t.Fatalf("after COMMIT's receipt: %d messages in %d commits, want 4 in 1", st.Messages, st.Commits-commits)
			}
			var got []string
			for range 4 {
				f := sub.next()
				if f.Command != frame.MESSAGE {
					t.Fatalf("subscriber got %s %v", f.Command, f.Header)
				}
				got = append(got, string(f.Body))
			}
			if want := []string{"outside", "in0", "in1", "in2"}; !slices.Equal(got, want) {
				t.Fatalf("subscriber got %v, want %v", got, want)
			}
			if got := spooled(t, sp); !slices.Equal(got, []string{"outside", "in0", "in1", "in2"}) {
				t.Fatalf("spool holds %v", got)
			}
			// The id is free again after COMMIT.
			c.send(fr(frame.BEGIN, "", frame.Transaction, "t1", frame.Receipt, "b2"))
			c.expectReceipt("b2")
		})
	}
}

// TestTransactionDiscarded: ABORT, DISCONNECT and a dropped connection
// discard a transaction's SENDs: none of them is stored or delivered.
func TestTransactionDiscarded(t *testing.T) {
	for _, end := range []string{"abort", "disconnect", "drop"} {
		t.Run(end, func(t *testing.T) {
			sp, s, addr := startSpoolServer(t, spool.Options{}, Options{})
			c := connectRaw(t, addr, V12)
			c.send(fr(frame.BEGIN, "", frame.Transaction, "t"))
			c.send(fr(frame.SEND, "a", frame.Destination, "/queue/x", frame.Transaction, "t"))
			c.send(fr(frame.SEND, "b", frame.Destination, "/queue/x", frame.Transaction, "t", frame.Receipt, "sb"))
			c.expectReceipt("sb")
			switch end {
			case "abort":
				c.send(fr(frame.ABORT, "", frame.Transaction, "t", frame.Receipt, "ab"))
				c.expectReceipt("ab")
				c.send(fr(frame.SEND, "after", frame.Destination, "/queue/x", frame.Receipt, "r"))
				c.expectReceipt("r")
				c.send(fr(frame.COMMIT, "", frame.Transaction, "t", frame.Receipt, "c"))
				c.expectError("no transaction")
			case "disconnect":
				c.send(fr(frame.DISCONNECT, "", frame.Receipt, "bye"))
				c.expectReceipt("bye")
			case "drop":
				_ = c.nc.Close()
			}
			waitFor(t, "the connection to end", func() bool { return s.Stats().ConnectionsCurrent == 0 })
			want := []string(nil)
			if end == "abort" {
				want = []string{"after"}
			}
			if got := spooled(t, sp); !slices.Equal(got, want) {
				t.Fatalf("spool holds %v, want %v", got, want)
			}
		})
	}
}

// TestTransactionAllOrNothing: a COMMIT the spool cannot take whole stores
// nothing of it; the client gets an ERROR naming the transaction, with the
// COMMIT's receipt-id, and the connection ends.
func TestTransactionAllOrNothing(t *testing.T) {
	sp, s, addr := startSpoolServer(t, spool.Options{MaxMessages: 3, Overflow: spool.Reject}, Options{})
	c := connectRaw(t, addr, V12)
	c.send(fr(frame.SEND, "single", frame.Destination, "/queue/x", frame.Receipt, "r"))
	c.expectReceipt("r")
	c.send(fr(frame.BEGIN, "", frame.Transaction, "t"))
	for i := range 3 {
		c.send(fr(frame.SEND, "in"+strconv.Itoa(i), frame.Destination, "/queue/x", frame.Transaction, "t"))
	}
	c.send(fr(frame.COMMIT, "", frame.Transaction, "t", frame.Receipt, "c"))
	ef := c.expectError(`spool full: transaction "t" not accepted`)
	if ef.Header.Get(frame.ReceiptId) != "c" || !strings.Contains(string(ef.Body), "nothing of the batch was stored") {
		t.Fatalf("ERROR %v %q", ef.Header, ef.Body)
	}
	if got := spooled(t, sp); !slices.Equal(got, []string{"single"}) {
		t.Fatalf("spool holds %v", got)
	}
	if st := s.Stats(); st.Errors[ingest.ReasonFull] != 1 || st.FramesAccepted != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTransactionAcks: ACK and NACK inside a transaction take effect at
// COMMIT, not before, and not at all after ABORT.
func TestTransactionAcks(t *testing.T) {
	sink := &recsink.Sink{}
	_, addr := startServer(t, testOptions{Sink: sink})
	c := connectRaw(t, addr, V12)
	c.send(fr(frame.SUBSCRIBE, "", frame.Destination, "/queue/acks", frame.Id, "s", frame.Ack, "client-individual", frame.Receipt, "sub"))
	c.expectReceipt("sub")
	acks := map[string]string{}
	for i := range 3 {
		body := "m" + strconv.Itoa(i)
		c.send(fr(frame.SEND, body, frame.Destination, "/queue/acks"))
	}
	for len(acks) < 3 {
		f := c.next()
		if f.Command == frame.MESSAGE {
			acks[string(f.Body)] = f.Header.Get(frame.Ack)
		}
	}
	// NACK m0 and ACK m1 in t1, then ABORT: neither happened, so m0 can
	// still be acknowledged outside.
	c.send(fr(frame.BEGIN, "", frame.Transaction, "t1"))
	c.send(fr(frame.NACK, "", frame.Id, acks["m0"], frame.Transaction, "t1"))
	c.send(fr(frame.ACK, "", frame.Id, acks["m1"], frame.Transaction, "t1", frame.Receipt, "in-tx"))
	c.expectReceipt("in-tx")
	c.send(fr(frame.ABORT, "", frame.Transaction, "t1"))
	c.send(fr(frame.ACK, "", frame.Id, acks["m0"], frame.Receipt, "a0"))
	c.expectReceipt("a0")
	// NACK m2 and ACK m1 in t2, COMMIT: m2 comes again, m1 is done.
	c.send(fr(frame.BEGIN, "", frame.Transaction, "t2"))
	c.send(fr(frame.NACK, "", frame.Id, acks["m2"], frame.Transaction, "t2"))
	c.send(fr(frame.ACK, "", frame.Id, acks["m1"], frame.Transaction, "t2"))
	c.send(fr(frame.COMMIT, "", frame.Transaction, "t2", frame.Receipt, "c2"))
	// The redelivery and the COMMIT's receipt, in either order.
	var got []string
	for range 2 {
		f := c.next()
		got = append(got, f.Command+" "+f.Header.Get(frame.ReceiptId)+string(f.Body)+" "+f.Header.Get("redelivered"))
	}
	slices.Sort(got)
	if want := []string{"MESSAGE m2 true", "RECEIPT c2 "}; !slices.Equal(got, want) {
		t.Fatalf("after COMMIT got %q, want %q", got, want)
	}
	c.send(fr(frame.ACK, "", frame.Id, acks["m1"], frame.Receipt, "again"))
	c.expectError("unknown message")
}

// TestTransactionRefusals: the ERRORs the STOMP 1.2 spec implies for
// transaction ids and the limits, each naming what was wrong.
func TestTransactionRefusals(t *testing.T) {
	s, addr := startServer(t, testOptions{Options: Options{MaxTransactions: 2, MaxTransactionMessages: 2, MaxTransactionBytes: 10,
		MaxConnectionTransactionMessages: 3, MaxConnectionTransactionBytes: 15}})
	send := func(tx, body string, hdr ...string) *frame.Frame {
		return fr(frame.SEND, body, append([]string{frame.Destination, "/queue/x", frame.Transaction, tx}, hdr...)...)
	}
	begin := func(tx string) *frame.Frame { return fr(frame.BEGIN, "", frame.Transaction, tx) }
	for _, tc := range []struct {
		name   string
		frames []*frame.Frame
		want   string // in the message header
		detail string // in the body
		reason ingest.Reason
	}{
		{"BEGIN without id", []*frame.Frame{fr(frame.BEGIN, "", frame.Receipt, "r")}, "BEGIN without transaction header", "", ingest.ReasonProtocol},
		{"COMMIT without id", []*frame.Frame{fr(frame.COMMIT, "", frame.Receipt, "r")}, "COMMIT without transaction header", "", ingest.ReasonProtocol},
		{"ABORT without id", []*frame.Frame{fr(frame.ABORT, "", frame.Receipt, "r")}, "ABORT without transaction header", "", ingest.ReasonProtocol},
		{"BEGIN twice", []*frame.Frame{begin("t"), fr(frame.BEGIN, "", frame.Transaction, "t", frame.Receipt, "r")}, `transaction "t" already begun`, "", ingest.ReasonProtocol},
		{"COMMIT unknown", []*frame.Frame{fr(frame.COMMIT, "", frame.Transaction, "t", frame.Receipt, "r")}, `no transaction "t"`, "never begun", ingest.ReasonProtocol},
		{"ABORT unknown", []*frame.Frame{fr(frame.ABORT, "", frame.Transaction, "t", frame.Receipt, "r")}, `no transaction "t"`, "", ingest.ReasonProtocol},
		{"COMMIT twice", []*frame.Frame{begin("t"), fr(frame.COMMIT, "", frame.Transaction, "t"), fr(frame.COMMIT, "", frame.Transaction, "t", frame.Receipt, "r")}, `no transaction "t"`, "", ingest.ReasonProtocol},
		{"SEND after ABORT", []*frame.Frame{begin("t"), fr(frame.ABORT, "", frame.Transaction, "t"), send("t", "x", frame.Receipt, "r")}, `no transaction "t"`, "", ingest.ReasonProtocol},
		{"SEND in another id", []*frame.Frame{begin("t"), send("u", "x", frame.Receipt, "r")}, `no transaction "u"`, "", ingest.ReasonProtocol},
		{"ACK in unknown", []*frame.Frame{fr(frame.ACK, "", frame.Id, "1", frame.Transaction, "t", frame.Receipt, "r")}, `no transaction "t"`, "", ingest.ReasonProtocol},
		{"ACK unknown message in tx", []*frame.Frame{begin("t"), fr(frame.ACK, "", frame.Id, "1", frame.Transaction, "t", frame.Receipt, "r")}, "unknown message", "", ingest.ReasonProtocol},
		{"too many transactions", []*frame.Frame{begin("t"), begin("u"), fr(frame.BEGIN, "", frame.Transaction, "v", frame.Receipt, "r")}, "too many open transactions", "limits.stomp.max_transactions", ingest.ReasonTooLarge},
		{"messages per transaction", []*frame.Frame{begin("t"), send("t", "a"), send("t", "b"), send("t", "c", frame.Receipt, "r")}, `transaction "t" too large`, "more than 2 messages in one transaction (limits.stomp.max_transaction_messages)", ingest.ReasonTooLarge},
		{"bytes per transaction", []*frame.Frame{begin("t"), send("t", "12345"), send("t", "123456", frame.Receipt, "r")}, `transaction "t" too large`, "more than 10 body bytes in one transaction (limits.stomp.max_transaction_bytes)", ingest.ReasonTooLarge},
		{"messages per connection", []*frame.Frame{begin("t"), begin("u"), send("t", "a"), send("t", "b"), send("u", "c"), send("u", "d", frame.Receipt, "r")}, `transaction "u" too large`, "limits.stomp.max_connection_transaction_messages", ingest.ReasonTooLarge},
		{"bytes per connection", []*frame.Frame{begin("t"), begin("u"), send("t", "12345678"), send("u", "12345678", frame.Receipt, "r")}, `transaction "u" too large`, "limits.stomp.max_connection_transaction_bytes", ingest.ReasonTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().Errors[tc.reason]
			c := connectRaw(t, addr, V12)
			for _, f := range tc.frames {
				c.send(f)
			}
			ef := c.expectError(tc.want)
			if ef.Header.Get(frame.ReceiptId) != "r" || !strings.Contains(string(ef.Body), tc.detail) {
				t.Errorf("ERROR %v %q, want receipt-id r and %q", ef.Header, ef.Body, tc.detail)
			}
			if got := s.Stats().Errors[tc.reason] - before; got != 1 {
				t.Errorf("Errors[%s] grew by %d", tc.reason, got)
			}
		})
	}
}
