package mqtt

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/spool"
)

// BenchmarkIngestRetained is the cost of retained state on the ingest
// path: 8 pipelining QoS 1 publishers (64 in flight each) into a server
// over a real spool with its local state on, publishing plain messages or
// retained ones over 1000 topics per client (every message replaces a
// retained message: its state is written in the message's own commit,
// and again, stamped, after the fan-out).
func BenchmarkIngestRetained(b *testing.B) {
	for _, retained := range []bool{false, true} {
		b.Run(fmt.Sprintf("retained=%v", retained), func(b *testing.B) {
			g := openStateGateway(b, filepath.Join(b.TempDir(), "spool.db"), StoreOptions{}, nil)
			payload := []byte(strings.Repeat("x", 256))
			const n, window = 8, 64
			jobs := make(chan struct{}, n*window)
			errs := make(chan error, n)
			stop := make(chan struct{})
			defer close(stop)
			var wg sync.WaitGroup
			for i := range n {
				c, err := dialPipe(g.s.Addr("tcp"), fmt.Sprintf("pipe-%d", i), false, 1, window)
				if err != nil {
					b.Fatal(err)
				}
				c.retain = retained
				defer c.close()
				var acked atomic.Int64
				ackc := make(chan struct{}, 1)
				go func() {
					err := c.readAcks(func(pipeMsg) { acked.Add(1); signalRoom(ackc) })
					select {
					case <-stop:
					default:
						errs <- err
					}
				}()
				wg.Go(func() {
					sent := int64(0)
					for range jobs {
						if !c.publish(fmt.Sprintf("bench/%d/%d", i, sent%1000), payload, false, stop) {
							return
						}
						sent++
					}
					for acked.Load() < sent {
						select {
						case <-ackc:
						case <-stop:
							return
						}
					}
				})
			}
			before := g.sp.Stats()
			start := time.Now()
			for b.Loop() {
				jobs <- struct{}{}
			}
			close(jobs)
			wg.Wait()
			elapsed := time.Since(start)
			select {
			case err := <-errs:
				b.Fatal(err)
			default:
			}
			after := g.sp.Stats()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			if c := after.Commits - before.Commits; c > 0 {
				b.ReportMetric(float64(after.CommitOps-before.CommitOps)/float64(c), "ops/commit")
				b.ReportMetric(float64(after.Syncs-before.Syncs)/float64(b.N), "fsyncs/msg")
			}
			b.ReportMetric(float64(g.sp.StateStats()[spool.StateRetained].Records), "retained")
		})
	}
}
