package bridge

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/internal/testkit"
)

// createStream creates an R-replica file stream on subjects, retrying
// while a cluster has no meta leader yet.
func createStream(t testing.TB, url string, cfg jetstream.StreamConfig) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var last error
	testkit.WaitUntil(t, time.Minute, "stream created", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, last = js.CreateStream(ctx, cfg)
		if last != nil {
			time.Sleep(100 * time.Millisecond)
		}
		return last == nil
	})
}

// streamLeader names the server that leads stream.
func streamLeader(t *testing.T, url, stream string) string {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var leader string
	testkit.Wait(t, "stream leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return false
		}
		if ci := s.CachedInfo().Cluster; ci != nil {
			leader = ci.Leader
		}
		return leader != ""
	})
	return leader
}

// streamRecords reads the whole stream in sequence order: topic (from the
// subject, prefix taken off), payload, Nats-Msg-Id.
func streamRecords(t *testing.T, url, stream, prefix string) []bridgetest.Record {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(time.Minute))
	defer cancel()
	var s jetstream.Stream
	testkit.Wait(t, "stream reachable", func() bool {
		sctx, c := context.WithTimeout(ctx, 2*time.Second)
		defer c()
		s, err = js.Stream(sctx, stream)
		return err == nil
	})
	st := s.CachedInfo().State
	var out []bridgetest.Record
	deadline := time.Now().Add(testkit.Timeout(time.Minute))
	for seq := st.FirstSeq; seq <= st.LastSeq && st.Msgs > 0; seq++ {
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: hang guard after %d of %d messages", stream, len(out), st.Msgs)
		}
		gctx, c := context.WithTimeout(ctx, 5*time.Second)
		m, err := s.GetMsg(gctx, seq)
		c()
		if err != nil {
			// A cluster that just lost a node answers 503 "temporarily
			// unavailable" (or times out) until it has a leader again:
			// read the same sequence again, up to the hang guard. A
			// missing message is an answer, not a transient.
			if errors.Is(err, jetstream.ErrMsgNotFound) || time.Now().After(deadline) {
				t.Fatalf("stream %s: get seq %d: %v", stream, seq, err)
			}
			t.Logf("stream %s: get seq %d: %v (reading it again)", stream, seq, err)
			time.Sleep(100 * time.Millisecond)
			seq--
			continue
		}
		topic, err := TopicOf(strings.TrimPrefix(m.Subject, prefix+"."))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bridgetest.Record{Topic: topic, Payload: m.Data, ID: m.Header.Get(jetstream.MsgIDHeader)})
	}
	return out
}

// checkStream: every message once (JetStream's duplicate window dropped
// the resends), in order per topic, each with its id.
func checkStream(t *testing.T, recs []bridgetest.Record, want map[string]int) bridgetest.Report {
	t.Helper()
	rep := bridgetest.Check(recs, want, seqOf)
	if !rep.OK() || rep.Duplicates != 0 {
		t.Fatalf("stream: %v", rep)
	}
	ids := map[string]bool{}
	for _, r := range recs {
		if r.ID == "" || ids[r.ID] {
			t.Fatalf("stream: message id %q missing or twice", r.ID)
		}
		ids[r.ID] = true
	}
	return rep
}

