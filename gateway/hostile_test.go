package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	gostomp "github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/stomp"
)

// plainListeners are MQTT and STOMP on free loopback ports.
const plainListeners = `
listeners:
  mqtt: {address: "127.0.0.1:0"}
  stomp: {address: "127.0.0.1:0"}
  http: {address: ""}`

// usersGateway runs a gateway with users (password "secret"), bridging to
// the embedded upstream. extra is appended to the configuration (more
// keys at the top level, plainListeners when it has no listeners).
func usersGateway(t *testing.T, users, extra string) *running {
	t.Helper()
	if !strings.Contains(extra, "listeners:") {
		extra += plainListeners
	}
	y := fmt.Sprintf(`
gateway_id: gw1
users:
%s
spool: {path: %s}
bridge: {upstream: embedded, embedded_address: "127.0.0.1:0"}
%s`, strings.ReplaceAll(users, "HASH", hashSecret), filepath.Join(t.TempDir(), "spool.db"), extra)
	cfg, err := config.Parse("ferry.yaml", []byte(y), nil)
	if err != nil {
		t.Fatal(err)
	}
	return startGateway(t, cfg)
}

// mqttLogin connects a paho (3.1.1) client as user with client id id.
// clean false keeps the session; onMessage receives every message (also
// those of a session inherited before any Subscribe).
func mqttLogin(addr, id, user string, clean bool, onMessage paho.MessageHandler) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(user).SetPassword("secret").
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).
		SetConnectTimeout(testkit.Timeout(testkit.DefaultWait)).SetDefaultPublishHandler(onMessage)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(testkit.Timeout(testkit.DefaultWait)) {
		return nil, errors.New("hang guard: CONNECT not answered")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	return c, nil
}

// inbox collects messages from a paho handler.
type inbox struct {
	mu   sync.Mutex
	msgs []string // topic=payload
}

func (b *inbox) handler(_ paho.Client, m paho.Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m.Topic()+"="+string(m.Payload()))
	b.mu.Unlock()
}

func (b *inbox) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.msgs...)
}

// TestSessionTakeoverAcrossUsers (issue 11 item 3): user-b connecting
// with user-a's client id and clean session false neither inherits
// user-a's session (its queued messages on a topic user-b may not read)
// nor kicks user-a off; user-a gets its messages.
func TestSessionTakeoverAcrossUsers(t *testing.T) {
	r := usersGateway(t, `
  - {name: user-a, password_hash: 'HASH', subscribe: ['a/#']}
  - {name: user-b, password_hash: 'HASH', subscribe: ['b/#']}
  - {name: ops, password_hash: 'HASH', publish: ['#']}`, "")
	addr := r.g.MQTTAddr("mqtt")

	var aBox inbox
	a, err := mqttLogin(addr, "dev-a", "user-a", false, aBox.handler)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, a.Subscribe("a/inbox", 1, nil)); err != nil {
		t.Fatal(err)
	}
	a.Disconnect(100) // the session stays, with its subscription

	ops, err := mqttLogin(addr, "ops-1", "ops", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ops.Disconnect(100)
	for i := range 3 {
		publish(t, ops, "a/inbox", fmt.Sprintf("secret-%d", i))
	}
	// The fan-out follows the commit: wait until they are queued for the
	// offline session.
	testkit.Wait(t, "the messages queued for user-a", func() bool { return r.g.mq.Stats().Injected >= 3 })

	// user-b takes the id while user-a is offline.
	var bBox inbox
	b, err := mqttLogin(addr, "dev-a", "user-b", false, bBox.handler)
	if err == nil {
		time.Sleep(200 * time.Millisecond) // let a wrongly inherited session deliver
		b.Disconnect(100)
		t.Fatalf("user-b logged in with user-a's client id; it received %q", bBox.got())
	}
	if !strings.Contains(err.Error(), "identifier rejected") {
		t.Errorf("user-b refused with %v, want identifier rejected", err)
	}

	// user-a's session is intact: it gets all three messages.
	a, err = mqttLogin(addr, "dev-a", "user-a", false, aBox.handler)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Disconnect(100)
	testkit.Wait(t, "user-a's three queued messages", func() bool { return len(aBox.got()) == 3 })

	// Connected: user-b's attempt does not kick user-a off.
	if b, err := mqttLogin(addr, "dev-a", "user-b", true, nil); err == nil {
		b.Disconnect(100)
		t.Fatal("user-b took over user-a's connected client id")
	}
	if !a.IsConnectionOpen() {
		t.Fatal("user-a was disconnected by user-b's attempt")
	}
	if err := waitToken(t, a.Subscribe("a/more", 1, nil)); err != nil {
		t.Fatalf("user-a's connection after user-b's attempt: %v", err)
	}
	// The same user may take its own session over.
	a2, err := mqttLogin(addr, "dev-a", "user-a", false, aBox.handler)
	if err != nil {
		t.Fatalf("user-a taking its own session over: %v", err)
	}
	a2.Disconnect(100)
}

