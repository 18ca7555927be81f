package gateway

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry/protocols/message"
)

// Auth is the message.Authorizer of the gateway: users with bcrypt password
// hashes and per-user publish/subscribe ACLs, plus anonymous access when the
// configuration allows it. One Auth serves MQTT and STOMP alike.
//
// bcrypt is deliberately slow (tens of milliseconds at cost 10 on a
// Raspberry Pi), and devices reconnect often, so Auth remembers successful
// checks: a bounded set (authCacheSize entries, an arbitrary one forgotten
// when full) of HMAC-SHA256(process-random key, user, password, hash). A
// wrong password is never cached and always costs a full bcrypt. The key is
// random per process, so the set is useless outside it, and the stored hash
// is part of the entry, so a changed password invalidates it on reload.
//
// Reload swaps users, ACLs and the anonymous policy atomically; checks in
// progress finish with the rules they started with.
type Auth struct {
	state atomic.Pointer[authState]

	key   [32]byte
	mu    sync.Mutex
	cache map[[32]byte]struct{}
}

var _ message.Authorizer = (*Auth)(nil)

// authCacheSize bounds the cache of successful password checks.
const authCacheSize = 1024

// DefaultBcryptCost is the cost HashPassword uses when given 0: bcrypt's
// default, about 50–80 ms per check on a Raspberry Pi 4.
const DefaultBcryptCost = bcrypt.DefaultCost

type authState struct {
	users     map[string]*authUser
	anonymous bool
	anonACL   ACL
}

type authUser struct {
	hash []byte
	acl  ACL
}

// dummyHash is checked against when the user does not exist, so that an
// unknown user costs as much time as a wrong password: it has the default
// cost, which `ferry passwd` uses (a MinCost dummy would answer unknown
// users ~64x faster and so tell which users exist). Made on first use.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("ferry-dummy-password"), DefaultBcryptCost)
	return h
})

// NewAuth builds an Auth from c's users (after LoadUsersFile), anonymous
// and allow_anonymous.
func NewAuth(c *Config) (*Auth, error) {
	a := &Auth{cache: make(map[[32]byte]struct{})}
	_, _ = rand.Read(a.key[:])
	if err := a.Reload(c); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload replaces the users and rules with c's. On error the old ones stay.
func (a *Auth) Reload(c *Config) error {
	st := &authState{
		users:     make(map[string]*authUser, len(c.Users)),
		anonymous: c.AllowAnonymous,
		anonACL:   c.Anonymous,
	}
	for _, u := range c.Users {
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			return fmt.Errorf("gateway: user %q: password_hash: %w", u.Name, err)
		}
		if _, dup := st.users[u.Name]; dup {
			return fmt.Errorf("gateway: user %q: defined twice", u.Name)
		}
		st.users[u.Name] = &authUser{hash: []byte(u.PasswordHash), acl: ACL{Publish: u.Publish, Subscribe: u.Subscribe}}
	}
	a.state.Store(st)
	return nil
}

// Authenticate checks a login. An empty username without a password is an
// anonymous client, let in only when allow_anonymous is true. Any other
// refusal wraps message.ErrNotAuthorized and does not tell whether the user
// exists.
func (a *Auth) Authenticate(username, password string, hasPassword bool) error {
	st := a.state.Load()
	if username == "" && !hasPassword {
		if st.anonymous {
			return nil
		}
		return fmt.Errorf("%w: anonymous access is not allowed", message.ErrNotAuthorized)
	}
	u, ok := st.users[username]
	if !ok || !hasPassword {
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
		return fmt.Errorf("%w: bad username or password", message.ErrNotAuthorized)
	}
	key := a.cacheKey(username, password, u.hash)
	if a.cached(key) {
		return nil
	}
	if err := bcrypt.CompareHashAndPassword(u.hash, []byte(password)); err != nil {
		if errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			return fmt.Errorf("%w: bad username or password", message.ErrNotAuthorized)
		}
		return fmt.Errorf("%w: %w", message.ErrNotAuthorized, err)
	}
	a.remember(key)
	return nil
}

