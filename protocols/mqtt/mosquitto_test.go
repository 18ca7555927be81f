package mqtt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit/recsink"
	"github.com/ferrymq/ferry/protocols/ingest"
	"github.com/ferrymq/ferry/protocols/message"
)

// requireTool skips (or fails with CI=true) when a real client is missing.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test with " + name + " (skipped with -short)")
	}
	p, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s not found: install it with `apt-get install %s`", name, pkg)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

type toolResult struct {
	out  string // stdout and stderr
	code int    // exit code, -1 when killed by the timeout
}

// runTool runs a command for at most d, a hang guard (a killed tool reports
// code -1).
func runTool(t *testing.T, d time.Duration, name string, args ...string) toolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	r := toolResult{out: out.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.code = -1
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// pubArgs are the common mosquitto_pub/sub arguments for MQTT version v
// ("311" or "5").
func pubArgs(t *testing.T, s *Server, v, id string, extra ...string) []string {
	h, p := hostPort(t, s.Addr("tcp"))
	ver := map[string]string{"311": "mqttv311", "5": "mqttv5"}[v]
	return append([]string{"-h", h, "-p", p, "-V", ver, "-i", id}, extra...)
}

func TestMosquittoPublish(t *testing.T) {
	pub := requireTool(t, "mosquitto_pub", "mosquitto-clients")
	s, sink := startServer(t, testOptions{})
	n := 0
	for _, v := range []string{"311", "5"} {
		for qos := 0; qos <= 2; qos++ {
			topic := fmt.Sprintf("mosq/v%s/q%d", v, qos)
			args := pubArgs(t, s, v, "mp", "-q", fmt.Sprint(qos), "-t", topic, "-m", topic, "-r")
			if v == "5" {
				args = append(args, "-D", "publish", "user-property", "msg-id", "id-"+topic)
			}
			if r := runTool(t, guard(), pub, args...); r.code != 0 {
				t.Fatalf("mosquitto_pub -V %s -q %d: exit %d: %s", v, qos, r.code, r.out)
			}
			n++
			m := sink.WaitMessages(t, n)[n-1]
			if m.Topic != topic || string(m.Payload) != topic || int(m.QoS) != qos || !m.Retain {
				t.Errorf("-V %s -q %d: got topic %q payload %q qos %d retain %v", v, qos, m.Topic, m.Payload, m.QoS, m.Retain)
			}
			if h, _ := m.Header("msg-id"); v == "5" && h != "id-"+topic {
				t.Errorf("-V 5: user property msg-id = %q", h)
			}
		}
	}
}

func TestMosquittoSubscribe(t *testing.T) {
	pub := requireTool(t, "mosquitto_pub", "mosquitto-clients")
	sub := requireTool(t, "mosquitto_sub", "mosquitto-clients")
	for _, v := range []string{"311", "5"} {
		t.Run("v"+v, func(t *testing.T) {
			s, sink := startServer(t, testOptions{})
			done := make(chan toolResult, 1)
			go func() {
				// -W is mosquitto_sub's own give-up time: the guard, like
				// every wait here (the kill guard a little beyond it).
				wait := strconv.Itoa(int(guard().Seconds()))
				done <- runTool(t, guard()+10*time.Second, sub, pubArgs(t, s, v, "ms", "-t", "room/#", "-q", "1", "-C", "2", "-v", "-W", wait)...)
			}()
			waitFor(t, "mosquitto_sub subscribed", func() bool { return atomic.LoadInt64(&s.ms.Info.Subscriptions) > 0 })
			// One message from another MQTT client (spooled), one injected (not).
			if r := runTool(t, guard(), pub, pubArgs(t, s, v, "mp", "-q", "1", "-t", "room/a", "-m", "from-mqtt")...); r.code != 0 {
				t.Fatalf("mosquitto_pub: %d %s", r.code, r.out)
			}
			s.PublishLocal(&message.Message{Topic: "room/b", Payload: []byte("from-stomp"), QoS: 1})
			r := <-done
			if r.code != 0 || !strings.Contains(r.out, "room/a from-mqtt") || !strings.Contains(r.out, "room/b from-stomp") {
				t.Fatalf("mosquitto_sub: exit %d output %q", r.code, r.out)
			}
			if msgs := sink.Messages(); len(msgs) != 1 || msgs[0].Topic != "room/a" {
				t.Errorf("sink: %d messages", len(msgs))
			}
		})
	}
}

func TestMosquittoV5SpoolFull(t *testing.T) {
	pub := requireTool(t, "mosquitto_pub", "mosquitto-clients")
	sink := &recsink.Sink{}
	sink.SetErr(func(*message.Message) error { return message.ErrFull })
	s, _ := startServer(t, testOptions{Sink: sink})
	r := runTool(t, guard(), pub, pubArgs(t, s, "5", "mp", "-q", "1", "-t", "full/x", "-m", "m")...)
	if !strings.Contains(r.out, "Quota exceeded") || !strings.Contains(r.out, "spool full") {
		t.Fatalf("mosquitto_pub -V 5: exit %d, output %q; want the 0x97 reason", r.code, r.out)
	}
	if len(sink.Messages()) != 0 {
		t.Error("message stored")
	}
}

// A 3.1.1 device whose message is refused is disconnected without an ack:
// mosquitto_pub reports the lost connection (a device keeps the message) and
// a later attempt, once the spool has room, is stored.
func TestMosquittoV311RefusalDisconnects(t *testing.T) {
	pub := requireTool(t, "mosquitto_pub", "mosquitto-clients")
	sink := &recsink.Sink{}
	sink.SetErr(func(*message.Message) error { return message.ErrFull })
	s, _ := startServer(t, testOptions{Sink: sink})
	r := runTool(t, guard(), pub, pubArgs(t, s, "311", "mp", "-q", "1", "-t", "retry/x", "-m", "keep-me")...)
	if r.code == 0 || !strings.Contains(r.out, "connection was lost") {
		t.Fatalf("mosquitto_pub -V 311 into a full spool: exit %d, output %q", r.code, r.out)
	}
	if len(sink.Messages()) != 0 {
		t.Fatal("refused message stored")
	}
	sink.SetErr(nil)
	if r := runTool(t, guard(), pub, pubArgs(t, s, "311", "mp", "-q", "1", "-t", "retry/x", "-m", "keep-me")...); r.code != 0 {
		t.Fatalf("retry: exit %d, output %q", r.code, r.out)
	}
	if msgs := sink.Messages(); len(msgs) != 1 || string(msgs[0].Payload) != "keep-me" {
		t.Fatalf("sink: %v", msgs)
	}
	if st := s.Stats(); st.Rejected[ingest.ReasonFull] != 1 {
		t.Errorf("rejected %v", st.Rejected)
	}
}

func TestMosquittoAuthAndACL(t *testing.T) {
	pub := requireTool(t, "mosquitto_pub", "mosquitto-clients")
	auth := &testAuth{users: map[string]string{"alice": "secret"}, denyPub: []string{"secret/"}}
	s, sink := startServer(t, testOptions{Options: Options{Auth: auth}})
	for _, v := range []string{"311", "5"} {
		r := runTool(t, guard(), pub, pubArgs(t, s, v, "mp", "-u", "alice", "-P", "wrong", "-t", "x", "-m", "m")...)
		if r.code == 0 || !strings.Contains(strings.ToLower(r.out), "bad user name or password") && !strings.Contains(strings.ToLower(r.out), "bad username or password") {
			t.Errorf("-V %s wrong password: exit %d output %q", v, r.code, r.out)
		}
	}
	r := runTool(t, guard(), pub, pubArgs(t, s, "5", "mp", "-u", "alice", "-P", "secret", "-q", "1", "-t", "secret/x", "-m", "m")...)
	if !strings.Contains(r.out, "Not authorized") {
		t.Errorf("-V 5 denied publish: exit %d output %q", r.code, r.out)
	}
	if len(sink.Messages()) != 0 {
		t.Error("denied message stored")
	}
}

func TestMosquittoOversizeAndInvalidTopic(t *testing.T) {
	pub := requireTool(t, "mosquitto_pub", "mosquitto-clients")
	s, sink := startServer(t, testOptions{Options: Options{MaxPacketSize: 1024, MaxTopicLevels: 4}})
	big := strings.Repeat("x", 2000)
	// MQTT 5: mosquitto_pub learns the limit from CONNACK's Maximum Packet
	// Size and never puts the message on the wire (mosquitto_pub 2.0.11 then
	// exits 0 all the same).
	r := runTool(t, guard(), pub, pubArgs(t, s, "5", "mp", "-d", "-q", "1", "-t", "big", "-m", big)...)
	if strings.Contains(r.out, "sending PUBLISH") {
		t.Errorf("-V 5 oversize: the client sent it although CONNACK announced the limit: %q", r.out)
	}
	// MQTT 3.1.1: the server closes the connection.
	r = runTool(t, guard(), pub, pubArgs(t, s, "311", "mp", "-q", "1", "-t", "big", "-m", big)...)
	if r.code == 0 || !strings.Contains(r.out, "connection was lost") {
		t.Errorf("-V 311 oversize: exit %d, output %q", r.code, r.out)
	}
	waitFor(t, "oversize counted", func() bool { return s.Stats().Rejected[ingest.ReasonTooLarge] == 1 })
	r = runTool(t, guard(), pub, pubArgs(t, s, "5", "mp", "-d", "-q", "1", "-t", "a/b/c/d/e", "-m", "m")...)
	if r.code == 0 || !strings.Contains(r.out, "Received DISCONNECT (144)") { // 0x90 topic name invalid
		t.Errorf("-V 5 too many levels: exit %d output %q", r.code, r.out)
	}
	if n := sink.Calls(); n != 0 {
		t.Errorf("sink called %d times", n)
	}
}