// TestTopicAliasWithACL (issue 11 item 5): an MQTT 5 client (paho.golang)
// of a user with an ACL publishes with a topic alias: the ACL is checked
// on the topic the alias stands for, so allowed messages are acknowledged
// (and delivered under their real topic) and forbidden ones are refused.
func TestTopicAliasWithACL(t *testing.T) {
	r := usersGateway(t, `
  - {name: dev, password_hash: 'HASH', publish: ['sensors/%c/#']}
  - {name: reader, password_hash: 'HASH', subscribe: ['#']}`, "")
	addr := r.g.MQTTAddr("mqtt")

	var box inbox
	reader, err := mqttLogin(addr, "reader-1", "reader", true, box.handler)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Disconnect(100)
	if err := waitToken(t, reader.Subscribe("sensors/#", 1, nil)); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), testkit.Timeout(testkit.DefaultWait))
	defer cancel()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := pahov5.NewClient(pahov5.ClientConfig{Conn: nc})
	ca, err := c.Connect(ctx, &pahov5.Connect{ClientID: "pump1", CleanStart: true, KeepAlive: 3600,
		Username: "dev", UsernameFlag: true, Password: []byte("secret"), PasswordFlag: true})
	if err != nil {
		t.Fatalf("connect: %v (%+v)", err, ca)
	}
	defer func() {
		_ = c.Disconnect(&pahov5.Disconnect{})
		<-c.Done()
	}()
	if ca.Properties == nil || ca.Properties.TopicAliasMaximum == nil || *ca.Properties.TopicAliasMaximum == 0 {
		t.Fatal("server offers no topic aliases")
	}
	pub := func(topic string, alias uint16, payload string) byte {
		t.Helper()
		p := &pahov5.Publish{Topic: topic, QoS: 1, Payload: []byte(payload), Properties: &pahov5.PublishProperties{TopicAlias: &alias}}
		pr, err := c.Publish(ctx, p)
		if err != nil && pr == nil {
			t.Fatalf("publish %q alias %d: %v", topic, alias, err)
		}
		return pr.ReasonCode
	}
	if rc := pub("sensors/pump1/temp", 1, "21.5"); rc != 0 {
		t.Fatalf("topic with alias 1: PUBACK %#x", rc)
	}
	for i, p := range []string{"21.6", "21.7"} {
		if rc := pub("", 1, p); rc != 0 {
			t.Fatalf("alias 1 alone (#%d): PUBACK %#x, want 0", i, rc)
		}
	}
	if rc := pub("sensors/pump2/temp", 2, "x"); rc != 0x87 {
		t.Fatalf("forbidden topic with alias 2: PUBACK %#x, want 0x87", rc)
	}
	if rc := pub("", 2, "y"); rc != 0x87 {
		t.Fatalf("alias 2 alone, forbidden topic: PUBACK %#x, want 0x87", rc)
	}
	want := []string{"sensors/pump1/temp=21.5", "sensors/pump1/temp=21.6", "sensors/pump1/temp=21.7"}
	testkit.Wait(t, "three messages at the local subscriber", func() bool { return len(box.got()) >= 3 })
	if got := box.got(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}

// aclUsers are the users of the ACL table.
const aclUsers = `
  - {name: dev, password_hash: 'HASH', publish: ['sensors/%c/#', 'users/%u/+/state'], subscribe: ['cmd/%c/#', 'fleet/+/state']}
  - {name: reader, password_hash: 'HASH', subscribe: ['#']}`

// aclCase is one row of the ACL table: user (as client id) publishes to
// or subscribes to an MQTT topic or filter.
type aclCase struct {
	user, client string
	sub          bool
	topic        string
	want         bool
}

