package stomp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"go.uber.org/goleak"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// guard is the hang guard of every wait in these tests: testkit's default
// bound, scaled by FERRY_TEST_TIMEOUT_SCALE. Reaching it means a hang.
func guard() time.Duration { return testkit.Timeout(testkit.DefaultWait) }

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runChild() // durability test child: never returns
	}
	// go-stomp's client (used here as a real third-party peer) leaves a
	// goroutine behind when a receipt wait times out (waitWithTimeout waits
	// on a sync.Cond nobody signals): its leak, not ours.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/go-stomp/stomp/v3.waitWithTimeout.func1"))
}

// testOptions are the server's Options plus what a test wires into the
// ingest core the server gets (Options.Ingest is built from them).
type testOptions struct {
	Options
	Sink   message.Sink           // nil: a new recsink.Sink
	Router message.Router         // nil: every topic spooled
	Local  message.LocalPublisher // also receives the fan-out, besides the server itself
}

// newCore builds the ingest core of a test around its sink.
func newCore(t testing.TB, o testOptions) *ingest.Core {
	t.Helper()
	core, err := ingest.New(ingest.Options{Sink: o.Sink, Router: o.Router, Timeout: guard()})
	if err != nil {
		t.Fatal(err)
	}
	if o.Local != nil {
		core.AddLocal(o.Local)
	}
	t.Cleanup(core.Close)
	return core
}

// startServer runs a server on a free 127.0.0.1 port until the test ends.
// AcceptTimeout, ReadTimeout, WriteTimeout and ConnectTimeout default to the hang guard: the
// server's defaults (5s, 30s, 10s, 5s) are timers that a loaded machine can
// reach while a test holds an Accept open or is slow to read or write.
func startServer(t testing.TB, to testOptions) (*Server, string) {
	t.Helper()
	if to.Sink == nil {
		to.Sink = &recsink.Sink{}
	}
	opts := to.Options
	if opts.Ingest == nil {
		opts.Ingest = newCore(t, to)
	}
	if opts.Auth == nil {
		opts.Auth = message.AllowAll{}
	}
	for _, d := range []*time.Duration{&opts.AcceptTimeout, &opts.ReadTimeout, &opts.WriteTimeout, &opts.ConnectTimeout} {
		if *d == 0 {
			*d = guard()
		}
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
		ctx, cancel := context.WithTimeout(context.Background(), guard())
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
	nc, err := net.DialTimeout("tcp", addr, guard())
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
	_ = c.nc.SetWriteDeadline(time.Now().Add(guard()))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame (skipping heart-beats) or fails the test
// at the hang guard.
func (c *rawClient) next() *frame.Frame {
	c.t.Helper()
	f, err := c.nextErr(guard())
	if err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	return f
}

// nextErr returns the next frame, waiting at most d: a hang guard, or the
// short wait of a check that nothing more is sent (a slow machine can make
// such a check weaker, never fail it).
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
	_ = c.nc.SetReadDeadline(time.Now().Add(guard()))
	var buf [512]byte
	for {
		n, err := c.nc.Read(buf[:])
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("hang guard: connection not closed by the server after %v", guard())
			}
			return
		}
		if bytes.Trim(buf[:n], "\r\n") != nil && len(bytes.Trim(buf[:n], "\r\n")) > 0 {
			c.t.Fatalf("unexpected data after ERROR: %q", buf[:n])
		}
	}
}

// waitFor waits for cond with the hang guard.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testkit.Wait(t, what, cond)
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
