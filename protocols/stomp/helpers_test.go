package stomp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"go.uber.org/goleak"

	"github.com/ferrymq/ferry/protocols/message"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runChild() // durability test child: never returns
	}
	// go-stomp's client (used here as a real third-party peer) leaves a
	// goroutine behind when a receipt wait times out (waitWithTimeout waits
	// on a sync.Cond nobody signals): its leak, not ours.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/go-stomp/stomp/v3.waitWithTimeout.func1"))
}

// memSink records accepted messages. When gate is set, Accept waits for it
// (or ctx); fail, when set, decides the error.
type memSink struct {
	mu    sync.Mutex
	msgs  []*message.Message
	gate  chan struct{}
	delay time.Duration
	fail  func(*message.Message) error
	calls chan *message.Message // optional: told about each Accept call
}

func (s *memSink) Accept(ctx context.Context, m *message.Message) error {
	if s.calls != nil {
		s.calls <- m
	}
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.fail != nil {
		if err := s.fail(m); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	return nil
}

func (s *memSink) messages() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.msgs...)
}

// startServer runs a server on a free 127.0.0.1 port until the test ends.
func startServer(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	if opts.Sink == nil {
		opts.Sink = &memSink{}
	}
	if opts.Auth == nil {
		opts.Auth = message.AllowAll{}
	}
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("serve returned %v, want ErrServerClosed", err)
		}
	})
	return s, ln.Addr().String()
}

// rawClient speaks raw frames to a server.
type rawClient struct {
	t  testing.TB
	nc net.Conn
	r  *Reader
	v  Version

	unread []*frame.Frame // read ahead, returned by next first
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &rawClient{t: t, nc: nc, r: NewReader(nc, Limits{MaxBody: 64 << 20})}
}

// connect dials and completes a CONNECT for version v (V10: no
// accept-version header).
func connectRaw(t testing.TB, addr string, v Version, hdr ...string) *rawClient {
	t.Helper()
	c := dialRaw(t, addr)
	h := []string{"host", "x"}
	if v != V10 {
		h = append(h, frame.AcceptVersion, v.String())
	}
	c.send(frame.New(frame.CONNECT, append(h, hdr...)...))
	f := c.next()
	if f.Command != frame.CONNECTED {
		t.Fatalf("CONNECT: got %s %v %q", f.Command, f.Header, f.Body)
	}
	if v != V10 && f.Header.Get(frame.Version) != v.String() {
		t.Fatalf("CONNECTED version %q, want %s", f.Header.Get(frame.Version), v)
	}
	c.v = v
	c.r.SetVersion(v)
	return c
}

func (c *rawClient) send(f *frame.Frame) {
	c.t.Helper()
	c.write(AppendFrame(nil, f, c.v))
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame (skipping heart-beats) or fails the test
// after 10s.
func (c *rawClient) next() *frame.Frame {
	c.t.Helper()
	f, err := c.nextErr(10 * time.Second)
	if err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	return f
}

func (c *rawClient) nextErr(d time.Duration) (*frame.Frame, error) {
	if len(c.unread) > 0 {
		f := c.unread[0]
		c.unread = c.unread[1:]
		return f, nil
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := c.r.Read()
		if err != nil || f != nil {
			return f, err
		}
	}
}

// expectError reads frames until an ERROR and checks its message header
// contains want, then checks the server closes the connection.
func (c *rawClient) expectError(want string) *frame.Frame {
	c.t.Helper()
	f := c.next()
	if f.Command != frame.ERROR {
		c.t.Fatalf("got %s %v, want ERROR", f.Command, f.Header)
	}
	if !strings.Contains(f.Header.Get(frame.Message), want) {
		c.t.Fatalf("ERROR message %q (body %q), want it to contain %q", f.Header.Get(frame.Message), f.Body, want)
	}
	c.expectClosed()
	return f
}

func (c *rawClient) expectClosed() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var buf [512]byte
	for {
		n, err := c.nc.Read(buf[:])
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("connection not closed by the server")
			}
			return
		}
		if bytes.Trim(buf[:n], "\r\n") != nil && len(bytes.Trim(buf[:n], "\r\n")) > 0 {
			c.t.Fatalf("unexpected data after ERROR: %q", buf[:n])
		}
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func listenLocal(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}
