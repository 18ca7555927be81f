package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	gostomp "github.com/go-stomp/stomp/v3"
	"github.com/gorilla/websocket"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
)

// tlsBlock is a tls block in flow style for the certificates.
func tlsBlock(c *bridgetest.Certs, extra string) string {
	return fmt.Sprintf("{cert_file: %s, key_file: %s%s}", c.ServerCert, c.ServerKey, extra)
}

// TestListenerTLSFiles: ferry check (Load) loads the files of every
// listener's tls block and names the key of the one that is wrong.
func TestListenerTLSFiles(t *testing.T) {
	dir := t.TempDir()
	certs := bridgetest.NewCerts(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"mqtt", "mqtt_tls", "websocket", "stomp", "stomp_tls", "stomp_websocket", "http"} {
		for _, tc := range []struct {
			what, tls, want string
		}{
			{"unreadable cert", fmt.Sprintf("{cert_file: %s, key_file: %s}", filepath.Join(dir, "nope.pem"), certs.ServerKey),
				"listeners." + name + ".tls.cert_file: " + filepath.Join(dir, "nope.pem") + ": no such file or directory"},
			{"key of another certificate", fmt.Sprintf("{cert_file: %s, key_file: %s}", certs.ServerCert, certs.ClientKey),
				"listeners." + name + ".tls.cert_file: " + certs.ServerCert + " and " + certs.ClientKey + " do not load as a certificate and key"},
			{"bad client CA", tlsBlock(certs, ", client_ca_file: "+notPEM),
				"listeners." + name + ".tls.client_ca_file: " + notPEM + ": no PEM certificate in it"},
			{"no certificate", "{client_ca_file: " + certs.CAFile + "}",
				"listeners." + name + ".tls.cert_file: required for a TLS listener"},
			{"old TLS", tlsBlock(certs, ", min_version: '1.1'"),
				"listeners." + name + ".tls.min_version: must be 1.2 or 1.3 (got \"1.1\")"},
		} {
			t.Run(name+"/"+tc.what, func(t *testing.T) {
				f := filepath.Join(t.TempDir(), "ferry.yaml")
				src := fmt.Sprintf("gateway_id: gw1\nbridge: {upstream: embedded}\nlisteners:\n  %s:\n    address: 127.0.0.1:0\n    tls: %s\n", name, tc.tls)
				if err := os.WriteFile(f, []byte(src), 0o600); err != nil {
					t.Fatal(err)
				}
				_, err := config.Load(f)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Load:\n%v\nwant a problem containing\n%s", err, tc.want)
				}
			})
		}
	}
	t.Run("listener-specific keys", func(t *testing.T) {
		src := "gateway_id: gw1\nbridge: {upstream: embedded}\nlisteners:\n  http: {address: 127.0.0.1:0, tls: " +
			tlsBlock(certs, ", client_ca_file: "+certs.CAFile+", username_from: cn") + "}\n  stomp_websocket: {address: 127.0.0.1:0, path: stomp}\n"
		_, err := config.Parse("ferry.yaml", []byte(src), nil)
		for _, want := range []string{"listeners.http.tls.username_from: not for the HTTP listener",
			`listeners.stomp_websocket.path: must be a URL path starting with / (got "stomp")`} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Parse:\n%v\nwant a problem containing\n%s", err, want)
			}
		}
	})
}

