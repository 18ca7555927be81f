package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/gateway/internal/passwordhash"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
)

// countingAuth is an Auth whose bcrypt checks are counted.
func countingAuth(t *testing.T, extra string) (*Auth, *atomic.Int64) {
	t.Helper()
	a, err := NewAuth(authConfig(t, extra))
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	a.compare = func(h, p []byte) error { n.Add(1); return bcrypt.CompareHashAndPassword(h, p) }
	return a, &n
}

func loginFrom(a *Auth, remote, user, password string) error {
	return a.Authenticate(context.Background(), message.Login{Username: user, Password: password, HasPassword: true, Remote: remote})
}

// TestLoginThrottle (issue 11 item 8): after max_failures failed logins
// from one address, or for one user, further attempts are refused without
// a bcrypt check (counted as throttled) until failure_interval has given
// one back; a login the cache knows is good is never throttled.
func TestLoginThrottle(t *testing.T) {
	a, checks := countingAuth(t, "limits: {login: {max_failures: 3, failure_interval: 10s}}\n")
	now := time.Unix(1e9, 0)
	a.now = func() time.Time { return now }
	if err := loginFrom(a, "192.0.2.9:1000", "dev", "secret"); err != nil {
		t.Fatal(err) // cached from now on
	}
	for i := range 3 {
		if err := loginFrom(a, "10.0.0.1:1234", "dev", "guess"); !errors.Is(err, message.ErrNotAuthorized) {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	// Another address fails once (for reader): dev, throttled, is throttled
	// there too.
	if err := loginFrom(a, "10.0.0.2:1", "reader", "guess"); err == nil {
		t.Fatal("wrong password accepted")
	}
	before := checks.Load()
	for _, tc := range []struct {
		name, remote, user, pw string
	}{
		{"same address, other port", "10.0.0.1:9999", "reader", "secret"},
		{"same user, address with a failure", "10.0.0.2:1", "dev", "guess2"},
	} {
		if err := loginFrom(a, tc.remote, tc.user, tc.pw); !errors.Is(err, message.ErrNotAuthorized) {
			t.Errorf("%s: %v, want refused", tc.name, err)
		}
	}
	if n := checks.Load() - before; n != 0 {
		t.Errorf("%d bcrypt checks for throttled attempts, want 0", n)
	}
	if got := a.Stats().Failures["throttled"]; got != 2 {
		t.Errorf("throttled %d, want 2", got)
	}
	if got := a.Stats().Failures["bad_credentials"]; got != 4 {
		t.Errorf("bad_credentials %d, want 4", got)
	}

	// The device that logged in before is not locked out by the guesser.
	if err := loginFrom(a, "10.0.0.1:5", "dev", "secret"); err != nil {
		t.Errorf("cached good login throttled: %v", err)
	}
	// Other addresses and users are not affected.
	if err := loginFrom(a, "10.0.0.3:1", "reader", "secret"); err != nil {
		t.Errorf("unrelated login: %v", err)
	}
	// One attempt per interval comes back.
	now = now.Add(10 * time.Second)
	if err := loginFrom(a, "10.0.0.1:1", "reader", "secret"); err != nil {
		t.Errorf("after failure_interval: %v", err)
	}
}

// TestLoginThrottleSparesCleanAddresses: guesses of one user's password
// from many addresses throttle the user on those addresses, but the user
// still logs in (a real check) from an address without failures.
func TestLoginThrottleSparesCleanAddresses(t *testing.T) {
	a, checks := countingAuth(t, "limits: {login: {max_failures: 3, failure_interval: 10s}}\n")
	now := time.Unix(1e9, 0)
	a.now = func() time.Time { return now }
	for i := range 5 {
		_ = loginFrom(a, fmt.Sprintf("10.0.1.%d:1", i), "dev", "guess")
	}
	before := checks.Load()
	if err := loginFrom(a, "10.0.1.0:1", "dev", "secret"); err == nil || checks.Load() != before {
		t.Errorf("throttled user from an address with a failure: %v, %d checks", err, checks.Load()-before)
	}
	if err := loginFrom(a, "10.0.2.1:1", "dev", "secret"); err != nil {
		t.Errorf("throttled user from a clean address: %v", err)
	}
}

// TestLoginThrottleIPv6Prefix: addresses of one IPv6 /64 share a budget.
func TestLoginThrottleIPv6Prefix(t *testing.T) {
	a, _ := countingAuth(t, "limits: {login: {max_failures: 2}}\n")
	for i, remote := range []string{"[2001:db8:1:2::a]:1", "[2001:db8:1:2::b]:1"} {
		if err := loginFrom(a, remote, "ghost"+string(rune('a'+i)), "x"); err == nil {
			t.Fatal("unknown user accepted")
		}
	}
	_ = loginFrom(a, "[2001:db8:1:2:ffff::1]:1", "reader", "secret")
	if got := a.Stats().Failures["throttled"]; got != 1 {
		t.Errorf("throttled %d, want 1 (same /64)", got)
	}
	if err := loginFrom(a, "[2001:db8:1:3::1]:1", "reader", "secret"); err != nil {
		t.Errorf("other /64: %v", err)
	}
}

// TestLoginConcurrencyBound (issue 11 item 8): at most max_concurrent
// bcrypt checks run at once; a login waiting for its turn gives up when
// its context ends, with the context's error.
func TestLoginConcurrencyBound(t *testing.T) {
	a, err := NewAuth(authConfig(t, "limits: {login: {max_concurrent: 2, max_failures: 0}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var running, peak atomic.Int64
	a.compare = func(h, p []byte) error {
		n := running.Add(1)
		for {
			if m := peak.Load(); n <= m || peak.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return bcrypt.ErrMismatchedHashAndPassword
	}
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = loginFrom(a, "10.1.0."+string(rune('1'+i))+":1", "dev", "guess")
		}()
	}
	testkit.Wait(t, "two checks running", func() bool { return running.Load() == 2 })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Authenticate(ctx, message.Login{Username: "dev", Password: "x", HasPassword: true}) }()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || !errors.Is(err, message.ErrNotAuthorized) {
			t.Errorf("waiting login ended with %v, want ErrNotAuthorized and context.Canceled", err)
		}
	case <-testkit.After(testkit.DefaultWait):
		t.Fatal("hang guard: a waiting login ignored its context")
	}
	close(release)
	wg.Wait()
	if p := peak.Load(); p != 2 {
		t.Errorf("%d checks ran at once, want max_concurrent 2", p)
	}
}

// TestBcryptCostRange (issue 11 item 12): hash costs outside 10..13 are
// refused by the configuration, by Reload and by HashPassword.
func TestBcryptCostRange(t *testing.T) {
	passwordhash.Floor = MinBcryptCost
	defer func() { passwordhash.Floor = bcrypt.MinCost }()
	for _, tc := range []struct {
		hash string
		want string
	}{
		{hashSecret, "bcrypt cost must be 10..13 (got 4)"},
		{"$2a$14$" + strings.Repeat("a", 53), "bcrypt cost must be 10..13 (got 14)"},
		{"plain", "not a bcrypt hash"},
	} {
		_, err := config.Parse("ferry.yaml", []byte(minimal+"users:\n  - {name: u, password_hash: '"+tc.hash+"'}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "users[0].password_hash: "+tc.want) {
			t.Errorf("hash %.10s…: %v, want %q", tc.hash, err, tc.want)
		}
	}
	if _, err := HashPassword("pw", 4); err == nil {
		t.Error("HashPassword accepted cost 4")
	}
	a := &Auth{}
	c := &config.Config{Users: []config.User{{Name: "u", PasswordHash: hashSecret}}}
	if err := a.Reload(c); err == nil {
		t.Error("Reload accepted cost 4")
	}
}

// TestDummyHashCost: an unknown user is checked against a hash of the
// users' most common cost, so that its answer takes as long as a wrong
// password's.
func TestDummyHashCost(t *testing.T) {
	a, err := NewAuth(authConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := bcrypt.Cost([]byte(hashSecret))
	if got, _ := bcrypt.Cost(a.state.Load().dummy); got != want {
		t.Errorf("dummy hash cost %d, want the users' %d", got, want)
	}
}

// TestCertifiedLogin: a certificate names an existing user (no password);
// an unknown name is refused; a user without password_hash cannot log in
// with a password.
func TestCertifiedLogin(t *testing.T) {
	c := mustParse(t, minimal+`listeners:
  mqtt_tls: {address: "127.0.0.1:8883", tls: {cert_file: c, key_file: k, client_ca_file: ca, username_from: cn}}
users:
  - {name: pump1, publish: ['sensors/%u/#']}
`)
	a, err := NewAuth(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := a.Authenticate(ctx, message.Login{Username: "pump1", Certified: true}); err != nil {
		t.Errorf("certificate user: %v", err)
	}
	if err := a.Authenticate(ctx, message.Login{Username: "pump2", Certified: true}); !errors.Is(err, message.ErrNotAuthorized) {
		t.Errorf("unknown certificate user: %v", err)
	}
	if err := a.Authenticate(ctx, message.Login{Username: "pump1", Password: "", HasPassword: true}); !errors.Is(err, message.ErrNotAuthorized) {
		t.Errorf("password login of a certificate-only user: %v", err)
	}
	// Without a certificate listener, a user needs a password_hash.
	if _, err := config.Parse("ferry.yaml", []byte(minimal+"users:\n  - {name: pump1}\n"), nil); err == nil {
		t.Error("a user without password_hash accepted without certificate logins")
	}
}

// TestWorldReadableKeyWarns (issue 11 item 12): a TLS key file that every
// user can read is accepted with a warning naming the key and the fix, in
// the log of the gateway (and ferry check); a 0600 key gives none.
func TestWorldReadableKeyWarns(t *testing.T) {
	dir := t.TempDir()
	certs := testkit.NewCerts(t, dir)
	if err := os.Chmod(certs.ServerKey, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ferry.yaml")
	y := fmt.Sprintf(`gateway_id: gw1
listeners:
  mqtt: {address: ""}
  stomp: {address: ""}
  http: {address: ""}
  mqtt_tls:
    address: 127.0.0.1:0
    tls:
      cert_file: %s
      key_file: %s
allow_anonymous: true
spool: {path: %s}
bridge: {upstream: embedded, embedded_address: "127.0.0.1:0"}
`, certs.ServerCert, certs.ServerKey, filepath.Join(dir, "spool.db"))
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuf
	g, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	_ = g.Spool().Close()
	want := fmt.Sprintf("%s:10:7: listeners.mqtt_tls.tls.key_file: %s is readable by every user (mode 0644)", path, certs.ServerKey)
	if !strings.Contains(logs.String(), "configuration warning") || !strings.Contains(logs.String(), want) {
		t.Errorf("log %q, want a warning containing %q", logs.String(), want)
	}
	if err := os.Chmod(certs.ServerKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if w := cfg.Warnings(); len(w) != 0 {
		t.Errorf("warnings for a 0600 key: %q", w)
	}
}
