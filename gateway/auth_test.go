package gateway

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/message"
)

func authConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	return mustParse(t, minimal+`users:
  - name: dev
    password_hash: '`+hashSecret+`'
    publish: ['sensors/%c/#', 'users/%u/+/state', '$ferry/ping']
    subscribe: ['cmd/%c/#', 'sensors/+/temp', 'fleet/#']
  - name: reader
    password_hash: '`+hashSecret+`'
    subscribe: ['#']
  - name: all
    password_hash: '`+hashSecret+`'
    publish: ['#']
  - name: plus
    password_hash: '`+hashSecret+`'
    publish: ['+/B']
`+extra)
}

func TestAuthenticate(t *testing.T) {
	tests := []struct {
		name      string
		extra     string
		user, pw  string
		hasPW     bool
		wantAllow bool
	}{
		{"right password", "", "dev", "secret", true, true},
		{"wrong password", "", "dev", "Secret", true, false},
		{"no password", "", "dev", "", false, false},
		{"empty password", "", "dev", "", true, false},
		{"unknown user", "", "eve", "secret", true, false},
		{"anonymous refused by default", "", "", "", false, false},
		{"anonymous allowed", "allow_anonymous: true\n", "", "", false, true},
		{"anonymous with a password is a login", "allow_anonymous: true\n", "", "secret", true, false},
		{"unknown user with anonymous allowed", "allow_anonymous: true\n", "eve", "x", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewAuth(authConfig(t, tt.extra))
			if err != nil {
				t.Fatal(err)
			}
			err = authn(a, tt.user, tt.pw, tt.hasPW)
			if tt.wantAllow && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.wantAllow && !errors.Is(err, message.ErrNotAuthorized) {
				t.Fatalf("error = %v, want ErrNotAuthorized", err)
			}
		})
	}
}

func TestACL(t *testing.T) {
	a, err := NewAuth(authConfig(t, "allow_anonymous: true\nanonymous: {publish: ['public/#'], subscribe: []}\n"))
	if err != nil {
		t.Fatal(err)
	}
	pub := []struct {
		user, client, topic string
		want                bool
	}{
		{"dev", "pump1", "sensors/pump1/temp", true},
		{"dev", "pump1", "sensors/pump1", true}, // # includes the parent level
		{"dev", "pump1", "sensors/pump2/temp", false},
		{"dev", "pump1", "users/dev/x/state", true},
		{"dev", "pump1", "users/reader/x/state", false},
		{"dev", "pump1", "users/dev/x/y/state", false},
		{"dev", "pump1", "$ferry/ping", true},
		{"", "anon", "$public/a", false}, // "public/#" names its first level
		{"all", "c", "$TopicA/B", true},  // '#' grants $ topics ...
		{"all", "c", "$TopicA", true},
		{"all", "c", "$SYS/x", false}, // ... except $SYS
		{"all", "c", "$sys/x", false},
		{"plus", "c", "$TopicA/B", true}, // '+/B'
		{"plus", "c", "$TopicA/C", false},
		{"dev", "p/+", "sensors/p/+/x", false}, // a client id with '/' or '+' never widens %c
		{"dev", "p#", "sensors/p#", false},
		{"dev", "", "sensors//x", false},
		{"reader", "c", "anything", false}, // no publish list: nothing
		{"", "anon", "public/a", true},
		{"", "anon", "private/a", false},
		{"ghost", "c", "public/a", false}, // unknown users get nothing, not the anonymous rights
	}
	for _, tt := range pub {
		if got := a.CanPublish(tt.user, tt.client, tt.topic); got != tt.want {
			t.Errorf("CanPublish(%q, %q, %q) = %v, want %v", tt.user, tt.client, tt.topic, got, tt.want)
		}
	}
	sub := []struct {
		user, client, filter string
		want                 bool
	}{
		{"dev", "pump1", "cmd/pump1/#", true},
		{"dev", "pump1", "cmd/pump1/reboot", true},
		{"dev", "pump1", "cmd/pump1", true},
		{"dev", "pump1", "cmd/+/reboot", false},
		{"dev", "pump1", "cmd/#", false},
		{"dev", "pump1", "sensors/+/temp", true},
		{"dev", "pump1", "sensors/a/temp", true},
		{"dev", "pump1", "sensors/#", false},
		{"dev", "pump1", "sensors/+/+", false},
		{"dev", "pump1", "fleet/+/x/#", true},
		{"dev", "pump1", "#", false},
		{"reader", "c", "#", true},
		{"reader", "c", "a/+/b", true},
		{"reader", "c", "$SYS/#", false}, // '#' does not cover $SYS
		{"reader", "c", "$sys/x", false},
		{"reader", "c", "$TopicA/#", true}, // but other $ topics (aclMatch)
		{"reader", "c", "$TopicA/B", true},
		{"", "anon", "public/#", false},
	}
	for _, tt := range sub {
		if got := a.CanSubscribe(tt.user, tt.client, tt.filter); got != tt.want {
			t.Errorf("CanSubscribe(%q, %q, %q) = %v, want %v", tt.user, tt.client, tt.filter, got, tt.want)
		}
	}
}

