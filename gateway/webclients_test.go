package gateway

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/internal/testkit"
)

// webDir holds the page of TestWebClients and, after `npm ci` there (as
// .ci/run does), the browser bundles of the clients it loads.
const webDir = "testdata/web"

// webLibs are the bundles the page loads from /lib/, by file name.
var webLibs = map[string]string{
	"stomp.umd.min.js": "node_modules/@stomp/stompjs/bundles/stomp.umd.min.js",
	"mqtt.min.js":      "node_modules/mqtt/dist/mqtt.min.js",
}

// requireWebLibs skips the test when the npm packages are not installed,
// or fails it when CI=true (CI installs them).
func requireWebLibs(t *testing.T) {
	t.Helper()
	for _, p := range webLibs {
		if _, err := os.Stat(filepath.Join(webDir, p)); err != nil {
			msg := fmt.Sprintf("%s is missing: run `npm ci` in gateway/%s (.ci/run does)", p, webDir)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg + " (CI=true)")
			}
			t.Skip(msg)
		}
	}
}

// npmVersion is the installed version of an npm package (for the log).
func npmVersion(name string) string {
	b, err := os.ReadFile(filepath.Join(webDir, "node_modules", name, "package.json"))
	if err != nil {
		return "?"
	}
	var p struct{ Version string }
	_ = json.Unmarshal(b, &p)
	return p.Version
}

// TestWebClients runs @stomp/stompjs and MQTT.js in a real headless
// Chromium against a gateway with a stomp_websocket and an MQTT websocket
// listener, over ws:// and over wss:// with a test CA: the page logs in,
// subscribes over each protocol to what the other publishes, publishes
// with a STOMP receipt and an MQTT PUBACK, and reports; both messages
// cross protocols locally and reach the upstream mosquitto.
//
// Chromium trusts the test certificate through
// --ignore-certificate-errors-spki-list with the SHA-256 of the server
// certificate's public key: every other certificate error still fails.
func TestWebClients(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Chromium and mosquitto")
	}
	chromium := requireChromium(t)
	requireWebLibs(t)
	t.Logf("clients: @stomp/stompjs %s, mqtt (MQTT.js) %s", npmVersion("@stomp/stompjs"), npmVersion("mqtt"))
	page, err := os.ReadFile(filepath.Join(webDir, "clients.html"))
	if err != nil {
		t.Fatal(err)
	}
	reports := make(chan map[string]any, 1)
	site := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/clients.html":
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write(page)
		case strings.HasPrefix(r.URL.Path, "/lib/") && webLibs[strings.TrimPrefix(r.URL.Path, "/lib/")] != "":
			w.Header().Set("Content-Type", "text/javascript")
			http.ServeFile(w, r, filepath.Join(webDir, webLibs[strings.TrimPrefix(r.URL.Path, "/lib/")]))
		case r.URL.Path == "/report" && r.Method == http.MethodPost:
			var m map[string]any
			if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
				t.Errorf("report: %v", err)
			}
			reports <- m
		default:
			http.NotFound(w, r)
		}
	}))
	up := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	sub := bridgetest.NewSubscriber(t, bridgetest.SubscriberOptions{URL: up.URL(), Filter: "sites/#", Envelope: true})
	certs := bridgetest.NewCerts(t, t.TempDir())

	for _, secure := range []bool{false, true} {
		name, scheme, tlsKey := "ws", "ws", ""
		var extra []string
		if secure {
			name, scheme = "wss", "wss"
			tlsKey = ", tls: " + tlsBlock(certs, "")
			extra = append(extra, "--ignore-certificate-errors-spki-list="+spkiHash(t, certs.ServerCert))
		}
		t.Run(name, func(t *testing.T) {
			y := fmt.Sprintf(`
gateway_id: gw1
listeners:
  mqtt: {address: ""}
  stomp: {address: ""}
  http: {address: ""}
  websocket: {address: "127.0.0.1:0"%[1]s}
  stomp_websocket: {address: "127.0.0.1:0", path: /stomp%[1]s}
users:
  - {name: web, password_hash: '%[2]s', publish: ["web/#"], subscribe: ["web/#"]}
spool: {path: %[3]s}
bridge: {upstream: [%[4]s], format: envelope, backoff: {base: 100ms, max: 500ms}}
`, tlsKey, hashSecret, filepath.Join(t.TempDir(), "spool.db"), up.URL())
			cfg, err := config.Parse("web.yaml", []byte(y), nil)
			if err != nil {
				t.Fatal(err)
			}
			g := startGateway(t, cfg).g
			// localhost: the name in the test certificate.
			stompURL := scheme + "://localhost:" + port(g.STOMPWebSocketAddr()) + "/stomp"
			mqttURL := scheme + "://localhost:" + port(g.MQTTAddr("websocket")) + "/mqtt"
			u := "http://" + site + "/clients.html?" + url.Values{"stomp": {stompURL}, "mqtt": {mqttURL}, "tag": {name},
				"wait": {fmt.Sprint(testkit.Timeout(testkit.DefaultWait).Milliseconds() / 2)}}.Encode()
			seen := runChromium(t, chromium, u, reports, extra...)

			if errs, _ := seen["errors"].([]any); len(errs) > 0 {
				t.Fatalf("the page failed: %v", errs)
			}
			if v := seen["stomp_version"]; v != "1.2" {
				t.Errorf("stompjs negotiated STOMP %v, want 1.2", v)
			}
			wantReceipts := []any{"sub-" + name, "send-" + name}
			if r, _ := seen["receipts"].([]any); !slices.Equal(r, wantReceipts) {
				t.Errorf("receipts %v, want %v", r, wantReceipts)
			}
			if seen["mqtt_puback"] != true {
				t.Error("the MQTT publish was not acknowledged")
			}
			if r := fmt.Sprint(seen["stomp_received"]); r != "[mqtt says "+name+"]" {
				t.Errorf("STOMP subscriber received %s, want the MQTT publish", r)
			}
			if r := fmt.Sprint(seen["mqtt_received"]); r != "[web/from_stomp stomp says "+name+"]" {
				t.Errorf("MQTT subscriber received %s, want the STOMP send", r)
			}
			want := map[string]string{"sites/gw1/web/from_stomp": "stomp says " + name, "sites/gw1/web/from_mqtt": "mqtt says " + name}
			waitUpstream(t, sub, "both messages of the page", func(rs []bridgetest.Record) bool {
				n := 0
				for _, r := range rs {
					if want[r.Topic] == string(r.Payload) {
						n++
					}
				}
				return n == len(want)
			})
		})
	}
}

func port(addr string) string {
	return addr[strings.LastIndexByte(addr, ':')+1:]
}

// spkiHash is the base64 SHA-256 of a certificate's public key, as
// Chromium's --ignore-certificate-errors-spki-list wants it.
func spkiHash(t *testing.T, certFile string) string {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, strings.TrimSuffix(certFile, ".pem")+".key")
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}