var aclTable = []aclCase{
	{"dev", "pump1", false, "sensors/pump1/temp", true},
	{"dev", "pump1", false, "sensors/pump1", true},
	{"dev", "pump1", false, "sensors/pump2/temp", false},
	{"dev", "pump1", false, "users/dev/x/state", true},
	{"dev", "pump1", false, "users/reader/x/state", false},
	{"dev", "pump1", false, "other", false},
	{"dev", "pump1", true, "cmd/pump1/#", true},
	{"dev", "pump1", true, "cmd/pump1/reboot", true},
	{"dev", "pump1", true, "cmd/pump2/reboot", false},
	{"dev", "pump1", true, "cmd/+/reboot", false},
	{"dev", "pump1", true, "fleet/+/state", true},
	{"dev", "pump1", true, "fleet/#", false},
	{"reader", "r1", false, "sensors/r1/temp", false},
	{"reader", "r1", true, "sensors/+/temp", true},
}

// TestACLTableBothProtocols (issue 11 item 6): the same rules give the
// same answers through the real MQTT and STOMP listeners, %c included:
// the MQTT client id and the STOMP client-id header.
func TestACLTableBothProtocols(t *testing.T) {
	r := usersGateway(t, aclUsers, "")
	mqttAddr, stompAddr := r.g.MQTTAddr("mqtt"), r.g.STOMPAddr(0)
	for _, tc := range aclTable {
		what := "publish"
		if tc.sub {
			what = "subscribe"
		}
		name := fmt.Sprintf("%s-as-%s-%s-%s", tc.user, tc.client, what, tc.topic)
		t.Run("mqtt/"+name, func(t *testing.T) {
			if got := mqttAllowed(t, mqttAddr, tc); got != tc.want {
				t.Errorf("MQTT %s %s %s as %s: allowed %v, want %v", tc.user, what, tc.topic, tc.client, got, tc.want)
			}
		})
		t.Run("stomp/"+name, func(t *testing.T) {
			if got := stompAllowed(t, stompAddr, tc, true); got != tc.want {
				t.Errorf("STOMP %s %s %s as %s: allowed %v, want %v", tc.user, what, tc.topic, tc.client, got, tc.want)
			}
		})
	}
	// Without client-id a STOMP client's %c is its session id, which no
	// configured name matches.
	if stompAllowed(t, stompAddr, aclCase{"dev", "pump1", false, "sensors/pump1/temp", false}, false) {
		t.Errorf("a STOMP client without client-id was allowed by a %%c filter")
	}
}

