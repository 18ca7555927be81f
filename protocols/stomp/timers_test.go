package stomp

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// bubbleServer starts a server on a pipe listener inside a synctest bubble
// and stops it when fn returns. A nil Sink is a new recsink.Sink.
func bubbleServer(t *testing.T, to testOptions, fn func(s *Server, ln *testkit.PipeListener)) {
	if to.Sink == nil {
		to.Sink = &recsink.Sink{}
	}
	opts := to.Options
	opts.Ingest = newCore(t, to)
	opts.Auth = message.AllowAll{}
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln := testkit.NewPipeListener()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	fn(s, ln)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatal(err)
	}
}

// clientEvents reads everything the server sends and reports heart-beats,
// frames and the end of the connection with their (fake) times.
type clientEvents struct {
	mu         sync.Mutex
	heartBeats []time.Time
	frames     []*frame.Frame
	frameAt    []time.Time // when each of frames arrived
	closedAt   time.Time
}

func watch(nc net.Conn) *clientEvents {
	ev := &clientEvents{}
	r := NewReader(nc, Limits{})
	r.SetVersion(V12)
	go func() {
		for {
			f, err := r.Read()
			ev.mu.Lock()
			switch {
			case err != nil:
				ev.closedAt = time.Now()
				ev.mu.Unlock()
				return
			case f == nil:
				ev.heartBeats = append(ev.heartBeats, time.Now())
			default:
				ev.frames = append(ev.frames, f)
				ev.frameAt = append(ev.frameAt, time.Now())
			}
			ev.mu.Unlock()
		}
	}()
	return ev
}

func TestHeartBeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bubbleServer(t, testOptions{Options: Options{HeartBeat: [2]time.Duration{time.Second, time.Second}}}, func(s *Server, ln *testkit.PipeListener) {
			nc := ln.Dial()
			defer func() { _ = nc.Close() }()
			ev := watch(nc)
			if _, err := nc.Write(AppendFrame(nil, frame.New(frame.CONNECT, frame.AcceptVersion, "1.2", frame.HeartBeat, "500,2000"), V12)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			// The client heart-beats every 900ms for 10s: the server
			// (expecting one every max(1s, 500ms) = 1s, closing after 2s of
			// silence) keeps it.
			for range 11 {
				time.Sleep(900 * time.Millisecond)
				if _, err := nc.Write([]byte("\n")); err != nil {
					t.Fatalf("connection closed while heart-beating: %v", err)
				}
			}
			synctest.Wait()
			ev.mu.Lock()
			if len(ev.frames) != 1 || ev.frames[0].Command != frame.CONNECTED || ev.frames[0].Header.Get(frame.HeartBeat) != "1000,1000" {
				t.Fatalf("frames %s", dump(ev.frames))
			}
			// The server sends every max(1s, 2s) = 2s.
			if n := len(ev.heartBeats); n < 4 || n > 7 {
				t.Errorf("%d heart-beats from the server in %v, want about 5", n, time.Since(start))
			}
			for i := 1; i < len(ev.heartBeats); i++ {
				if gap := ev.heartBeats[i].Sub(ev.heartBeats[i-1]); gap > 2*time.Second {
					t.Errorf("heart-beat gap %v > 2s", gap)
				}
			}
			ev.mu.Unlock()
			// Now silence: closed 2s after the last byte.
			last := time.Now()
			time.Sleep(10 * time.Second)
			synctest.Wait()
			ev.mu.Lock()
			defer ev.mu.Unlock()
			if ev.closedAt.IsZero() {
				t.Fatal("silent peer not closed")
			}
			// It gets an ERROR (best effort), then the connection ends after
			// the linger time.
			if gap := ev.closedAt.Sub(last); gap < 2*time.Second || gap > 2*time.Second+lingerTime {
				t.Errorf("closed %v after the last heart-beat, want 2s..2s+linger", gap)
			}
			if got := ev.frames[len(ev.frames)-1]; got.Command != frame.ERROR || got.Header.Get(frame.Message) != "heart-beat timeout" {
				t.Errorf("last frame %s", dump([]*frame.Frame{got}))
			}
			if st := s.Stats(); st.HeartBeatTimeouts != 1 {
				t.Errorf("HeartBeatTimeouts %d", st.HeartBeatTimeouts)
			}
		})
	})
}

