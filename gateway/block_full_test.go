package gateway

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// With the defaults (spool.block_timeout and limits.*.accept_timeout both
// 5s) a full spool under overflow: block outlasts the accept timeout; the
// device must still be told "full" (G7 visibility), not "timeout".
func TestBlockedFullSpoolAnswersFull(t *testing.T) {
	cfg := Default()
	cfg.Spool.Path = filepath.Join(t.TempDir(), "s.db")
	cfg.Spool.MaxMessages = 1
	o := cfg.SpoolOptions(nil)
	o.BlockTimeout = time.Second // scaled down from 5s/5s
	sp, err := spool.Open(cfg.Spool.Path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	g := &Gateway{sp: sp, leased: map[uint64]time.Time{}}
	g.metrics = NewMetrics(MetricsOptions{Spool: sp, Ingress: func() []IngressStats { return nil }, Bridge: func() BridgeStats { return BridgeStats{} }})
	k := g.sink(message.ProtoMQTT)
	m := func() *message.Message {
		return &message.Message{Topic: "a", Payload: []byte(strings.Repeat("x", 10)), QoS: 1, Priority: 5}
	}
	if err := k.Accept(context.Background(), m()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // accept_timeout
	defer cancel()
	err = k.Accept(ctx, m())
	t.Logf("Accept on full spool: %v", err)
	if !errors.Is(err, message.ErrFull) {
		t.Fatalf("full spool not reported as ErrFull: %v", err)
	}
}
