package gateway

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// A pipelining STOMP connection submits A then B (same topic) through the
// gateway's OrderedSink while the spool is full under overflow: block (the
// default). B would fit and A not yet; B must still not be stored before A
// (G3), which the spool's parking of blocked Puts guarantees.
func TestOrderedSinkKeepsOrderWhileBlocked(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{
		MaxBytes: 2000, MaxMessageBytes: 1500, Overflow: spool.Block, BlockTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	g := &Gateway{sp: sp, leased: map[uint64]time.Time{}}
	g.metrics = NewMetrics(MetricsOptions{Spool: sp, Ingress: func() []IngressStats { return nil }, Bridge: func() BridgeStats { return BridgeStats{} }})
	k := g.sink(message.ProtoSTOMP)
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
	time.Sleep(200 * time.Millisecond)
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