func (a *Auth) cached(key [32]byte) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, hit := a.cache[key]
	return hit
}

// remember adds a successful check, forgetting an arbitrary one (Go's map
// iteration order) when the cache is full.
func (a *Auth) remember(key [32]byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= authCacheSize {
		for k := range a.cache {
			delete(a.cache, k)
			break
		}
	}
	a.cache[key] = struct{}{}
}

func (a *Auth) cacheKey(user, password string, hash []byte) [32]byte {
	m := hmac.New(sha256.New, a.key[:])
	for _, s := range [][]byte{[]byte(user), []byte(password), hash} {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(s)>>24), byte(len(s)>>16), byte(len(s)>>8), byte(len(s))
		m.Write(n[:])
		m.Write(s)
	}
	var k [32]byte
	copy(k[:], m.Sum(nil))
	return k
}

func (a *Auth) acl(username string) (ACL, bool) {
	st := a.state.Load()
	if username == "" {
		return st.anonACL, st.anonymous
	}
	u, ok := st.users[username]
	if !ok {
		return ACL{}, false
	}
	return u.acl, true
}

// CanPublish reports whether username (as clientID) may publish to topic:
// some publish filter of the user, with %u and %c substituted, matches it.
func (a *Auth) CanPublish(username, clientID, topic string) bool {
	acl, ok := a.acl(username)
	if !ok {
		return false
	}
	for _, f := range acl.Publish {
		if f, ok := substitute(f, username, clientID); ok && message.Match(f, topic) {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether username (as clientID) may subscribe to
// filter: some subscribe filter of the user covers every topic the
// requested filter can match (a user allowed "a/+" may subscribe to "a/b"
// and "a/+", not to "a/#").
func (a *Auth) CanSubscribe(username, clientID, filter string) bool {
	acl, ok := a.acl(username)
	if !ok {
		return false
	}
	for _, f := range acl.Subscribe {
		if f, ok := substitute(f, username, clientID); ok && covers(f, filter) {
			return true
		}
	}
	return false
}

// substitute replaces %u and %c in an ACL filter. A name that is empty or
// contains a topic separator or wildcard would widen the filter, so the
// filter then matches nothing (ok false).
func substitute(f, username, clientID string) (string, bool) {
	if !strings.Contains(f, "%") {
		return f, true
	}
	if strings.Contains(f, "%u") && !safeLevel(username) || strings.Contains(f, "%c") && !safeLevel(clientID) {
		return "", false
	}
	return strings.NewReplacer("%u", username, "%c", clientID).Replace(f), true
}

func safeLevel(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00")
}

// covers reports whether every topic matching filter sub also matches the
// ACL filter acl.
func covers(acl, sub string) bool {
	// A first-level wildcard never matches $ topics, so it covers no $
	// filter either.
	if strings.HasPrefix(sub, "$") && (strings.HasPrefix(acl, "+") || strings.HasPrefix(acl, "#")) {
		return false
	}
	for {
		a, arest, amore := strings.Cut(acl, "/")
		if a == "#" {
			return true
		}
		s, srest, smore := strings.Cut(sub, "/")
		switch {
		case s == "#":
			return false // acl level is not #
		case a == "+":
			// covers any single level, literal or +
		case s == "+" || a != s:
			return false
		}
		if !amore || !smore {
			// sub ends where acl ends, or acl continues with "#" only,
			// which also matches the parent level.
			return amore == smore || (amore && arest == "#")
		}
		acl, sub = arest, srest
	}
}

// HashPassword returns the bcrypt hash of password for a users entry. cost
// 0 means DefaultBcryptCost.
func HashPassword(password string, cost int) (string, error) {
	if cost == 0 {
		cost = DefaultBcryptCost
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("gateway: hash password: %w", err)
	}
	return string(h), nil
}
