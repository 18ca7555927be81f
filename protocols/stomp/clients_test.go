package stomp

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	gostomp "github.com/go-stomp/stomp/v3"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// TestGoStompClient: go-stomp's own client (1.2 with heart-beats) sends
// with receipts and subscribes with each ack mode.
func TestGoStompClient(t *testing.T) {
	sink := &recsink.Sink{}
	_, addr := startServer(t, testOptions{Sink: sink, Options: Options{Auth: users{}}})
	if _, err := gostomp.Dial("tcp", addr, gostomp.ConnOpt.Login("u", "wrong")); err == nil {
		t.Fatal("wrong passcode accepted")
	} else if !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong passcode: %v", err)
	}
	dial := func() *gostomp.Conn {
		c, err := gostomp.Dial("tcp", addr, append(goStompGuards(), gostomp.ConnOpt.Login("u", "p"), gostomp.ConnOpt.HeartBeat(time.Second, time.Second))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.MustDisconnect() })
		return c
	}
	sub := dial()
	pub := dial()
	for _, ack := range []gostomp.AckMode{gostomp.AckAuto, gostomp.AckClient, gostomp.AckClientIndividual} {
		t.Run(ack.String(), func(t *testing.T) {
			dest := "/topic/gs." + strings.ReplaceAll(ack.String(), "-", "_")
			// (A receipt header on SUBSCRIBE makes go-stomp's client close
			// the subscription channel when the RECEIPT arrives.)
			s, err := sub.Subscribe(dest, ack)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Unsubscribe() }()
			// Frames are processed in order: a receipt for a later SEND on
			// the same connection means the SUBSCRIBE is in place.
			if err := sub.Send("/queue/gs.sync", "", nil, gostomp.SendOpt.Receipt); err != nil {
				t.Fatal(err)
			}
			before := len(sink.Messages())
			for i := range 5 {
				if err := pub.Send(dest, "text/plain", []byte{'0' + byte(i)}, gostomp.SendOpt.Receipt, gostomp.SendOpt.Header("x-n", "v")); err != nil {
					t.Fatalf("send with receipt: %v", err)
				}
			}
			if got := len(sink.Messages()) - before; got != 5 {
				t.Fatalf("sink got %d", got)
			}
			// First deliveries come in send order; with client-individual,
			// message 2 is NACKed and comes again, after its first delivery
			// (not necessarily after message 4: fan-out follows the commit,
			// not the publisher's receipt).
			next, redelivered := 0, false
			for next < 5 || (ack == gostomp.AckClientIndividual && !redelivered) {
				select {
				case m := <-s.C:
					if m.Err != nil {
						t.Fatal(m.Err)
					}
					if m.Header.Get("x-n") != "v" || m.ContentType != "text/plain" {
						t.Fatalf("message %q: %v", m.Body, m.Header)
					}
					if m.Header.Get("redelivered") == "true" {
						if ack != gostomp.AckClientIndividual || string(m.Body) != "2" || next <= 2 || redelivered {
							t.Fatalf("redelivery %q after %d first deliveries: %v", m.Body, next, m.Header)
						}
						redelivered = true
						if err := sub.Ack(m); err != nil {
							t.Fatal(err)
						}
						continue
					}
					if string(m.Body) != string([]byte{'0' + byte(next)}) {
						t.Fatalf("message %d: %q %v", next, m.Body, m.Header)
					}
					next++
					if m.ShouldAck() {
						if next == 3 && ack == gostomp.AckClientIndividual {
							if err := sub.Nack(m); err != nil {
								t.Fatal(err)
							}
							continue
						}
						if err := sub.Ack(m); err != nil {
							t.Fatal(err)
						}
					}
				case <-time.After(guard()):
					t.Fatalf("hang guard: %d first deliveries, redelivered %v", next, redelivered)
				}
			}
		})
	}
}