// TestJetStreamBacklogCutsNoDuplicates: a backlog spooled while the link
// is down, drained into a JetStream stream with proxy cuts during the
// drain: nothing lost, order per topic, and no duplicate left in the
// stream although messages in flight at each cut were published again.
func TestJetStreamBacklogCutsNoDuplicates(t *testing.T) {
	const n = 20_000
	ns := bridgetest.StartNATS(t)
	createStream(t, ns.URL(), jetstream.StreamConfig{Name: "FERRY", Subjects: []string{"ferry.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute})
	q := newTestQueue(t, "spool")
	px := bridgetest.NewProxy(t, ns.Addr())
	px.Refuse()
	b, stop := startBridge(t, q, Options{Brokers: []string{"nats://" + px.Addr()}, JetStream: JetStreamOptions{SubjectPrefix: "ferry", Stream: "FERRY"},
		Format: FormatRaw, Window: 256, StallTimeout: 2 * time.Second, ConnectTimeout: 2 * time.Second})
	testkit.Wait(t, "backoff while the link is down", func() bool { return b.State() == StateBackoff })
	msgs, want := seqMessages("js", n, 8)
	q.putAll(t, msgs)
	px.Heal()
	cuts := 0
	testkit.WaitUntil(t, 2*time.Minute, "drained", func() bool {
		if s := b.Stats(); cuts < 5 && s.Acked > uint64((cuts+1)*n/7) {
			px.Cut()
			cuts++
		}
		time.Sleep(2 * time.Millisecond)
		return q.left(t) == 0
	})
	s := b.Stats()
	stop()
	rep := checkStream(t, streamRecords(t, ns.URL(), "FERRY", "ferry"), want)
	t.Logf("cuts=%d; stream: %v; bridge: published=%d acked=%d resent=%d reconnects=%d", cuts, rep, s.Published, s.Acked, s.Resent, s.Reconnects)
	if cuts < 5 || s.Reconnects < 5 || s.Published <= n {
		t.Fatalf("cuts %d reconnects %d published %d: the drain was not cut with messages in flight", cuts, s.Reconnects, s.Published)
	}
	if d := q.dead(t); len(d) != 0 {
		t.Fatalf("dead letters: %v", d)
	}
}

// TestJetStreamClusterNodeKilled: a 3-node JetStream cluster on loopback
// with an R3 stream; the node that leads the stream, which is also the one
// the bridge is connected to, is killed during the drain. Nothing is lost
// and no duplicate is left in the stream.
func TestJetStreamClusterNodeKilled(t *testing.T) {
	const n = 20_000
	nodes := bridgetest.StartNATSCluster(t, 3)
	createStream(t, nodes[0].URL(), jetstream.StreamConfig{Name: "FERRY", Subjects: []string{"c.>"}, Storage: jetstream.FileStorage,
		Replicas: 3, Duplicates: 2 * time.Minute})
	leader := streamLeader(t, nodes[0].URL(), "FERRY")
	var victim *bridgetest.NATS
	var servers []string
	for _, nd := range nodes {
		if nd.Name == leader {
			victim = nd
			servers = append([]string{nd.URL()}, servers...)
		} else {
			servers = append(servers, nd.URL())
		}
	}
	if victim == nil {
		t.Fatalf("leader %q is none of the nodes", leader)
	}
	q := newTestQueue(t, "spool")
	msgs, want := seqMessages("cl", n, 8)
	q.putAll(t, msgs)
	b, stop := startBridge(t, q, Options{Brokers: servers, JetStream: JetStreamOptions{SubjectPrefix: "c", Stream: "FERRY"},
		Format: FormatRaw, Window: 256, StallTimeout: 2 * time.Second, ConnectTimeout: 2 * time.Second})
	testkit.Wait(t, "a third drained", func() bool { return b.Stats().Acked > n/3 })
	victim.Kill()
	killedAt := b.Stats().Acked
	t.Logf("killed %s after %d acks", leader, killedAt)
	testkit.WaitUntil(t, 2*time.Minute, "drained after the kill", func() bool {
		time.Sleep(5 * time.Millisecond)
		return q.left(t) == 0
	})
	s := b.Stats()
	stop()
	var alive string
	for _, nd := range nodes {
		if nd != victim {
			alive = nd.URL()
		}
	}
	recs := streamRecords(t, alive, "FERRY", "c")
	rep := checkStream(t, recs, want)
	t.Logf("cluster: %d messages, 1 node killed (the stream leader %s, after %d acks); stream: %v (lost 0, duplicates %d); bridge: published=%d resent=%d reconnects=%d",
		n, leader, killedAt, rep, rep.Duplicates, s.Published, s.Resent, s.Reconnects)
	if s.Reconnects < 1 {
		t.Fatal("the bridge never reconnected: the kill missed the drain")
	}
	if d := q.dead(t); len(d) != 0 {
		t.Fatalf("dead letters: %v", d)
	}
}

func TestSubjectMapping(t *testing.T) {
	for _, tc := range []struct{ topic, subject string }{
		{"sites/gw1/temp", "sites.gw1.temp"},
		{"a.b/c d/e*f/>/%", "a%2Eb.c%20d.e%2Af.%3E.%25"},
		{"/lead//trail/", "%.lead.%.trail.%"},
		{"tab\there", "tab%09here"},
		{"ünï/cødé", "ünï.cødé"},
	} {
		if got := Subject("", tc.topic); got != tc.subject {
			t.Errorf("Subject(%q) = %q, want %q", tc.topic, got, tc.subject)
		}
		if back, err := TopicOf(tc.subject); err != nil || back != tc.topic {
			t.Errorf("TopicOf(%q) = %q, %v; want %q", tc.subject, back, err, tc.topic)
		}
	}
	if got := Subject("ferry", "a/b"); got != "ferry.a.b" {
		t.Errorf("prefix: %q", got)
	}
}

// FuzzSubject: every valid MQTT topic maps to a valid NATS subject (no
// empty token, no space, no wildcard token) and back.
func FuzzSubject(f *testing.F) {
	for _, s := range []string{"a/b", "/", "a.b", "*", ">", "a b", "%", "%2E", "//", "x/+/y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if topic == "" || strings.ContainsAny(topic, "+#\x00") {
			return
		}
		s := Subject("", topic)
		for _, tok := range strings.Split(s, ".") {
			if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
				t.Fatalf("Subject(%q) = %q: token %q not valid in NATS", topic, s, tok)
			}
		}
		back, err := TopicOf(s)
		if err != nil || back != topic {
			t.Fatalf("TopicOf(Subject(%q)) = %q, %v", topic, back, err)
		}
	})
}