// TestCovers checks covers against message.Match on concrete topics: when
// covers(acl, sub) holds, every sample topic matched by sub is matched by
// acl.
func TestCovers(t *testing.T) {
	filters := []string{"#", "+", "a", "a/#", "a/+", "a/b", "a/+/c", "+/b", "+/+", "a/b/#", "+/#", "$SYS/#", "$SYS/+", "a/+/#",
		"$a/#", "$a/b", "+/b/#", "$sys/#"}
	topics := []string{"a", "b", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "a/b/c/d", "$SYS/x", "$SYS", "/a", "a/",
		"$a", "$a/b", "$a/b/c", "$sys/x", "$b/b"}
	for _, acl := range filters {
		for _, sub := range filters {
			if !covers(acl, sub) {
				continue
			}
			for _, topic := range topics {
				if message.Match(sub, topic) && !aclMatch(acl, topic) {
					t.Errorf("covers(%q, %q) but %q matches the subscription and not the ACL", acl, sub, topic)
				}
			}
		}
		if !covers(acl, acl) {
			t.Errorf("covers(%q, %q) = false", acl, acl)
		}
	}
}

func TestAuthReload(t *testing.T) {
	c := authConfig(t, "")
	a, err := NewAuth(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := authn(a, "dev", "secret", true); err != nil {
		t.Fatal(err) // and now cached
	}
	newHash, err := HashPassword("changed", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	c2 := authConfig(t, "allow_anonymous: true\n")
	c2.Users[0].PasswordHash = newHash
	c2.Users[0].Publish = []string{"other/#"}
	if err := a.Reload(c2); err != nil {
		t.Fatal(err)
	}
	if err := authn(a, "dev", "secret", true); err == nil {
		t.Fatal("old password still accepted after reload (cache not keyed by hash)")
	}
	if err := authn(a, "dev", "changed", true); err != nil {
		t.Fatal(err)
	}
	if a.CanPublish("dev", "pump1", "sensors/pump1/t") || !a.CanPublish("dev", "pump1", "other/x") {
		t.Fatal("ACL not reloaded")
	}
	if err := authn(a, "", "", false); err != nil {
		t.Fatal("allow_anonymous not reloaded")
	}
	bad := authConfig(t, "")
	bad.Users[0].PasswordHash = "nope"
	if err := a.Reload(bad); err == nil {
		t.Fatal("Reload accepted a bad hash")
	}
	if err := authn(a, "", "", false); err != nil {
		t.Fatal("failed reload changed the rules")
	}
}

func TestAuthCache(t *testing.T) {
	a, err := NewAuth(authConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := authn(a, "dev", "wrong", true); err == nil {
		t.Fatal("wrong password accepted")
	}
	if n := len(a.cache); n != 0 {
		t.Fatalf("a failed check was cached (%d entries)", n)
	}
	if err := authn(a, "dev", "secret", true); err != nil {
		t.Fatal(err)
	}
	if n := len(a.cache); n != 1 {
		t.Fatalf("cache holds %d entries after one login, want 1", n)
	}
	// The cache entry binds user, password and hash: a wrong password
	// for the same user is still refused.
	if err := authn(a, "dev", "secretX", true); err == nil {
		t.Fatal("wrong password accepted with a cached login")
	}
	for i := range authCacheSize + 10 {
		a.remember(a.cacheKey("u", string(rune(i)), []byte(hashSecret)))
	}
	if n := len(a.cache); n != authCacheSize {
		t.Fatalf("cache holds %d entries, bound %d", n, authCacheSize)
	}
}

func TestAuthConcurrent(t *testing.T) {
	a, err := NewAuth(authConfig(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := authn(a, "dev", "secret", true); err != nil {
					t.Error(err)
					return
				}
				_ = a.CanPublish("dev", "c", "sensors/c/x")
				if i == 0 {
					_ = a.Reload(authConfig(t, ""))
				}
			}
		}()
	}
	wg.Wait()
}

func TestHashPassword(t *testing.T) {
	h, err := HashPassword("pw", bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if bcrypt.CompareHashAndPassword([]byte(h), []byte("pw")) != nil {
		t.Fatal("hash does not verify")
	}
	if _, err := HashPassword("pw", 99); err == nil {
		t.Fatal("cost 99 accepted")
	}
	h, err = HashPassword("pw", 0)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := bcrypt.Cost([]byte(h)); c != DefaultBcryptCost {
		t.Fatalf("cost = %d", c)
	}
}

// authn is a password login from no particular address.
func authn(a *Auth, user, password string, hasPassword bool) error {
	return a.Authenticate(context.Background(), message.Login{Username: user, Password: password, HasPassword: hasPassword})
}

// TestDevConfigDollarTopics: configs/dev.yaml's anonymous rights accept a
// publish to a $ topic other than $SYS (mosquitto does), and still refuse
// $SYS.
func TestDevConfigDollarTopics(t *testing.T) {
	data, err := os.ReadFile("../configs/dev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("dev.yaml", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !a.CanPublish("", "c", "$TopicA/B") || !a.CanSubscribe("", "c", "$TopicA/#") {
		t.Error("dev.yaml: anonymous may not use $TopicA/B")
	}
	if a.CanPublish("", "c", "$SYS/x") || a.CanSubscribe("", "c", "$SYS/#") {
		t.Error("dev.yaml: anonymous may use $SYS")
	}
}