// goStompGuards raise go-stomp's own waits (10s for the send queue, 30s for
// receipts) to the hang guard.
//
// Unsubscribe gets a shorter bound: go-stomp v3.1.3 can lose the wake-up
// of its RECEIPT (Subscription.closeChannel broadcasts the condition
// without holding its lock, so the broadcast can come before the waiter
// waits), and then Unsubscribe sits out the whole timeout although the
// RECEIPT arrived — 10 minutes under qemu with the full hang guard (make
// test-arm). No test here asserts on Unsubscribe's answer; the server's
// RECEIPT for UNSUBSCRIBE is asserted frame by frame in subs_test.go.
func goStompGuards() []func(*gostomp.Conn) error {
	g := guard()
	return []func(*gostomp.Conn) error{gostomp.ConnOpt.MsgSendTimeout(g), gostomp.ConnOpt.RcvReceiptTimeout(g),
		gostomp.ConnOpt.DisconnectReceiptTimeout(g), gostomp.ConnOpt.UnsubscribeReceiptTimeout(testkit.Timeout(5 * time.Second))}
}

// pythonStomp is the python3-stomp driver: one scenario per run, printing
// one JSON object. Events of every connection go to one queue, tagged. Its
// waits use the hang guard passed as the fourth argument (seconds).
const pythonStomp = `
import json, queue, sys, time, stomp
port, ver, scenario, guard = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
ev = queue.Queue()
class L(stomp.ConnectionListener):
    def on_message(self, f): ev.put(('MESSAGE', f.headers, f.body))
    def on_receipt(self, f): ev.put(('RECEIPT', f.headers, f.body))
    def on_error(self, f): ev.put(('ERROR', f.headers, f.body))
cls = {'1.0': stomp.Connection10, '1.1': stomp.Connection11, '1.2': stomp.Connection12}[ver]
def connect(login='u', pw='p', wait=True):
    c = cls([('127.0.0.1', port)])
    c.set_listener('l', L())
    c.connect(login, pw, wait=wait)
    return c
held = []  # events read while waiting for another kind (MESSAGE and RECEIPT interleave)
def wait(kind):
    for i, (k, h, b) in enumerate(held):
        if k == kind:
            del held[i]
            return h, b
    while True:
        k, h, b = ev.get(timeout=guard)
        if k == kind:
            return h, b
        if k == 'ERROR':
            raise Exception('ERROR %r %r' % (h, b))
        held.append((k, h, b))
def ack(c, cmd, h, receipt):
    if ver == '1.0':
        getattr(c, cmd)(h['message-id'], receipt=receipt)
    elif ver == '1.1':
        getattr(c, cmd)(h['message-id'], h['subscription'], receipt=receipt)
    else:
        getattr(c, cmd)(h['ack'], receipt=receipt)
    wait('RECEIPT')
out = {}
if scenario == 'send':
    c = connect()
    for i in range(5):
        c.send(destination='/queue/py.send', body='m%d' % i, receipt='r%d' % i, headers={'x-py': 'a:b'})
    out['receipts'] = [wait('RECEIPT')[0]['receipt-id'] for i in range(5)]
    c.disconnect(receipt='bye')
    out['disconnected'] = True
elif scenario == 'badpass':
    c = connect(pw='nope', wait=False)
    h, b = ev.get(timeout=guard)[1:]
    out['error'] = h.get('message')
elif scenario.startswith('sub-'):
    mode = scenario[4:]
    c = connect()
    dest = '/queue/py.' + mode.replace('-', '_')
    c.subscribe(dest, id='s1', ack=mode, headers={'receipt': 'sub'})
    wait('RECEIPT')
    for i in range(3):
        c.send(destination=dest, body='m%d' % i, receipt='r%d' % i)
    redelivered = []
    msgs = [wait('MESSAGE') for i in range(3)]
    for i in range(3):
        wait('RECEIPT')
    got = [b for h, b in msgs]
    if mode == 'client-individual':
        ack(c, 'nack', msgs[0][0], 'n1')
        h, b = wait('MESSAGE')
        redelivered.append((b, h.get('redelivered')))
        ack(c, 'ack', h, 'a0')
        ack(c, 'ack', msgs[1][0], 'a1')
        ack(c, 'ack', msgs[2][0], 'a2')
    elif mode == 'client':
        if ver != '1.0':
            ack(c, 'nack', msgs[2][0], 'n1')  # cumulative: all three come back
            for i in range(3):
                h, b = wait('MESSAGE')
                redelivered.append((b, h.get('redelivered')))
            ack(c, 'ack', h, 'a')
        else:
            ack(c, 'ack', msgs[2][0], 'a')
    out['got'] = got
    out['redelivered'] = redelivered
    c.disconnect(receipt='bye')
elif scenario == 'tx':
    c = connect()
    t1 = c.begin()
    c.send(destination='/queue/py.tx', body='a0', transaction=t1)
    c.send(destination='/queue/py.tx', body='a1', transaction=t1, receipt='a1')
    wait('RECEIPT')
    c.abort(t1, receipt='abort')
    out['abort'] = wait('RECEIPT')[0]['receipt-id']
    t2 = c.begin()
    for i in range(3):
        c.send(destination='/queue/py.tx', body='c%d' % i, transaction=t2)
    c.commit(t2, receipt='commit')
    out['commit'] = wait('RECEIPT')[0]['receipt-id']
    c.disconnect(receipt='bye')
elif scenario == 'tx-twice':
    c = connect()
    c.begin('x')
    c.begin('x')
    k, h, b = ev.get(timeout=guard)
    out['error'] = [k, h.get('message')]
print(json.dumps(out), flush=True)
`

