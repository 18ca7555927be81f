package spoolsink

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// With the gateway's defaults (spool.block_timeout and
// limits.*.accept_timeout both 5s) a full spool under overflow: block
// outlasts the accept timeout; the device must still be told "full" (G7
// visibility), not "timeout".
//
// Which of two real timers fires first is the machine's business, so the
// test decides: the block timeout is an hour, and the accept timeout ends
// (context.DeadlineExceeded) once the Put is parked.
func TestBlockedFullSpoolAnswersFull(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{MaxMessages: 1, Overflow: spool.Block,
		BlockTimeout: time.Hour}) // outlasts the accept timeout
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	k := New(sp, Options{})
	m := func() *message.Message {
		return &message.Message{Topic: "a", Payload: []byte(strings.Repeat("x", 10)), QoS: 1, Priority: 5}
	}
	if err := k.Accept(context.Background(), m()); err != nil {
		t.Fatal(err)
	}
	ctx := newDeadline() // accept_timeout
	wait := k.Submit(ctx, m())
	testkit.Wait(t, "the Put to be parked for lack of room", func() bool { return sp.Stats().Full })
	ctx.expire()
	errc := make(chan error, 1)
	go func() { errc <- wait() }()
	select {
	case err = <-errc:
	case <-testkit.After(testkit.DefaultWait):
		t.Fatalf("hang guard: Accept not answered %v after its accept timeout", testkit.Timeout(testkit.DefaultWait))
	}
	t.Logf("Accept on full spool: %v", err)
	if !errors.Is(err, message.ErrFull) {
		t.Fatalf("full spool not reported as ErrFull: %v", err)
	}
}

// deadlineCtx is a context whose deadline passes when the test says so:
// then Done is closed and Err is context.DeadlineExceeded, as for a
// context.WithTimeout that ran out.
type deadlineCtx struct {
	context.Context
	done chan struct{}
}

func newDeadline() *deadlineCtx {
	return &deadlineCtx{Context: context.Background(), done: make(chan struct{})}
}

func (c *deadlineCtx) expire()               { close(c.done) }
func (c *deadlineCtx) Done() <-chan struct{} { return c.done }

func (c *deadlineCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// A pipelining STOMP connection submits A then B (same topic) through the
// OrderedSink while the spool is full under overflow: block (the
// default). B would fit and A not yet; B must still not be stored before A
// (G3), which the spool's parking of blocked Puts guarantees.
func TestOrderedSinkKeepsOrderWhileBlocked(t *testing.T) {
	// A parked Put is to be let in by the Ack below, never by the block
	// timeout: that is only a hang guard (A would fail with ErrFull).
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{
		MaxBytes: 2000, MaxMessageBytes: 1500, Overflow: spool.Block, BlockTimeout: testkit.Timeout(testkit.DefaultWait),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	k := New(sp, Options{})
	ctx := context.Background()
	msg := func(id string, n int) *message.Message {
		return &message.Message{ID: id, Topic: "sensors/t", Payload: []byte(strings.Repeat("x", n)), QoS: 1, Priority: 5}
	}
	// Fill: one big message already spooled.
	if err := k.Accept(ctx, msg("F", 1200)); err != nil {
		t.Fatal(err)
	}
	waitA := k.Submit(ctx, msg("A", 1000)) // frame 1
	waitB := k.Submit(ctx, msg("B", 10))   // frame 2
	var wg sync.WaitGroup
	var errA, errB error
	wg.Go(func() { errA = waitA() })
	wg.Go(func() { errB = waitB() })
	// A does not fit: the spool parks it (Stats.Full), and B, submitted
	// after it, cannot be stored before it. Free space only then.
	testkit.Wait(t, "A to be parked for lack of room", func() bool { return sp.Stats().Full })
	// The bridge delivers F: space for A.
	items, err := sp.Lease(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Ack(ctx, items[0].ID); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("A: %v, B: %v", errA, errB)
	}
	items, err = sp.Lease(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, it := range items {
		m, err := message.Decode(it.Data)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, m.ID)
	}
	if strings.Join(order, ",") != "A,B" {
		t.Fatalf("spool order %v, want [A B] (submission order, G3)", order)
	}
}

// TestBatch: a batch is stored whole, in order, with OnAccepted and
// OnDuplicate for each message; a batch that does not fit stores nothing
// and is answered message.ErrFull.
func TestBatch(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{MaxMessages: 4, Overflow: spool.Reject, LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	var accepted, dups []string
	k := New(sp, Options{
		OnAccepted:  func(m *message.Message) { accepted = append(accepted, string(m.Payload)) },
		OnDuplicate: func(m *message.Message) { dups = append(dups, string(m.Payload)) },
	})
	m := func(p, key string) *message.Message {
		return &message.Message{Topic: "a/" + p, Payload: []byte(p), QoS: 1, Priority: 3, DedupeKey: key}
	}
	if err := k.AcceptBatch(context.Background(), []*message.Message{m("a", "ka"), m("b", ""), m("a2", "ka")}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(accepted, ",") != "a,b,a2" || strings.Join(dups, ",") != "a2" {
		t.Fatalf("accepted %v duplicates %v", accepted, dups)
	}
	err = k.SubmitBatch(context.Background(), []*message.Message{m("c", ""), m("d", ""), m("e", "")})()
	if !errors.Is(err, message.ErrFull) {
		t.Fatalf("batch over the cap: %v, want message.ErrFull", err)
	}
	items, err := sp.TryLease(10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		dm, err := message.Decode(it.Data)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(dm.Payload))
	}
	if strings.Join(got, ",") != "a,b" {
		t.Fatalf("stored %v", got)
	}
}