// TestListenersTLS starts a gateway with TLS on every listener, from the
// configuration, with certificates made by the test, and talks each
// protocol through it with a client that trusts the test CA: MQTT over
// TLS (mqtt with a tls block, and mqtt_tls), MQTT over wss, STOMP over
// TLS (stomp, and stomp_tls with mutual TLS whose certificate names the
// user), STOMP over wss and HTTPS. A client that does not trust the CA, or
// speaks plain text, gets nowhere.
func TestListenersTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a gateway")
	}
	certs := bridgetest.NewCerts(t, t.TempDir())
	srv := tlsBlock(certs, "")
	y := fmt.Sprintf(`
gateway_id: gw1
listeners:
  mqtt: {address: "127.0.0.1:0", tls: %[1]s}
  mqtt_tls: {address: "127.0.0.1:0", tls: %[1]s}
  websocket: {address: "127.0.0.1:0", tls: %[1]s}
  stomp: {address: "127.0.0.1:0", tls: %[2]s}
  stomp_tls: {address: "127.0.0.1:0", tls: %[3]s}
  stomp_websocket: {address: "127.0.0.1:0", path: /ws/stomp, tls: %[5]s}
  http: {address: "127.0.0.1:0", tls: %[1]s}
allow_anonymous: true
users:
  - {name: ferry-client, publish: ["certs/#"], subscribe: ["certs/#"]}
spool: {path: %[4]s}
bridge: {upstream: ["tcp://127.0.0.1:1"], backoff: {base: 100ms, max: 500ms}}
`, srv, tlsBlock(certs, ", min_version: '1.3'"),
		tlsBlock(certs, ", client_ca_file: "+certs.CAFile+", require_client_cert: true, username_from: cn"),
		filepath.Join(t.TempDir(), "spool.db"), tlsBlock(certs, ", client_ca_file: "+certs.CAFile+", username_from: cn"))
	cfg, err := config.Parse("tls.yaml", []byte(y), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckFiles(); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg).g
	trust := &tls.Config{RootCAs: certs.CAPool, MinVersion: tls.VersionTLS12}

	mqttTLS := func(t *testing.T, url string) {
		t.Helper()
		o := paho.NewClientOptions().AddBroker(url).SetClientID("tls-" + t.Name()).SetAutoReconnect(false).
			SetTLSConfig(trust).SetConnectTimeout(testkit.Timeout(testkit.DefaultWait))
		c := paho.NewClient(o)
		if err := waitToken(t, c.Connect()); err != nil {
			t.Fatalf("connect %s: %v", url, err)
		}
		defer c.Disconnect(100)
		if err := waitToken(t, c.Publish("sensors/tls", 1, false, "x")); err != nil {
			t.Fatalf("publish over %s: %v", url, err)
		}
	}
	t.Run("mqtt", func(t *testing.T) { mqttTLS(t, "ssl://"+g.MQTTAddr("mqtt")) })
	t.Run("mqtt_tls", func(t *testing.T) { mqttTLS(t, "ssl://"+g.MQTTAddr("mqtt_tls")) })
	t.Run("websocket", func(t *testing.T) { mqttTLS(t, "wss://"+g.MQTTAddr("websocket")+"/mqtt") })
	t.Run("mqtt plain text is refused", func(t *testing.T) {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + g.MQTTAddr("mqtt")).SetAutoReconnect(false).
			SetConnectTimeout(testkit.Timeout(testkit.DefaultWait)))
		if err := waitToken(t, c.Connect()); err == nil {
			c.Disconnect(0)
			t.Fatal("a plain-text MQTT client connected to a TLS listener")
		}
	})

	stompOver := func(t *testing.T, nc net.Conn, login string) {
		t.Helper()
		d := testkit.Timeout(testkit.DefaultWait)
		opts := []func(*gostomp.Conn) error{gostomp.ConnOpt.MsgSendTimeout(d), gostomp.ConnOpt.RcvReceiptTimeout(d)}
		if login != "" {
			opts = append(opts, gostomp.ConnOpt.Login(login, ""))
		}
		c, err := gostomp.Connect(nc, opts...)
		if err != nil {
			t.Fatalf("stomp connect: %v", err)
		}
		defer func() { _ = c.Disconnect() }()
		if err := c.Send("/topic/certs.tls", "text/plain", []byte("x"), gostomp.SendOpt.Receipt); err != nil {
			t.Fatalf("stomp send with receipt: %v", err)
		}
	}
	t.Run("stomp", func(t *testing.T) {
		nc, err := tls.Dial("tcp", g.STOMPAddr(0), trust)
		if err != nil {
			t.Fatal(err)
		}
		if v := nc.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("TLS version %x with min_version 1.3", v)
		}
		stompOver(t, nc, "")
	})
	t.Run("stomp refuses TLS 1.2 with min_version 1.3", func(t *testing.T) {
		nc, err := tls.Dial("tcp", g.STOMPAddr(0), &tls.Config{RootCAs: certs.CAPool, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12})
		if err == nil {
			_ = nc.Close()
			t.Fatal("a TLS 1.2 handshake succeeded")
		}
	})
	t.Run("stomp_tls mutual TLS", func(t *testing.T) {
		// No client certificate: the handshake fails (TLS 1.3 reports it
		// on the first read).
		nc, err := tls.Dial("tcp", g.STOMPAddr(1), trust)
		if err == nil {
			_ = nc.SetDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
			_, err = nc.Write([]byte("CONNECT\naccept-version:1.2\nhost:x\n\n\x00"))
			if err == nil {
				_, err = bufio.NewReader(nc).ReadString(0)
			}
			_ = nc.Close()
		}
		if err == nil {
			t.Fatal("a client without a certificate was served by require_client_cert: true")
		}
		// With the client certificate: logged in as its CN, whose ACL
		// allows certs/#, and no other topic.
		nc, err = tls.Dial("tcp", g.STOMPAddr(1), certs.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		stompOver(t, nc, "")
		nc, err = tls.Dial("tcp", g.STOMPAddr(1), certs.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		// Anonymous clients may publish anywhere; ferry-client may not.
		_ = nc.SetDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
		br := bufio.NewReader(nc)
		for _, f := range []string{"CONNECT\naccept-version:1.2\nhost:x\n\n\x00", "SEND\ndestination:/topic/sensors.cert\nreceipt:r1\n\nx\x00"} {
			if _, err := nc.Write([]byte(f)); err != nil {
				t.Fatal(err)
			}
			got, err := br.ReadString(0)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(f, "SEND") && !strings.HasPrefix(got, "ERROR\n") {
				t.Errorf("the certificate's user published outside its config.ACL (the certificate did not name the user): %q", got)
			}
		}
		_ = nc.Close()
		nc, err = tls.Dial("tcp", g.STOMPAddr(1), certs.ClientTLS())
		if err != nil {
			t.Fatal(err)
		}
		c, err := gostomp.Connect(nc, gostomp.ConnOpt.Login("someone-else", "x"))
		if err == nil {
			_ = c.Disconnect()
			t.Fatal("a login other than the certificate's user was accepted")
		}
	})

	wsDial := func(t *testing.T, tc *tls.Config) *websocket.Conn {
		t.Helper()
		d := websocket.Dialer{Subprotocols: []string{"v12.stomp"}, TLSClientConfig: tc, HandshakeTimeout: testkit.Timeout(testkit.DefaultWait)}
		ws, resp, err := d.Dial("wss://"+g.STOMPWebSocketAddr()+"/ws/stomp", nil)
		if resp != nil {
			_ = resp.Body.Close()
		}
		if err != nil {
			t.Fatalf("wss dial: %v", err)
		}
		t.Cleanup(func() { _ = ws.Close() })
		return ws
	}
	t.Run("stomp_websocket", func(t *testing.T) {
		ws := wsDial(t, trust)
		if p := ws.Subprotocol(); p != "v12.stomp" {
			t.Errorf("subprotocol %q", p)
		}
		_ = ws.SetReadDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
		for _, f := range []string{"CONNECT\naccept-version:1.2\nhost:x\n\n\x00", "SEND\ndestination:/topic/sensors.wss\nreceipt:r1\n\nx\x00"} {
			if err := ws.WriteMessage(websocket.TextMessage, []byte(f)); err != nil {
				t.Fatal(err)
			}
			_, b, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{true: "CONNECTED\n", false: "RECEIPT\nreceipt-id:r1\n"}[strings.HasPrefix(f, "CONNECT")]; !bytes.HasPrefix(b, []byte(want)) {
				t.Fatalf("got %q, want %q…", b, want)
			}
		}
	})
	t.Run("stomp_websocket certificate names the user", func(t *testing.T) {
		// Over wss too, a verified certificate logs in as its CN, whose
		// ACL refuses what anonymous clients may do.
		ws := wsDial(t, certs.ClientTLS())
		_ = ws.SetReadDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
		for _, f := range []string{"CONNECT\naccept-version:1.2\nhost:x\n\n\x00", "SEND\ndestination:/topic/sensors.wss\nreceipt:r1\n\nx\x00"} {
			if err := ws.WriteMessage(websocket.TextMessage, []byte(f)); err != nil {
				t.Fatal(err)
			}
			_, b, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{true: "CONNECTED\n", false: "ERROR\n"}[strings.HasPrefix(f, "CONNECT")]; !bytes.HasPrefix(b, []byte(want)) {
				t.Fatalf("got %q, want %q…", b, want)
			}
		}
	})
	t.Run("stomp_websocket other path", func(t *testing.T) {
		d := websocket.Dialer{TLSClientConfig: trust, HandshakeTimeout: testkit.Timeout(testkit.DefaultWait)}
		_, resp, err := d.Dial("wss://"+g.STOMPWebSocketAddr()+"/stomp", nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("dial of another path: %v %v", resp, err)
		}
		_ = resp.Body.Close()
	})
	t.Run("stomp_websocket untrusted", func(t *testing.T) {
		d := websocket.Dialer{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}, HandshakeTimeout: testkit.Timeout(testkit.DefaultWait)}
		ws, resp, err := d.Dial("wss://"+g.STOMPWebSocketAddr()+"/ws/stomp", nil)
		if err == nil {
			_ = resp.Body.Close()
			_ = ws.Close()
			t.Fatal("a client that does not trust the test CA connected")
		}
	})
	t.Run("http", func(t *testing.T) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: trust}, Timeout: testkit.Timeout(testkit.DefaultWait)}
		resp, err := c.Get("https://" + g.HTTPAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS == nil {
			t.Fatalf("https /healthz: %s tls=%v", resp.Status, resp.TLS != nil)
		}
		// ferry spool reaches the running gateway over HTTPS, trusting
		// the certificate of the configuration.
		cfg2 := *cfg
		cfg2.Listeners.HTTP.Address = g.HTTPAddr()
		adm, err := OpenSpoolAdmin(&cfg2, AdminOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := adm.Stats(context.Background()); err != nil || !strings.HasPrefix(adm.Where(), "the running gateway at https://") {
			t.Fatalf("ferry spool over HTTPS: %v (%s)", err, adm.Where())
		}
		_ = adm.Close()
		cfg2.Listeners.HTTP.TLS.CertFile = certs.ClientCert // another certificate: refused
		if _, err := OpenSpoolAdmin(&cfg2, AdminOptions{}); err == nil || !strings.Contains(err.Error(), "is not the one in") {
			t.Fatalf("ferry spool trusted another certificate: %v", err)
		}
		plain := &http.Client{Timeout: testkit.Timeout(testkit.DefaultWait)}
		if resp, err := plain.Get("http://" + g.HTTPAddr() + "/healthz"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Fatal("plain HTTP served by an HTTPS listener")
			}
		}
	})
	// What was published over TLS was accepted: 3 MQTT publishes, 3
	// STOMP SENDs with receipts.
	if n := g.Spool().Stats().Accepted; n < 6 {
		t.Errorf("spool accepted %d messages, want at least 6", n)
	}
}

