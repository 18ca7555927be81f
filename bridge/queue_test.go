package bridge

import (
	"context"
	"sync"
	"testing"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// testQueue is a Queue the integration tests can fill and inspect: the real
// spool or the in-memory fake.
type testQueue interface {
	Queue
	// putAll stores msgs keeping the order of each topic.
	putAll(t testing.TB, msgs []*message.Message)
	left(t testing.TB) int
	dead(t testing.TB) map[uint64]string
}

// queueKinds are the queues integration tests run against.
var queueKinds = []string{"fake", "spool"}

// newTestQueue returns a queue of kind: "fake" or the real "spool".
func newTestQueue(t testing.TB, kind string) testQueue {
	t.Helper()
	if kind == "fake" {
		return fakeTestQueue{newFakeQueue()}
	}
	s, err := spool.Open(t.TempDir()+"/spool.db", spool.Options{Durability: spool.Interval, MaxBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return realQueue{s}
}

type fakeTestQueue struct{ *fakeQueue }

func (q fakeTestQueue) putAll(_ testing.TB, msgs []*message.Message) {
	for _, m := range msgs {
		q.put(m)
	}
}
func (q fakeTestQueue) left(testing.TB) int               { return q.remaining() }
func (q fakeTestQueue) dead(testing.TB) map[uint64]string { return q.deadLetters() }

type realQueue struct{ *spool.Spool }

// putAll puts with one goroutine per topic, so that group commit batches
// the topics while each topic stays in order.
func (q realQueue) putAll(t testing.TB, msgs []*message.Message) {
	byTopic := map[string][]*message.Message{}
	for _, m := range msgs {
		byTopic[m.Topic] = append(byTopic[m.Topic], m)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(byTopic))
	for _, ms := range byTopic {
		wg.Go(func() {
			for _, m := range ms {
				if _, err := q.Put(context.Background(), spool.Entry{Priority: m.Priority, Data: message.Encode(nil, m)}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func (q realQueue) left(testing.TB) int { return int(q.Stats().Messages) }

func (q realQueue) dead(t testing.TB) map[uint64]string {
	d, err := q.DLQ(0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]string{}
	for _, x := range d {
		out[x.ID] = x.Reason
	}
	return out
}
