package gateway

import (
	"context"

	"github.com/ferrymq/ferry/protocols/mqtt"
	"github.com/ferrymq/ferry/spool"
)

// spoolState is the MQTT server's mqtt.State in the spool: the same kinds,
// the same file, the spool's writer and group commit.
type spoolState struct{ sp *spool.Spool }

func (s spoolState) Write(ctx context.Context, ws ...mqtt.StateWrite) func() error {
	ops := make([]spool.StateOp, len(ws))
	for i, w := range ws {
		ops[i] = spool.StateOp{Kind: spool.StateKind(w.Kind), Key: w.Key, Value: w.Value, Prefix: w.Prefix, Stamp: w.Stamp, BestEffort: w.BestEffort}
	}
	return s.sp.ApplyStateAsync(ctx, ops...)
}

func (s spoolState) Iterate(kind mqtt.StateKind, prefix []byte, fn func(key, value []byte) error) error {
	return s.sp.IterateState(spool.StateKind(kind), prefix, fn)
}