// TestNoHeartBeatsIn10: a 1.0 session has no heart-beats and no idle limit.
func TestNoHeartBeatsIn10(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bubbleServer(t, testOptions{Options: Options{HeartBeat: [2]time.Duration{time.Second, time.Second}}}, func(s *Server, ln *testkit.PipeListener) {
			nc := ln.Dial()
			defer func() { _ = nc.Close() }()
			ev := watch(nc)
			_, _ = nc.Write(AppendFrame(nil, frame.New(frame.CONNECT, frame.HeartBeat, "1000,1000"), V10))
			time.Sleep(time.Hour)
			synctest.Wait()
			ev.mu.Lock()
			defer ev.mu.Unlock()
			if len(ev.heartBeats) != 0 || !ev.closedAt.IsZero() || len(ev.frames) != 1 {
				t.Fatalf("heart-beats %d, closed %v, frames %s", len(ev.heartBeats), ev.closedAt, dump(ev.frames))
			}
		})
	})
}

// TestSlowloris: a frame must be complete ReadTimeout after its first
// byte, and CONNECT must come within ConnectTimeout of the connection.
func TestSlowloris(t *testing.T) {
	for _, tc := range []struct {
		name    string
		connect bool
		partial string
	}{
		{"no CONNECT", false, ""},
		{"half CONNECT", false, "CONNECT\naccept-version:1.2\n"},
		{"half SEND", true, "SEND\ndestination:/queue/a\ncontent-length:10\n\nabc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				bubbleServer(t, testOptions{Options: Options{ReadTimeout: 5 * time.Second, ConnectTimeout: 5 * time.Second, HeartBeat: [2]time.Duration{-1, -1}}}, func(s *Server, ln *testkit.PipeListener) {
					nc := ln.Dial()
					defer func() { _ = nc.Close() }()
					ev := watch(nc)
					if tc.connect {
						_, _ = nc.Write(AppendFrame(nil, frame.New(frame.CONNECT, frame.AcceptVersion, "1.2"), V12))
						time.Sleep(time.Minute) // idle between frames is fine
					}
					start := time.Now()
					_, _ = nc.Write([]byte(tc.partial))
					time.Sleep(time.Minute)
					synctest.Wait()
					ev.mu.Lock()
					defer ev.mu.Unlock()
					if ev.closedAt.IsZero() {
						t.Fatal("not closed")
					}
					if gap := ev.closedAt.Sub(start); gap < 5*time.Second || gap > 5*time.Second+lingerTime {
						t.Errorf("closed after %v, want 5s..5s+linger", gap)
					}
					last := ev.frames[len(ev.frames)-1]
					if last.Command != frame.ERROR || last.Header.Get(frame.Message) != "frame not completed in time" {
						t.Errorf("frames %s", dump(ev.frames))
					}
					if s.Stats().Errors[ingest.ReasonReadTimeout] != 1 {
						t.Errorf("read timeouts %d", s.Stats().Errors[ingest.ReasonReadTimeout])
					}
				})
			})
		})
	}
}

// TestAcceptTimeout: a SEND whose Accept does not return gets its ERROR
// exactly AcceptTimeout after it was read.
func TestAcceptTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &recsink.Sink{Gate: make(chan struct{})} // never opens
		const timeout = 3 * time.Second
		bubbleServer(t, testOptions{Sink: sink, Options: Options{AcceptTimeout: timeout, HeartBeat: [2]time.Duration{-1, -1}}}, func(s *Server, ln *testkit.PipeListener) {
			nc := ln.Dial()
			defer func() { _ = nc.Close() }()
			ev := watch(nc)
			if _, err := nc.Write(AppendFrame(nil, frame.New(frame.CONNECT, frame.AcceptVersion, "1.1"), V11)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := nc.Write(AppendFrame(nil, fr(frame.SEND, "x", frame.Destination, "/queue/a", frame.Receipt, "1"), V11)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Minute)
			synctest.Wait()
			ev.mu.Lock()
			defer ev.mu.Unlock()
			if len(ev.frames) != 2 || ev.frames[0].Command != frame.CONNECTED {
				t.Fatalf("frames %s", dump(ev.frames))
			}
			last := ev.frames[1]
			if last.Command != frame.ERROR || !strings.Contains(last.Header.Get(frame.Message), "timed out") || last.Header.Get(frame.ReceiptId) != "1" {
				t.Errorf("frames %s", dump(ev.frames))
			}
			if d := ev.frameAt[1].Sub(start); d != timeout {
				t.Errorf("ERROR after %v, want AcceptTimeout (%v)", d, timeout)
			}
			if ev.closedAt.IsZero() {
				t.Error("connection not closed after the ERROR")
			}
			if got := s.Stats().Errors[ingest.ReasonTimeout]; got != 1 {
				t.Errorf("Errors[sink_timeout] = %d", got)
			}
		})
	})
}
