package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/spool"
)

// payload is every dead letter of dlqSpool; the API serves it
// base64-encoded (payloadMark): a response that contains that leaked it.
const payload = "secret-reading-4711"

var payloadMark = base64.StdEncoding.EncodeToString([]byte(payload))

// dlqSpool returns a spool with n dead letters.
func dlqSpool(t *testing.T, n int) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{RetainDelivered: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	ctx := context.Background()
	for range n {
		if _, err := sp.Put(ctx, spool.Entry{Data: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	items, err := sp.Lease(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if err := sp.DeadLetter(ctx, it.ID, "poison"); err != nil {
			t.Fatal(err)
		}
	}
	return sp
}

// logBuf collects log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func apiHandler(sp *spool.Spool, l config.HTTPListener) (http.Handler, *logBuf) {
	logs := &logBuf{}
	h := NewHTTPHandler(HTTPOptions{
		Metrics:  NewMetrics(MetricsOptions{GatewayID: "gw1"}),
		Spool:    sp,
		Listener: l,
		Logger:   slog.New(slog.NewTextHandler(logs, nil)),
	})
	return h, logs
}

// req builds a request as a client on remote would send it to host.
func req(method, path, host, remote string, hdr ...string) *http.Request {
	r := httptest.NewRequest(method, path, nil)
	r.Host = host
	r.RemoteAddr = remote
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	return r
}

func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// TestHostHeaderIsChecked: a DNS-rebinding page sends its own name in the
// Host header; no path answers it, least of all the dead letters.
func TestHostHeaderIsChecked(t *testing.T) {
	sp := dlqSpool(t, 2)
	h, logs := apiHandler(sp, config.HTTPListener{Address: "gw.example.net:8080", Hosts: []string{"Ferry.LAN"}})
	hostname, _ := os.Hostname()
	for _, c := range []struct {
		host string
		ok   bool
	}{
		{"127.0.0.1:8080", true},
		{"[::1]:8080", true},
		{"192.168.1.20:8080", true},
		{"localhost:8080", true},
		{"LOCALHOST.:8080", true},
		{"status.localhost:8080", true},
		{"gw.example.net:8080", true},
		{"gw.example.net", true},
		{"ferry.lan:8080", true},
		{hostname + ":8080", hostname != ""},
		{"evil.test:8080", false},
		{"evil.test", false},
		{"127.0.0.1.nip.io:8080", false},
		{"gw.example.net.evil.test:8080", false},
		{"localhost.evil.test:8080", false},
	} {
		for _, path := range []string{"/api/spool/dlq", "/api/spool/stats", "/api/status", "/metrics", "/"} {
			rec := serve(h, req("GET", path, c.host, "127.0.0.1:5555"))
			if got := rec.Code == http.StatusOK; got != c.ok {
				t.Errorf("GET %s with Host %q: %d, want ok=%v", path, c.host, rec.Code, c.ok)
			}
			if c.ok && path == "/api/spool/dlq" && !strings.Contains(rec.Body.String(), payloadMark) {
				t.Errorf("GET %s with Host %q: the dead letters are not in %q", path, c.host, rec.Body.String())
			}
			if !c.ok && (rec.Code != http.StatusMisdirectedRequest || strings.Contains(rec.Body.String(), payloadMark)) {
				t.Errorf("GET %s with Host %q: %d %q, want 421 without the payload", path, c.host, rec.Code, rec.Body.String())
			}
		}
	}
	if !strings.Contains(logs.String(), "http request refused") || !strings.Contains(logs.String(), "reason=host") {
		t.Errorf("refusal not logged:\n%s", logs)
	}
}

// purge sends POST /api/spool/dlq/purge?all=1 with the given headers and
// reports the answer and how many dead letters are left.
func purge(t *testing.T, h http.Handler, sp *spool.Spool, host, remote string, hdr ...string) (int, int64) {
	t.Helper()
	rec := serve(h, req("POST", "/api/spool/dlq/purge?all=1", host, remote, hdr...))
	return rec.Code, sp.Stats().DLQMessages
}

// TestSpoolChangeNeedsAdminHeader: a form or a no-cors fetch from any page
// is a simple request without custom headers: it must change nothing.
func TestSpoolChangeNeedsAdminHeader(t *testing.T) {
	sp := dlqSpool(t, 3)
	h, _ := apiHandler(sp, config.HTTPListener{Address: "127.0.0.1:8080"})
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"} {
		code, left := purge(t, h, sp, "127.0.0.1:8080", "127.0.0.1:5555", "Content-Type", ct)
		if code != http.StatusForbidden || left != 3 {
			t.Fatalf("purge without %s, Content-Type %q: %d, %d dead letters left of 3", AdminHeader, ct, code, left)
		}
	}
	for _, path := range []string{"/api/spool/dlq/requeue?all=1", "/api/spool/replay?since=2000-01-01T00:00:00Z", "/api/spool/compact"} {
		if rec := serve(h, req("POST", path, "127.0.0.1:8080", "127.0.0.1:5555")); rec.Code != http.StatusForbidden {
			t.Errorf("POST %s without %s: %d, want 403", path, AdminHeader, rec.Code)
		}
	}
	if sp.Stats().Messages != 0 {
		t.Fatal("requeue without the header requeued")
	}
	if code, left := purge(t, h, sp, "127.0.0.1:8080", "127.0.0.1:5555", AdminHeader, "test"); code != 200 || left != 0 {
		t.Fatalf("purge with %s: %d, %d left", AdminHeader, code, left)
	}
}

// TestSpoolChangeRefusesOtherOrigins: a browser says where a request comes
// from; a change from another origin is refused even with the header (which
// a browser would only send after a preflight the gateway never approves).
func TestSpoolChangeRefusesOtherOrigins(t *testing.T) {
	sp := dlqSpool(t, 3)
	h, _ := apiHandler(sp, config.HTTPListener{Address: "127.0.0.1:8080"})
	for _, hdr := range [][]string{
		{"Sec-Fetch-Site", "cross-site"},
		{"Sec-Fetch-Site", "same-site"}, // another port on localhost
		{"Origin", "http://localhost:9999"},
		{"Origin", "http://127.0.0.1:9999"},
		{"Origin", "null"},
	} {
		code, left := purge(t, h, sp, "127.0.0.1:8080", "127.0.0.1:5555", append([]string{AdminHeader, "x"}, hdr...)...)
		if code != http.StatusForbidden || left != 3 {
			t.Fatalf("purge with %v: %d, %d dead letters left of 3", hdr, code, left)
		}
	}
	code, left := purge(t, h, sp, "127.0.0.1:8080", "127.0.0.1:5555", AdminHeader, "x",
		"Sec-Fetch-Site", "same-origin", "Origin", "http://127.0.0.1:8080")
	if code != 200 || left != 0 {
		t.Fatalf("same-origin purge: %d, %d left", code, left)
	}
}

// TestSpoolChangeFromLoopbackOrLogin: without a login only loopback clients
// change the spool; with one, any client that logged in.
func TestSpoolChangeFromLoopbackOrLogin(t *testing.T) {
	sp := dlqSpool(t, 3)
	h, _ := apiHandler(sp, config.HTTPListener{Address: "0.0.0.0:8080"})
	if code, left := purge(t, h, sp, "192.168.1.20:8080", "192.168.1.5:5555", AdminHeader, "x"); code != http.StatusForbidden || left != 3 {
		t.Fatalf("purge from the LAN without a login: %d, %d left of 3", code, left)
	}
	h, _ = apiHandler(sp, config.HTTPListener{Address: "0.0.0.0:8080", Auth: config.HTTPAuth{Username: "ops", PasswordHash: hashSecret}})
	r := req("POST", "/api/spool/dlq/purge?all=1", "192.168.1.20:8080", "192.168.1.5:5555", AdminHeader, "x")
	r.SetBasicAuth("ops", "secret")
	if rec := serve(h, r); rec.Code != 200 || sp.Stats().DLQMessages != 0 {
		t.Fatalf("purge from the LAN with a login: %d %s, %d left", rec.Code, rec.Body, sp.Stats().DLQMessages)
	}
}

// TestSpoolChangeIsLogged: each change names the client and what changed.
func TestSpoolChangeIsLogged(t *testing.T) {
	sp := dlqSpool(t, 3)
	h, logs := apiHandler(sp, config.HTTPListener{Address: "127.0.0.1:8080"})
	if code, _ := purge(t, h, sp, "127.0.0.1:8080", "127.0.0.1:5555", AdminHeader, "ferry/test"); code != 200 {
		t.Fatalf("purge: %d", code)
	}
	for _, want := range []string{`msg="spool changed"`, "op=dlq_purge", "remote=127.0.0.1:5555", "client=ferry/test", "all=true", "n=3"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

// TestHTTPLogin: with listeners.http.auth every path but the probes needs
// the login, for basic and for bearer.
func TestHTTPLogin(t *testing.T) {
	sp := dlqSpool(t, 1)
	for _, c := range []struct {
		auth          config.HTTPAuth
		good, bad     func(*http.Request)
		wantScheme    string
		wantUserInLog string
	}{
		{
			auth:       config.HTTPAuth{Username: "ops", PasswordHash: hashSecret},
			good:       func(r *http.Request) { r.SetBasicAuth("ops", "secret") },
			bad:        func(r *http.Request) { r.SetBasicAuth("ops", "wrong") },
			wantScheme: "Basic", wantUserInLog: "user=ops",
		},
		{
			auth:       config.HTTPAuth{Username: "ops", PasswordHash: hashSecret},
			good:       func(r *http.Request) { r.SetBasicAuth("ops", "secret") },
			bad:        func(r *http.Request) { r.SetBasicAuth("root", "secret") },
			wantScheme: "Basic", wantUserInLog: "user=ops",
		},
		{
			auth:       config.HTTPAuth{TokenHash: hashSecret},
			good:       func(r *http.Request) { r.Header.Set("Authorization", "Bearer secret") },
			bad:        func(r *http.Request) { r.Header.Set("Authorization", "Bearer secre") },
			wantScheme: "Bearer", wantUserInLog: "user=token",
		},
		{
			auth:       config.HTTPAuth{TokenHash: hashSecret},
			good:       func(r *http.Request) { r.Header.Set("Authorization", "bearer secret") },
			bad:        func(r *http.Request) { r.SetBasicAuth("token", "secret") },
			wantScheme: "Bearer", wantUserInLog: "user=token",
		},
	} {
		h, logs := apiHandler(sp, config.HTTPListener{Address: "0.0.0.0:8080", Auth: c.auth})
		for _, path := range []string{"/api/spool/dlq", "/api/spool/stats", "/api/status", "/metrics", "/"} {
			for _, how := range []struct {
				name string
				set  func(*http.Request)
				want int
			}{{"no login", func(*http.Request) {}, 401}, {"a bad login", c.bad, 401}, {"the login", c.good, 200}, {"the login again (remembered)", c.good, 200}} {
				r := req("GET", path, "192.168.1.20:8080", "192.168.1.5:5555")
				how.set(r)
				rec := serve(h, r)
				if rec.Code != how.want {
					t.Errorf("%s: GET %s with %s: %d, want %d", c.wantScheme, path, how.name, rec.Code, how.want)
				}
				if how.want == 401 {
					if ch := rec.Header().Get("WWW-Authenticate"); !strings.HasPrefix(ch, c.wantScheme+" ") {
						t.Errorf("%s: 401 challenge %q", c.wantScheme, ch)
					}
					if strings.Contains(rec.Body.String(), payloadMark) {
						t.Errorf("%s: 401 body leaks the payload", c.wantScheme)
					}
				}
			}
		}
		for _, path := range []string{"/healthz", "/readyz"} {
			if rec := serve(h, req("GET", path, "192.168.1.20:8080", "192.168.1.5:5555")); rec.Code != 200 {
				t.Errorf("%s: probe %s without login: %d, want 200", c.wantScheme, path, rec.Code)
			}
		}
		// A path that only starts like a probe is not one.
		if rec := serve(h, req("GET", "/healthz/../api/spool/dlq", "192.168.1.20:8080", "192.168.1.5:5555")); rec.Code != 401 {
			t.Errorf("%s: /healthz/../api/spool/dlq without login: %d, want 401", c.wantScheme, rec.Code)
		}
		r := req("POST", "/api/spool/compact", "192.168.1.20:8080", "192.168.1.5:5555", AdminHeader, "x")
		c.good(r)
		if rec := serve(h, r); rec.Code != 200 || !strings.Contains(logs.String(), c.wantUserInLog) {
			t.Errorf("%s: compact with the login: %d, log:\n%s", c.wantScheme, rec.Code, logs)
		}
	}
}

// TestHTTPLoginFloodTakesOneCheckAtATime: wrong logins are checked one at a
// time, so a flood of them takes at most one core; a remembered good login
// does not wait behind them.
func TestHTTPLoginFloodTakesOneCheckAtATime(t *testing.T) {
	l := newHTTPLogin(config.HTTPAuth{Username: "ops", PasswordHash: hashSecret})
	good := req("GET", "/", "127.0.0.1", "127.0.0.1:1")
	good.SetBasicAuth("ops", "secret")
	if _, ok := l.check(good); !ok {
		t.Fatal("good login refused")
	}
	l.slot <- struct{}{} // a bad check in progress
	if _, ok := l.check(good); !ok {
		t.Fatal("remembered login waited for the slot or was refused")
	}
	ctx, cancel := context.WithCancel(context.Background())
	bad := req("GET", "/", "127.0.0.1", "127.0.0.1:1").WithContext(ctx)
	bad.SetBasicAuth("ops", "wrong")
	done := make(chan bool)
	go func() { _, ok := l.check(bad); done <- ok }()
	cancel() // the client gave up while waiting for the slot
	if ok := <-done; ok {
		t.Fatal("bad login passed")
	}
	<-l.slot
}

func TestHTTPAuthConfig(t *testing.T) {
	const hash = "'" + hashSecret + "'"
	for _, c := range []struct {
		name, http string
		want       string // "" ok
	}{
		{"loopback without login", "{address: 127.0.0.1:8080}", ""},
		{"localhost without login", "{address: localhost:8080}", ""},
		{"exposed without login", "{address: 0.0.0.0:8080}", "listeners.http.address: listens beyond loopback"},
		{"all interfaces without login", "{address: ':8080'}", "listeners.http.address: listens beyond loopback"},
		{"exposed with basic", "{address: 0.0.0.0:8080, auth: {username: ops, password_hash: " + hash + "}}", ""},
		{"exposed with bearer", "{address: 0.0.0.0:8080, auth: {token_hash: " + hash + "}}", ""},
		{"both", "{address: 0.0.0.0:8080, auth: {username: ops, password_hash: " + hash + ", token_hash: " + hash + "}}", "listeners.http.auth.token_hash: set username and password_hash (basic) or token_hash (bearer), not both"},
		{"username only", "{auth: {username: ops}}", "listeners.http.auth.password_hash: required with username"},
		{"hash only", "{auth: {password_hash: " + hash + "}}", "listeners.http.auth.username: required with password_hash"},
		{"bad hash", "{auth: {username: ops, password_hash: secret}}", "listeners.http.auth.password_hash: not a bcrypt hash"},
		{"bad token hash", "{auth: {token_hash: secret}}", "listeners.http.auth.token_hash: not a bcrypt hash"},
		{"colon in username", "{auth: {username: 'a:b', password_hash: " + hash + "}}", "listeners.http.auth.username: must not contain ':'"},
		{"hosts", "{hosts: [ferry.lan, gw-7.example.net, 10.0.0.7, 'fe80::1']}", ""},
		{"host with port", "{hosts: ['ferry.lan:8080']}", "listeners.http.hosts[0]: want a host name"},
		{"host with scheme", "{hosts: [ok.lan, 'http://ferry.lan']}", "listeners.http.hosts[1]: want a host name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := minimal + "listeners:\n  http: " + c.http + "\n"
			_, err := config.Parse("ferry.yaml", []byte(src), nil)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("want ok, got\n%v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("want %q, got\n%v", c.want, err)
			}
		})
	}
	// Users are logins for MQTT and STOMP: an exposed HTTP listener with
	// its own login does not need them.
	src := minimal + "listeners:\n  http: {address: 0.0.0.0:8080, auth: {token_hash: " + hash + "}}\n"
	if _, err := config.Parse("ferry.yaml", []byte(src), nil); err != nil {
		t.Fatalf("exposed HTTP with a login and no users: %v", err)
	}
}

func TestEffectiveYAMLRedactsHTTPAuth(t *testing.T) {
	c := mustParse(t, minimal+"listeners:\n  http: {auth: {username: ops, password_hash: '"+hashSecret+"'}}\n")
	out, err := c.EffectiveYAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), hashSecret) || !strings.Contains(string(out), "password_hash: REDACTED") {
		t.Fatalf("HTTP password hash not redacted:\n%s", out)
	}
}

// TestSpoolAdminLogin: `ferry spool` against a running gateway with a
// login sends it, and without it fails with ErrHTTPLogin.
func TestSpoolAdminLogin(t *testing.T) {
	if testing.Short() {
		t.Skip("real gateway")
	}
	cfg := e2eConfig(t, "tcp://127.0.0.1:1", "")
	cfg.Listeners.HTTP.Auth = config.HTTPAuth{Username: "ops", PasswordHash: hashSecret}
	r := startGateway(t, cfg)
	cfg2 := *cfg
	cfg2.Listeners.HTTP.Address = r.g.HTTPAddr()
	for _, o := range []AdminOptions{{}, {Password: "wrong"}, {Token: "secret"}} {
		if _, err := OpenSpoolAdmin(&cfg2, o); !errors.Is(err, ErrHTTPLogin) {
			t.Fatalf("OpenSpoolAdmin(%+v) = %v, want ErrHTTPLogin", o, err)
		}
	}
	adm, err := OpenSpoolAdmin(&cfg2, AdminOptions{Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.PurgeDLQ(context.Background()); err != nil {
		t.Fatalf("purge with the login: %v", err)
	}
}
