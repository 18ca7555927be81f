package stomp

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	gostomp "github.com/go-stomp/stomp/v3"

	"github.com/ferrymq/ferry/protocols/message"
)

// TestGoStompClient: go-stomp's own client (1.2 with heart-beats) sends
// with receipts and subscribes with each ack mode.
func TestGoStompClient(t *testing.T) {
	sink := &memSink{}
	_, addr := startServer(t, Options{Sink: sink, Auth: users{}})
	if _, err := gostomp.Dial("tcp", addr, gostomp.ConnOpt.Login("u", "wrong")); err == nil {
		t.Fatal("wrong passcode accepted")
	} else if !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong passcode: %v", err)
	}
	dial := func() *gostomp.Conn {
		c, err := gostomp.Dial("tcp", addr, gostomp.ConnOpt.Login("u", "p"), gostomp.ConnOpt.HeartBeat(time.Second, time.Second))
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
			before := len(sink.messages())
			for i := range 5 {
				if err := pub.Send(dest, "text/plain", []byte{'0' + byte(i)}, gostomp.SendOpt.Receipt, gostomp.SendOpt.Header("x-n", "v")); err != nil {
					t.Fatalf("send with receipt: %v", err)
				}
			}
			if got := len(sink.messages()) - before; got != 5 {
				t.Fatalf("sink got %d", got)
			}
			for i := range 5 {
				select {
				case m := <-s.C:
					if m.Err != nil {
						t.Fatal(m.Err)
					}
					if string(m.Body) != string([]byte{'0' + byte(i)}) || m.Header.Get("x-n") != "v" || m.ContentType != "text/plain" {
						t.Fatalf("message %d: %q %v", i, m.Body, m.Header)
					}
					if m.ShouldAck() {
						if i == 2 && ack == gostomp.AckClientIndividual {
							if err := sub.Nack(m); err != nil {
								t.Fatal(err)
							}
							continue
						}
						if err := sub.Ack(m); err != nil {
							t.Fatal(err)
						}
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("message %d not delivered", i)
				}
			}
			if ack == gostomp.AckClientIndividual {
				select {
				case m := <-s.C:
					if string(m.Body) != "2" || m.Header.Get("redelivered") != "true" {
						t.Fatalf("redelivery: %q %v", m.Body, m.Header)
					}
					if err := sub.Ack(m); err != nil {
						t.Fatal(err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("NACKed message not redelivered")
				}
			}
		})
	}
}

// pythonStomp is the python3-stomp driver: one scenario per run, printing
// one JSON object. Events of every connection go to one queue, tagged.
const pythonStomp = `
import json, queue, sys, time, stomp
port, ver, scenario = int(sys.argv[1]), sys.argv[2], sys.argv[3]
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
        k, h, b = ev.get(timeout=10)
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
    h, b = ev.get(timeout=10)[1:]
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", pythonStomp, port, version, scenario).CombinedOutput()
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
	sink := &memSink{}
	s, addr := startServer(t, Options{Sink: sink, Auth: users{}})
	for _, v := range []string{"1.0", "1.1", "1.2"} {
		t.Run(v+"/send", func(t *testing.T) {
			before := len(sink.messages())
			res := runPython(t, addr, v, "send")
			if got := strings.Join(toStrings(res["receipts"]), ","); got != "r0,r1,r2,r3,r4" {
				t.Fatalf("receipts %s", got)
			}
			msgs := sink.messages()[before:]
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
	st := s.Stats()
	if st.Errors[ReasonAuth] != 3 || st.ConnectionsCurrent != 0 && !waitZero(s) {
		t.Errorf("stats %+v", st)
	}
}

func waitZero(s *Server) bool {
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().ConnectionsCurrent != 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
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