func requirePython(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real client test; skipped under -short")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import stomp").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-stomp missing (CI=true): %v", err)
		}
		t.Skip("python3-stomp missing: apt-get install python3-stomp")
	}
}

func runPython(t *testing.T, addr, version, scenario string) map[string]any {
	t.Helper()
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	// The kill guard lies beyond the script's own waits (several in a row).
	ctx, cancel := context.WithTimeout(context.Background(), 5*guard())
	defer cancel()
	wait := strconv.FormatFloat(guard().Seconds(), 'f', -1, 64)
	out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", pythonStomp, port, version, scenario, wait).CombinedOutput()
	if err != nil {
		t.Fatalf("python %s %s: %v\n%s", version, scenario, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var res map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("python output: %v\n%s", err, out)
	}
	return res
}

func TestPythonStomp(t *testing.T) {
	requirePython(t)
	sink := &recsink.Sink{}
	s, addr := startServer(t, testOptions{Sink: sink, Options: Options{Auth: users{}}})
	for _, v := range []string{"1.0", "1.1", "1.2"} {
		t.Run(v+"/send", func(t *testing.T) {
			before := len(sink.Messages())
			res := runPython(t, addr, v, "send")
			if got := strings.Join(toStrings(res["receipts"]), ","); got != "r0,r1,r2,r3,r4" {
				t.Fatalf("receipts %s", got)
			}
			msgs := sink.Messages()[before:]
			if len(msgs) != 5 {
				t.Fatalf("sink got %d", len(msgs))
			}
			for i, m := range msgs {
				if m.Topic != "py/send" || string(m.Payload) != "m"+string(rune('0'+i)) {
					t.Errorf("message %d: %s %q", i, m.Topic, m.Payload)
				}
				if h, _ := m.Header("x-py"); h != "a:b" {
					t.Errorf("header x-py %q (escaping in %s)", h, v)
				}
			}
		})
		t.Run(v+"/badpass", func(t *testing.T) {
			res := runPython(t, addr, v, "badpass")
			if res["error"] != "authentication failed" {
				t.Fatalf("got %v", res)
			}
		})
		modes := []string{"auto", "client", "client-individual"}
		if v == "1.0" {
			modes = modes[:2] // 1.0 has no client-individual
		}
		for _, mode := range modes {
			t.Run(v+"/sub-"+mode, func(t *testing.T) {
				res := runPython(t, addr, v, "sub-"+mode)
				if got := strings.Join(toStrings(res["got"]), ","); got != "m0,m1,m2" {
					t.Fatalf("delivered %s", got)
				}
				var want string
				switch {
				case mode == "client-individual":
					want = "[[m0 true]]"
				case mode == "client" && v != "1.0":
					want = "[[m0 true] [m1 true] [m2 true]]"
				default:
					want = "[]"
				}
				if got := fmtAny(res["redelivered"]); got != want {
					t.Fatalf("redelivered %s, want %s", got, want)
				}
			})
		}
	}
	waitFor(t, "python connections to end", func() bool { return s.Stats().ConnectionsCurrent == 0 })
	if st := s.Stats(); st.Errors[ingest.ReasonNotAuthorized] != 3 {
		t.Errorf("stats %+v", st)
	}
}

// TestPythonStompTransactions: stomp.py's begin/abort/commit in every
// version: the aborted SENDs are not stored, the committed ones are, whole,
// by the COMMIT's receipt; a second BEGIN of an open id is an ERROR.
func TestPythonStompTransactions(t *testing.T) {
	requirePython(t)
	for _, v := range []string{"1.0", "1.1", "1.2"} {
		t.Run(v, func(t *testing.T) {
			sp, s, addr := startSpoolServer(t, spool.Options{}, Options{Auth: users{}})
			res := runPython(t, addr, v, "tx")
			if res["abort"] != "abort" || res["commit"] != "commit" {
				t.Fatalf("receipts %v", res)
			}
			if got := spooled(t, sp); !slices.Equal(got, []string{"c0", "c1", "c2"}) {
				t.Fatalf("spool holds %v, want the committed c0 c1 c2 only", got)
			}
			res = runPython(t, addr, v, "tx-twice")
			if got := toStrings(res["error"]); !slices.Equal(got, []string{"ERROR", `transaction "x" already begun`}) {
				t.Fatalf("second BEGIN: %q", got)
			}
			waitFor(t, "python connections to end", func() bool { return s.Stats().ConnectionsCurrent == 0 })
		})
	}
}

// TestGoStompTransactions: go-stomp's Transaction API: Send inside a
// transaction stores nothing until CommitWithReceipt, which returns once
// all of them are stored; AbortWithReceipt discards; a NACK in a
// transaction redelivers after its commit.
func TestGoStompTransactions(t *testing.T) {
	sp, _, addr := startSpoolServer(t, spool.Options{}, Options{Auth: users{}})
	c, err := gostomp.Dial("tcp", addr, append(goStompGuards(), gostomp.ConnOpt.Login("u", "p"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Disconnect() }()
	sub, err := c.Subscribe("/queue/gs.tx", gostomp.AckClientIndividual)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := c.BeginWithError()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := tx.Send("/queue/gs.tx", "text/plain", []byte("c"+strconv.Itoa(i)), gostomp.SendOpt.Receipt); err != nil {
			t.Fatal(err)
		}
	}
	if n := sp.Stats().Messages; n != 0 {
		t.Fatalf("%d stored before COMMIT", n)
	}
	ab, err := c.BeginWithError()
	if err != nil {
		t.Fatal(err)
	}
	if err := ab.Send("/queue/gs.tx", "text/plain", []byte("aborted")); err != nil {
		t.Fatal(err)
	}
	if err := ab.AbortWithReceipt(); err != nil {
		t.Fatal(err)
	}
	if err := tx.CommitWithReceipt(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if n := sp.Stats().Messages; n != 3 {
		t.Fatalf("%d stored after the COMMIT's receipt, want 3", n)
	}
	var first *gostomp.Message
	for i := range 3 {
		select {
		case m := <-sub.C:
			if m.Err != nil || string(m.Body) != "c"+strconv.Itoa(i) {
				t.Fatalf("delivery %d: %q %v", i, m.Body, m.Err)
			}
			if i == 0 {
				first = m
			} else if err := c.Ack(m); err != nil {
				t.Fatal(err)
			}
		case <-time.After(guard()):
			t.Fatalf("hang guard: %d deliveries", i)
		}
	}
	ntx := c.Begin()
	if err := ntx.Nack(first); err != nil {
		t.Fatal(err)
	}
	if err := ntx.CommitWithReceipt(); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-sub.C:
		if string(m.Body) != "c0" || m.Header.Get("redelivered") != "true" {
			t.Fatalf("after the NACK's commit: %q %v", m.Body, m.Header)
		}
		if err := c.Ack(m); err != nil {
			t.Fatal(err)
		}
	case <-time.After(guard()):
		t.Fatal("hang guard: no redelivery after the transaction's NACK was committed")
	}
	_ = sub.Unsubscribe()
	if got := spooled(t, sp); !slices.Equal(got, []string{"c0", "c1", "c2"}) {
		t.Fatalf("spool holds %v", got)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

func fmtAny(v any) string {
	b, _ := json.Marshal(v)
	return strings.NewReplacer(`"`, "", ",", " ").Replace(string(b))
}

var _ = message.AllowAll{}