// TestSTOMPWebSocketListener: the stomp_websocket listener of the
// configuration applies the same logins, ACLs, limits.stomp and receipts as
// TCP STOMP, on its path (default /stomp) only.
func TestSTOMPWebSocketListener(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a gateway")
	}
	y := fmt.Sprintf(`
gateway_id: gw1
listeners:
  mqtt: {address: ""}
  stomp: {address: ""}
  http: {address: ""}
  stomp_websocket: {address: "127.0.0.1:0"}
users:
  - {name: web, password_hash: '%s', publish: ["web/#"], subscribe: ["web/#"]}
limits: {stomp: {max_frame_size: 64B}}
spool: {path: %s}
bridge: {upstream: ["tcp://127.0.0.1:1"], backoff: {base: 100ms, max: 500ms}}
`, hashSecret, filepath.Join(t.TempDir(), "spool.db"))
	cfg, err := config.Parse("ws.yaml", []byte(y), nil)
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, cfg).g
	url := "ws://" + g.STOMPWebSocketAddr() + "/stomp"
	dial := func(t *testing.T) *websocket.Conn {
		t.Helper()
		d := websocket.Dialer{Subprotocols: []string{"v12.stomp"}, HandshakeTimeout: testkit.Timeout(testkit.DefaultWait)}
		ws, resp, err := d.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		t.Cleanup(func() { _ = ws.Close() })
		_ = ws.SetReadDeadline(time.Now().Add(testkit.Timeout(testkit.DefaultWait)))
		return ws
	}
	// exchange sends frames and returns the first line (command) and the
	// message header of each answer.
	exchange := func(t *testing.T, ws *websocket.Conn, frames ...string) []string {
		t.Helper()
		var got []string
		for _, f := range frames {
			if err := ws.WriteMessage(websocket.TextMessage, []byte(f)); err != nil {
				t.Fatal(err)
			}
			_, b, err := ws.ReadMessage()
			if err != nil {
				t.Fatalf("after %q: %v", f, err)
			}
			cmd, rest, _ := strings.Cut(string(b), "\n")
			if i := strings.Index(rest, "message:"); i >= 0 {
				cmd += " " + strings.SplitN(rest[i:], "\n", 2)[0]
			}
			got = append(got, cmd)
		}
		return got
	}
	connect := "CONNECT\naccept-version:1.2\nhost:x\nlogin:web\npasscode:secret\n\n\x00"
	for _, tc := range []struct {
		name   string
		frames []string
		want   string // the last answer's command and message
	}{
		{"receipt", []string{connect, "SEND\ndestination:/topic/web.a\nreceipt:r1\n\nx\x00"}, "RECEIPT"},
		{"wrong passcode", []string{"CONNECT\naccept-version:1.2\nhost:x\nlogin:web\npasscode:nope\n\n\x00"}, "ERROR message:authentication failed"},
		{"acl", []string{connect, "SEND\ndestination:/topic/other.a\nreceipt:r1\n\nx\x00"}, "ERROR message:not authorized"},
		{"max_frame_size", []string{connect, "SEND\ndestination:/topic/web.a\nreceipt:r1\n\n" + strings.Repeat("x", 65) + "\x00"}, "ERROR message:frame too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := exchange(t, dial(t), tc.frames...)
			if last := got[len(got)-1]; !strings.HasPrefix(last, tc.want) {
				t.Fatalf("answers %q, want the last to start with %q", got, tc.want)
			}
		})
	}
	if n := g.Spool().Stats().Accepted; n != 1 {
		t.Errorf("spool accepted %d messages, want the 1 allowed SEND", n)
	}
	d := websocket.Dialer{HandshakeTimeout: testkit.Timeout(testkit.DefaultWait)}
	if _, resp, err := d.Dial("ws://"+g.STOMPWebSocketAddr()+"/mqtt", nil); err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("another path: %v %v", resp, err)
	} else {
		_ = resp.Body.Close()
	}
}
