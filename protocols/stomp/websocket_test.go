package stomp

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
)

// wsClient speaks raw STOMP over a WebSocket, one message at a time.
type wsClient struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialWS(t *testing.T, url string, subprotocols ...string) *wsClient {
	t.Helper()
	d := websocket.Dialer{Subprotocols: subprotocols, HandshakeTimeout: guard()}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	t.Cleanup(func() { _ = ws.Close() })
	return &wsClient{t: t, ws: ws}
}

func (c *wsClient) send(msg string) {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		c.t.Fatal(err)
	}
}

// next reads one WebSocket message and parses it as exactly one frame.
func (c *wsClient) next() *frame.Frame {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(guard()))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	r := NewReader(bytes.NewReader(b), Limits{})
	r.SetVersion(V12)
	f, err := r.Read()
	if err != nil || f == nil {
		c.t.Fatalf("message %q is not a frame: %v", b, err)
	}
	if rest, _ := r.Read(); rest != nil {
		c.t.Fatalf("message %q holds more than one frame", b)
	}
	return f
}

// TestWebSocket: STOMP over WebSocket with the v12.stomp subprotocol; a
// CONNECT split across two messages and two frames in one message are
// read like a TCP stream; every frame the server sends is one message; the
// same logins and receipts as over TCP.
func TestWebSocket(t *testing.T) {
	sink := &recsink.Sink{}
	s, _ := startServer(t, testOptions{Sink: sink, Options: Options{Auth: users{}}})
	hs := httptest.NewServer(s.WebSocketHandler())
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/stomp"

	c := dialWS(t, url, "v12.stomp", "v11.stomp", "v10.stomp")
	if p := c.ws.Subprotocol(); p != "v12.stomp" {
		t.Fatalf("subprotocol %q, want v12.stomp", p)
	}
	c.send("CONNECT\naccept-version:1.2\nhost:x\nlogin:u\n")
	c.send("passcode:p\nheart-beat:0,0\n\n\x00")
	if f := c.next(); f.Command != frame.CONNECTED || f.Header.Get(frame.Version) != "1.2" {
		t.Fatalf("got %s %v", f.Command, headerList(f))
	}
	c.send("SUBSCRIBE\nid:s1\ndestination:/topic/ws.#\nreceipt:r1\n\n\x00SEND\ndestination:/topic/ws.a\nreceipt:r2\ncontent-type:text/plain\n\nhello\x00")
	got := map[string]*frame.Frame{}
	for range 3 {
		f := c.next()
		key := f.Command + ":" + f.Header.Get(frame.ReceiptId)
		got[key] = f
	}
	if got["RECEIPT:r1"] == nil || got["RECEIPT:r2"] == nil {
		t.Fatalf("receipts missing: %v", got)
	}
	if m := got["MESSAGE:"]; m == nil || string(m.Body) != "hello" || m.Header.Get(frame.Destination) != "/topic/ws.a" {
		t.Fatalf("message: %v", got)
	}
	if msgs := sink.Messages(); len(msgs) != 1 || msgs[0].Topic != "ws/a" {
		t.Fatalf("sink: %v", msgs)
	}

	// A wrong passcode gets the same ERROR as over TCP.
	bad := dialWS(t, url, "v12.stomp")
	bad.send("CONNECT\naccept-version:1.2\nhost:x\nlogin:u\npasscode:wrong\n\n\x00")
	if f := bad.next(); f.Command != frame.ERROR || !strings.Contains(f.Header.Get(frame.Message), "authentication failed") {
		t.Fatalf("got %s %v", f.Command, headerList(f))
	}

	// No subprotocol offered: served all the same (1.0 without accept-version).
	plain := dialWS(t, url)
	plain.send("CONNECT\nlogin:u\npasscode:p\n\n\x00")
	if f := plain.next(); f.Command != frame.CONNECTED {
		t.Fatalf("got %s", f.Command)
	}
}

// TestWebSocketSubprotocols: the server picks the best subprotocol the
// client offers, and a client that offers only v10.stomp or v11.stomp
// gets it; an offer of none of them is served without a subprotocol.
func TestWebSocketSubprotocols(t *testing.T) {
	s, _ := startServer(t, testOptions{Sink: &recsink.Sink{}, Options: Options{Auth: users{}}})
	hs := httptest.NewServer(s.WebSocketHandler())
	defer hs.Close()
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/"
	for _, tc := range []struct {
		offer []string
		want  string
	}{
		{[]string{"v10.stomp", "v11.stomp"}, "v11.stomp"},
		{[]string{"v10.stomp"}, "v10.stomp"},
		{[]string{"v11.stomp"}, "v11.stomp"},
		{[]string{"mqtt"}, ""},
	} {
		c := dialWS(t, url, tc.offer...)
		if p := c.ws.Subprotocol(); p != tc.want {
			t.Errorf("offer %v: subprotocol %q, want %q", tc.offer, p, tc.want)
		}
		c.send("CONNECT\naccept-version:1.0,1.1\nlogin:u\npasscode:p\n\n\x00")
		if f := c.next(); f.Command != frame.CONNECTED || f.Header.Get(frame.Version) != "1.1" {
			t.Errorf("offer %v: got %s %v", tc.offer, f.Command, headerList(f))
		}
	}
}

// TestWebSocketFrameSplitAnywhere: a SEND whose bytes arrive in one
// WebSocket message each is read as one frame and gets its RECEIPT.
func TestWebSocketFrameSplitAnywhere(t *testing.T) {
	sink := &recsink.Sink{}
	s, _ := startServer(t, testOptions{Sink: sink, Options: Options{Auth: users{}}})
	hs := httptest.NewServer(s.WebSocketHandler())
	defer hs.Close()
	c := dialWS(t, "ws"+strings.TrimPrefix(hs.URL, "http")+"/", "v12.stomp")
	c.send("CONNECT\naccept-version:1.2\nlogin:u\npasscode:p\n\n\x00")
	if f := c.next(); f.Command != frame.CONNECTED {
		t.Fatalf("got %s", f.Command)
	}
	for _, b := range []byte("SEND\ndestination:/topic/split.x\nreceipt:r9\n\nbytewise\x00") {
		c.send(string([]byte{b}))
	}
	if f := c.next(); f.Command != frame.RECEIPT || f.Header.Get(frame.ReceiptId) != "r9" {
		t.Fatalf("got %s %v", f.Command, headerList(f))
	}
	if msgs := sink.Messages(); len(msgs) != 1 || msgs[0].Topic != "split/x" || string(msgs[0].Payload) != "bytewise" {
		t.Fatalf("sink: %v", msgs)
	}
}
