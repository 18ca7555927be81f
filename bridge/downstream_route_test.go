package bridge

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/message"
)

func TestDownstreamRouteMap(t *testing.T) {
	const bad = "!" // the remote filter matches, the mapping is no valid topic
	for _, tc := range []struct {
		remote, local, topic string
		want                 string // "" = no match
	}{
		{"cmd/pi-lab/#", "cmd/#", "cmd/pi-lab/pump1/valve", "cmd/pump1/valve"},
		{"cmd/pi-lab/#", "cmd/#", "cmd/pi-lab", "cmd"},
		{"cmd/pi-lab/#", "cmd/#", "cmd/other/pump1", ""},
		{"cmd/pi-lab/#", "", "cmd/pi-lab/pump1", "cmd/pi-lab/pump1"},
		{"c/+/set/#", "dev/+/#", "c/a/set/x/y", "dev/a/x/y"},
		{"c/+/set/#", "dev/+/#", "c/a/set", "dev/a"},
		{"c/+/+", "d/+/x/+", "c/1/2", "d/1/x/2"},
		{"c/+", "d/+", "c//", ""},
		{"c/+", "d/+", "c/", "d/"},
		{"cloud/reboot", "local/reboot", "cloud/reboot", "local/reboot"},
		{"cmd/x/#", "#", "cmd/x/a/b", "a/b"},
		{"cmd/x/#", "#", "cmd/x", bad},
		{"c/+", "+", "c/", bad},                                                           // the empty level as the whole topic (fuzz)
		{"c/+", "+/x", "c/$SYS", bad},                                                     // a caught level puts $ first
		{"c/#", strings.Repeat("l", 60000) + "/#", "c/" + strings.Repeat("t", 6000), bad}, // too long
	} {
		r, err := compileRoute(DownstreamRoute{Remote: tc.remote, Local: tc.local})
		if err != nil {
			t.Fatalf("%.40s → %.40s: %v", tc.remote, tc.local, err)
		}
		got, ok, err := r.mapTopic(tc.topic)
		switch {
		case !ok:
			got = ""
		case err != nil:
			if !errors.Is(err, message.ErrInvalidTopic) || !strings.Contains(err.Error(), tc.remote) {
				t.Errorf("%.40s → %.40s: %.40q: error %.200v does not name the route and an invalid topic", tc.remote, tc.local, tc.topic, err)
			}
			got = bad
		}
		if got != tc.want {
			t.Errorf("%.40s → %.40s: %.40q mapped to %.40q, want %q", tc.remote, tc.local, tc.topic, got, tc.want)
		}
	}
}

func TestDownstreamRouteCheck(t *testing.T) {
	for _, tc := range []struct {
		r     DownstreamRoute
		field string // "" = valid
		want  string
	}{
		{DownstreamRoute{Remote: "cmd/gw/#", Local: "cmd/#"}, "", ""},
		{DownstreamRoute{Remote: "cmd/gw/#"}, "", ""},
		{DownstreamRoute{}, "remote", "required"},
		{DownstreamRoute{Remote: "a/#/b"}, "remote", "#"},
		{DownstreamRoute{Remote: "cmd/{site}/#"}, "remote", "placeholder"},
		{DownstreamRoute{Remote: "cmd/gw/#", Local: "cmd/+"}, "local", "wildcards"},
		{DownstreamRoute{Remote: "cmd/gw/+/#", Local: "cmd/#/+"}, "local", "#"},
		{DownstreamRoute{Remote: "cmd/gw/+/#", Local: "cmd/#"}, "local", "wildcards"},
		{DownstreamRoute{Remote: "cmd/gw/#", Local: "$SYS/#"}, "local", "$"},
		{DownstreamRoute{Remote: "cmd/gw/#", Local: "cmd/{x}/#"}, "local", "placeholder"},
		{DownstreamRoute{Remote: "cmd/gw/#", TTL: -time.Second}, "ttl", "negative"},
	} {
		field, err := CheckDownstreamRoute(tc.r)
		if tc.field == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.r, err)
			}
			continue
		}
		if err == nil || field != tc.field || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: field %q err %v, want %s: …%s…", tc.r, field, err, tc.field, tc.want)
		}
	}
}

