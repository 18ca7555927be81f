package bridge

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/internal/testkit"
)

// TestFailoverAndFailback: upstream [primary, secondary] with the primary
// down: the bridge drains to the secondary; once the primary is back it
// returns to it within failback_after, and across both switches nothing
// is lost and each broker saw every topic in order. For MQTT 3.1.1 and 5.
func TestFailoverAndFailback(t *testing.T) {
	for _, proto := range []int{4, 5} {
		t.Run(fmt.Sprintf("protocol=%d", proto), func(t *testing.T) {
			const n = 6000
			primary := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{Persistence: true})
			secondary := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
			subP := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: primary.URL(), Filter: "fo/#", Envelope: true, ClientID: "sub-primary"})
			subS := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: secondary.URL(), Filter: "fo/#", Envelope: true})
			primary.Stop() // its persistent subscriber session survives
			q := newTestQueue(t, "spool")
			msgs, want := seqMessages("fo", n, 6)
			b, stop := startBridge(t, q, Options{Brokers: []string{primary.URL(), secondary.URL()}, Protocol: proto, Format: FormatEnvelope,
				// A generous connect timeout: on a loaded machine a CONNACK
				// of the primary that restores a persistent session can take
				// more than a second, and a connect that times out falls
				// over to the secondary again, which the test would read as
				// no failback. A refused connect (primary down) is immediate.
				FailbackAfter: 300 * time.Millisecond, ConnectTimeout: testkit.Timeout(10 * time.Second)})
			// Half the backlog while the primary is down, the other half
			// once the bridge is back on the primary.
			q.putAll(t, msgs[:n/2])
			testkit.Wait(t, "messages at the secondary", func() bool { return subS.Len() > n/4 })
			primary.Start()
			testkit.Wait(t, "the bridge back on the primary", func() bool { return strings.Contains(primary.Log(), "as ferry-gw1 ") })
			atSecondary := subS.Len()
			q.putAll(t, msgs[n/2:])
			testkit.Wait(t, "drained", func() bool { return q.left(t) == 0 })
			testkit.Wait(t, "the second half at the primary", func() bool { return subP.Len() >= n/2 })
			stop()
			all := append(subS.Records(), subP.Records()...)
			rep := bridgetest.Check(all, want, seqOf)
			if len(rep.Missing) > 0 || len(rep.IDMismatch) > 0 {
				t.Fatalf("across the switch: %v", rep)
			}
			for name, rs := range map[string][]bridgetest.Record{"secondary": subS.Records(), "primary": subP.Records()} {
				last := map[string]int{}
				for _, r := range rs {
					k, s, _ := seqOf(r)
					if p, ok := last[k]; ok && s < p {
						t.Fatalf("%s: %s #%d after #%d", name, k, s, p)
					}
					last[k] = s
				}
			}
			if subS.Len() > atSecondary+8*64 {
				t.Fatalf("the secondary got %d messages after the primary was back (%d before): no failback", subS.Len()-atSecondary, atSecondary)
			}
			t.Logf("secondary %d, primary %d (%d unique); reconnects %d", subS.Len(), subP.Len(), rep.Unique, b.Stats().Reconnects)
		})
	}
}