func mqttAllowed(t *testing.T, addr string, tc aclCase) bool {
	t.Helper()
	c, err := mqttLogin(addr, tc.client, tc.user, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(50)
	if tc.sub {
		tok := c.Subscribe(tc.topic, 1, nil)
		if err := waitToken(t, tok); err != nil {
			t.Fatal(err)
		}
		return tok.(*paho.SubscribeToken).Result()[tc.topic] < 0x80
	}
	// MQTT 3.1.1 has no negative PUBACK: a refused publish closes the
	// connection, which fails the token.
	return waitToken(t, c.Publish(tc.topic, 1, false, "x")) == nil
}

func stompAllowed(t *testing.T, addr string, tc aclCase, clientID bool) bool {
	t.Helper()
	if tc.sub {
		return stompSubscribeAllowed(t, addr, tc)
	}
	d := testkit.Timeout(testkit.DefaultWait)
	opts := []func(*gostomp.Conn) error{gostomp.ConnOpt.Login(tc.user, "secret"), gostomp.ConnOpt.MsgSendTimeout(d),
		gostomp.ConnOpt.RcvReceiptTimeout(d), gostomp.ConnOpt.DisconnectReceiptTimeout(d)}
	if clientID {
		opts = append(opts, gostomp.ConnOpt.Header("client-id", tc.client))
	}
	c, err := gostomp.Dial("tcp", addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	dest := "/topic/" + strings.ReplaceAll(strings.ReplaceAll(tc.topic, "/", "."), "+", "*")
	err = c.Send(dest, "text/plain", []byte("x"), gostomp.SendOpt.Receipt)
	closeStomp(c, err)
	return err == nil
}

// stompSubscribeAllowed subscribes over a raw socket with a receipt: the
// RECEIPT or the ERROR that answers it is the verdict. (go-stomp does not
// wait for a SUBSCRIBE's answer, and its DISCONNECT after an ERROR waits
// for a receipt that never comes.)
func stompSubscribeAllowed(t *testing.T, addr string, tc aclCase) bool {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
	r := stomp.NewReader(nc, stomp.Limits{})
	next := func() *frame.Frame {
		for {
			f, err := r.Read()
			if err != nil {
				t.Fatalf("STOMP read: %v", err)
			}
			if f != nil {
				return f
			}
		}
	}
	write := func(f *frame.Frame) {
		if _, err := nc.Write(stomp.AppendFrame(nil, f, stomp.V12)); err != nil {
			t.Fatal(err)
		}
	}
	write(frame.New(frame.CONNECT, frame.AcceptVersion, "1.2", frame.Host, "x", frame.Login, tc.user, frame.Passcode, "secret", "client-id", tc.client))
	if f := next(); f.Command != frame.CONNECTED {
		t.Fatalf("CONNECT: %s %v", f.Command, f.Header)
	}
	r.SetVersion(stomp.V12)
	dest := "/topic/" + strings.ReplaceAll(strings.ReplaceAll(tc.topic, "/", "."), "+", "*")
	write(frame.New(frame.SUBSCRIBE, frame.Destination, dest, frame.Id, "1", frame.Receipt, "sub"))
	switch f := next(); f.Command {
	case frame.RECEIPT:
		return true
	case frame.ERROR:
		return false
	default:
		t.Fatalf("SUBSCRIBE answered with %s", f.Command)
		return false
	}
}

// TestCertificateUsernames (issue 11 item 6): with tls.username_from: cn,
// a client certificate logs a device in as the user its CN names, without
// a password, on MQTT and STOMP over TLS, configured through the file.
// The name's ACL applies; a username that is not the certificate's is
// refused; a client without a certificate logs in with its password.
func TestCertificateUsernames(t *testing.T) {
	certs := testkit.NewCerts(t, t.TempDir()) // client certificate CN: ferry-client
	tlsKeys := fmt.Sprintf("{cert_file: %s, key_file: %s, client_ca_file: %s, username_from: cn}", certs.ServerCert, certs.ServerKey, certs.CAFile)
	r := usersGateway(t, `
  - {name: ferry-client, publish: ['dev/%u/#']}
  - {name: dev, password_hash: 'HASH', publish: ['pw/#']}`, fmt.Sprintf(`
listeners:
  mqtt: {address: ""}
  stomp: {address: ""}
  http: {address: ""}
  mqtt_tls: {address: "127.0.0.1:0", tls: %s}
  stomp_tls: {address: "127.0.0.1:0", tls: %s}
`, tlsKeys, tlsKeys))
	withCert := certs.ClientTLS()
	noCert := &tls.Config{RootCAs: certs.CAPool, MinVersion: tls.VersionTLS12}

	t.Run("mqtt", func(t *testing.T) {
		addr := r.g.MQTTAddr("mqtt_tls")
		dial := func(tc *tls.Config, user, pw string) (paho.Client, error) {
			o := paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID("c1").SetTLSConfig(tc).
				SetUsername(user).SetPassword(pw).SetAutoReconnect(false).SetProtocolVersion(4)
			c := paho.NewClient(o)
			if err := waitToken(t, c.Connect()); err != nil {
				return nil, err
			}
			return c, nil
		}
		c, err := dial(withCert, "", "")
		if err != nil {
			t.Fatalf("certificate login: %v", err)
		}
		publish(t, c, "dev/ferry-client/t", "1")
		if err := waitToken(t, c.Publish("pw/x", 1, false, "1")); err == nil {
			t.Error("certificate user published outside its ACL")
		}
		c.Disconnect(50)
		if c, err := dial(withCert, "dev", "secret"); err == nil {
			c.Disconnect(50)
			t.Error("a username that is not the certificate's was accepted")
		}
		c, err = dial(noCert, "dev", "secret")
		if err != nil {
			t.Fatalf("password login without a certificate: %v", err)
		}
		publish(t, c, "pw/x", "1")
		c.Disconnect(50)
		if c, err := dial(noCert, "ferry-client", ""); err == nil {
			c.Disconnect(50)
			t.Error("the certificate user logged in without a certificate")
		}
	})
	t.Run("stomp", func(t *testing.T) {
		addr := r.g.STOMPAddr(0)
		d := testkit.Timeout(testkit.DefaultWait)
		dial := func(tc *tls.Config, opts ...func(*gostomp.Conn) error) (*gostomp.Conn, error) {
			nc, err := tls.Dial("tcp", addr, tc)
			if err != nil {
				return nil, err
			}
			opts = append(opts, gostomp.ConnOpt.MsgSendTimeout(d), gostomp.ConnOpt.RcvReceiptTimeout(d), gostomp.ConnOpt.DisconnectReceiptTimeout(d))
			c, err := gostomp.Connect(nc, opts...)
			if err != nil {
				_ = nc.Close()
			}
			return c, err
		}
		c, err := dial(withCert)
		if err != nil {
			t.Fatalf("certificate login: %v", err)
		}
		if err := c.Send("/topic/dev.ferry-client.t", "text/plain", []byte("1"), gostomp.SendOpt.Receipt); err != nil {
			t.Fatalf("certificate user SEND: %v", err)
		}
		err = c.Send("/topic/pw.x", "text/plain", []byte("1"), gostomp.SendOpt.Receipt)
		if err == nil {
			t.Error("certificate user sent outside its ACL")
		}
		closeStomp(c, err)
		if c, err := dial(withCert, gostomp.ConnOpt.Login("dev", "secret")); err == nil {
			_ = c.Disconnect()
			t.Error("a login that is not the certificate's was accepted")
		}
		c, err = dial(noCert, gostomp.ConnOpt.Login("dev", "secret"))
		if err != nil {
			t.Fatalf("password login without a certificate: %v", err)
		}
		if err := c.Send("/topic/pw.x", "text/plain", []byte("1"), gostomp.SendOpt.Receipt); err != nil {
			t.Fatalf("password user SEND: %v", err)
		}
		_ = c.Disconnect()
	})
}

// closeStomp ends a go-stomp connection: with DISCONNECT when it is fine;
// after an ERROR (err) the server has closed it, and go-stomp would wait
// for a DISCONNECT receipt that never comes.
func closeStomp(c *gostomp.Conn, err error) {
	if err != nil {
		_ = c.MustDisconnect()
		return
	}
	_ = c.Disconnect()
}

// TestInheritedSessionFollowsCurrentACL (issue 11 item 3): a session taken
// over by its own user after a reload narrowed the user's rights keeps
// neither the subscription the user may no longer have nor the queued
// messages on it.
func TestInheritedSessionFollowsCurrentACL(t *testing.T) {
	users := `
  - {name: dev, password_hash: 'HASH', subscribe: [SUBS]}
  - {name: ops, password_hash: 'HASH', publish: ['#']}`
	r := usersGateway(t, strings.ReplaceAll(users, "SUBS", "'a/#', 'b/#'"), "")
	addr := r.g.MQTTAddr("mqtt")
	var box inbox
	dev, err := mqttLogin(addr, "dev-1", "dev", false, box.handler)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"a/x", "b/x"} {
		if err := waitToken(t, dev.Subscribe(f, 1, nil)); err != nil {
			t.Fatal(err)
		}
	}
	dev.Disconnect(100)
	ops, err := mqttLogin(addr, "ops-1", "ops", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ops.Disconnect(100)
	publish(t, ops, "a/x", "queued-a")
	publish(t, ops, "b/x", "queued-b")

	narrowed := mustParse(t, "gateway_id: gw1\nbridge: {upstream: embedded}\nusers:"+
		strings.ReplaceAll(strings.ReplaceAll(users, "HASH", hashSecret), "SUBS", "'b/#'")+"\n")
	// The fan-out follows the commit: wait until both are queued for the
	// offline session.
	testkit.Wait(t, "the messages queued for dev", func() bool { return r.g.mq.Stats().Injected >= 2 })
	if err := r.g.auth.Reload(narrowed); err != nil {
		t.Fatal(err)
	}
	dev, err = mqttLogin(addr, "dev-1", "dev", false, box.handler)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Disconnect(100)
	testkit.Wait(t, "the queued message dev may still read", func() bool { return len(box.got()) >= 1 })
	publish(t, ops, "a/x", "new-a")
	publish(t, ops, "b/x", "new-b")
	testkit.Wait(t, "the new message dev may read", func() bool { return len(box.got()) >= 2 })
	time.Sleep(100 * time.Millisecond) // let a wrong delivery show up
	if got := strings.Join(box.got(), " "); got != "b/x=queued-b b/x=new-b" {
		t.Fatalf("dev received %q, want only b/x", got)
	}
}