// FuzzDownstreamRoute: any route that passes the check maps any topic
// its remote filter matches to a valid topic that its local pattern
// matches, without panicking.
func FuzzDownstreamRoute(f *testing.F) {
	f.Add("cmd/gw/#", "cmd/#", "cmd/gw/pump1/valve")
	f.Add("c/+/set/#", "dev/+/#", "c/a/set")
	f.Add("c/+", "d/+", "c/")
	f.Add("#", "x/#", "")
	f.Fuzz(func(t *testing.T, remote, local, topic string) {
		r := DownstreamRoute{Remote: remote, Local: local}
		if _, err := CheckDownstreamRoute(r); err != nil {
			return
		}
		c, err := compileRoute(r)
		if err != nil {
			t.Fatalf("checked route does not compile: %v", err)
		}
		if message.ValidateTopic(topic) != nil {
			return
		}
		got, ok, err := c.mapTopic(topic)
		if ok != message.Match(remote, topic) {
			t.Fatalf("%q: matched %v, but Match(%q) says otherwise", topic, ok, remote)
		}
		if !ok {
			return
		}
		if err != nil {
			if !errors.Is(err, message.ErrInvalidTopic) {
				t.Fatalf("%s → %s: %q: %v is not ErrInvalidTopic", remote, local, topic, err)
			}
			return
		}
		if err := message.ValidateTopic(got); err != nil {
			t.Fatalf("%s → %s: %q mapped to invalid %q: %v", remote, local, topic, got, err)
		}
		pattern := local
		if pattern == "" {
			pattern = remote
		}
		if !message.Match(pattern, got) {
			t.Fatalf("%s → %s: %q mapped to %q, which %q does not match", remote, local, topic, got, pattern)
		}
	})
}

// TestDownstreamMapsAndPersists: the downstream connection asks for a
// persistent session, commands reach the sink under their local topic with
// the route's TTL and a dedupe key that only a redelivery (DUP) checks, and
// a command no route matches is acknowledged and counted, not stuck.
func TestDownstreamMapsAndPersists(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &recsink.Sink{}
		u := newFakeUpstream(true)
		b := newTestBridge(t, newFakeQueue(), u, Options{GatewayID: "gw1", Partitions: 2, DownstreamSink: sink, Downstream: []DownstreamRoute{
			{Remote: "cmd/{gateway_id}/#", Local: "cmd/#", TTL: time.Hour},
			{Remote: "all/#"},
		}})
		runBridge(t, b)
		var c *fakeConn
		for range 2 {
			if cc := <-u.newConn; cc.cfg.Partition == 0 {
				c = cc
			} else if cc.cfg.PersistentSession || len(cc.cfg.Subscriptions) > 0 {
				t.Fatalf("partition %d: persistent %v subscriptions %v", cc.cfg.Partition, cc.cfg.PersistentSession, cc.cfg.Subscriptions)
			}
		}
		if !c.cfg.PersistentSession || strings.Join(c.cfg.Subscriptions, ",") != "cmd/gw1/#,all/#" || c.cfg.ClientID != "ferry-gw1-p0" {
			t.Fatalf("partition 0: persistent %v subscriptions %v client id %s", c.cfg.PersistentSession, c.cfg.Subscriptions, c.cfg.ClientID)
		}
		acked := make(chan string, 4)
		in := func(topic, payload string, pid uint16, dup bool) Incoming {
			return Incoming{Topic: topic, Payload: []byte(payload), QoS: 1, PacketID: pid, Dup: dup, Ack: func() { acked <- topic }}
		}
		c.cfg.OnMessage(in("cmd/gw1/pump1/valve", "open", 7, false))
		c.cfg.OnMessage(in("old/sub", "x", 8, false))
		c.cfg.OnMessage(in("cmd/gw1/pump1/valve", "open", 7, true))
		c.cfg.OnMessage(in("all/x", "y", 9, false))
		synctest.Wait()
		for _, want := range []string{"cmd/gw1/pump1/valve", "old/sub", "cmd/gw1/pump1/valve", "all/x"} {
			if a := <-acked; a != want {
				t.Fatalf("acked %s, want %s", a, want)
			}
		}
		if s := b.Stats(); s.DownstreamUnrouted != 1 || s.DownstreamAccepted != 3 {
			t.Fatalf("unrouted %d accepted %d", s.DownstreamUnrouted, s.DownstreamAccepted)
		}
		got := sink.Messages()
		if len(got) != 3 || got[0].Topic != "cmd/pump1/valve" || got[2].Topic != "all/x" {
			t.Fatalf("sink got %v", got)
		}
		first, redelivery := got[0], got[1]
		if first.DedupeKey == "" || first.DedupeKey != redelivery.DedupeKey || !first.DedupeRecordOnly || redelivery.DedupeRecordOnly {
			t.Fatalf("dedupe keys %q (record only %v), %q (record only %v)", first.DedupeKey, first.DedupeRecordOnly, redelivery.DedupeKey, redelivery.DedupeRecordOnly)
		}
		if first.ExpiresAt.Sub(first.AcceptedAt) != time.Hour || !got[2].ExpiresAt.IsZero() {
			t.Fatalf("expiry %v after accept; no-ttl route expiry %v", first.ExpiresAt.Sub(first.AcceptedAt), got[2].ExpiresAt)
		}
		if first.QoS != 1 || first.Source.Protocol != message.ProtoUpstream {
			t.Fatalf("qos %d source %v", first.QoS, first.Source)
		}
	})
}

// TestDownstreamPermanentRefusalDoesNotBlock: a command the sink can never
// take (too large for the lane) is acknowledged upstream, dropped and
// counted, and the commands after it still arrive; a transient refusal
// (full) is retried and not acknowledged until it is taken.
func TestDownstreamPermanentRefusalDoesNotBlock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var wasFull atomic.Bool
		sink := &recsink.Sink{Err: func(m *message.Message) error {
			switch string(m.Payload) {
			case "huge":
				return fmt.Errorf("%w: lane cap", message.ErrTooLarge)
			case "later":
				if wasFull.CompareAndSwap(false, true) {
					return message.ErrFull
				}
			}
			return nil
		}}
		u := newFakeUpstream(true)
		b := newTestBridge(t, newFakeQueue(), u, Options{GatewayID: "gw1", DownstreamSink: sink, Downstream: []DownstreamRoute{{Remote: "cmd/#"}}})
		runBridge(t, b)
		c := <-u.newConn
		acked := make(chan string, 4)
		in := func(payload string, pid uint16) Incoming {
			return Incoming{Topic: "cmd/x", Payload: []byte(payload), QoS: 1, PacketID: pid, Ack: func() { acked <- payload }}
		}
		c.cfg.OnMessage(in("first", 1))
		c.cfg.OnMessage(in("huge", 2))
		c.cfg.OnMessage(in("later", 3))
		for _, want := range []string{"first", "huge", "later"} {
			if a := <-acked; a != want {
				t.Fatalf("acked %s, want %s", a, want)
			}
		}
		if got := sink.Payloads(); strings.Join(got, ",") != "first,later" {
			t.Fatalf("sink took %v, want first and later (huge refused for good, later after one full)", got)
		}
		if s := b.Stats(); s.DownstreamRefused != 1 || s.DownstreamAccepted != 2 || s.DownstreamRejected != 1 {
			t.Fatalf("refused %d accepted %d rejected %d, want 1 2 1", s.DownstreamRefused, s.DownstreamAccepted, s.DownstreamRejected)
		}
	})
}
