package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/gateway/internal/passwordhash"
	"github.com/ferrymq/ferry/protocols/message"
)

// Auth is the message.Authorizer of the gateway: users with bcrypt password
// hashes (or client certificates) and per-user publish/subscribe ACLs, plus
// anonymous access when the configuration allows it. One Auth serves MQTT
// and STOMP alike.
//
// bcrypt is deliberately slow (tens of milliseconds at cost 10 on a
// Raspberry Pi), and devices reconnect often, so Auth remembers successful
// checks: a bounded set (authCacheSize entries, an arbitrary one forgotten
// when full) of HMAC-SHA256(process-random key, user, password, hash). A
// wrong password is never cached and always costs a full bcrypt. The key is
// random per process, so the set is useless outside it, and the stored hash
// is part of the entry, so a changed password invalidates it on reload.
//
// Password guessing cannot take the CPU: at most limits.login.max_concurrent
// bcrypt checks run at once (the others wait, bounded by the caller's
// context), and each source address (IPv6: its /64) and each username may
// fail limits.login.max_failures times, after which it gets one more attempt
// per failure_interval; attempts beyond that are refused without a check
// (counted as throttled). A throttled user can still log in from an address
// without recent failures, and a login the cache knows is good is never
// throttled, so that guessing a device's password does not lock the device
// out.
//
// Reload swaps users, ACLs and the anonymous policy atomically; checks in
// progress finish with the rules they started with.
type Auth struct {
	state atomic.Pointer[authState]

	key   [32]byte
	mu    sync.Mutex
	cache map[[32]byte]struct{}

	sem      chan struct{} // one token per bcrypt check allowed at once
	throttle *throttle     // nil: off
	stats    [numLoginFailures]atomic.Uint64
	now      func() time.Time
	compare  func(hash, password []byte) error // bcrypt.CompareHashAndPassword; tests count and hold checks
}

var _ message.Authorizer = (*Auth)(nil)

// authCacheSize bounds the cache of successful password checks.
const authCacheSize = 1024

// DefaultBcryptCost, MinBcryptCost and MaxBcryptCost are the cost of a new
// hash and the bounds of an accepted one (see passwordhash).
const (
	DefaultBcryptCost = passwordhash.DefaultCost
	MinBcryptCost     = passwordhash.MinCost
	MaxBcryptCost     = passwordhash.MaxCost
)

// Login failure reasons, the label values of ferry_login_failures_total.
const (
	LoginBadCredentials = iota // wrong password, unknown user, anonymous not allowed, unknown certificate user
	LoginThrottled             // refused without a check: too many failures from the address or for the user
	numLoginFailures
)

var loginFailureNames = [numLoginFailures]string{"bad_credentials", "throttled"}

// LoginStats counts refused logins by reason (LoginBadCredentials, …).
type LoginStats struct {
	Failures map[string]uint64
}

type authState struct {
	users     map[string]*authUser
	anonymous bool
	anonACL   config.ACL
	dummy     []byte // checked for unknown users: a hash of the users' most common cost
}

type authUser struct {
	hash []byte // nil: certificate logins only
	acl  config.ACL
}

// dummyHashes holds one dummy hash per cost, made on first use: checking an
// unknown user against one costs as much time as a wrong password, so that
// timing does not tell which users exist.
var dummyHashes sync.Map // int → []byte

func dummyHash(cost int) []byte {
	if h, ok := dummyHashes.Load(cost); ok {
		return h.([]byte)
	}
	h, _ := bcrypt.GenerateFromPassword([]byte("ferry-dummy-password"), cost)
	v, _ := dummyHashes.LoadOrStore(cost, h)
	return v.([]byte)
}

// NewAuth builds an Auth from c's users (after LoadUsersFile), anonymous,
// allow_anonymous and limits.login.
func NewAuth(c *config.Config) (*Auth, error) {
	a := &Auth{cache: make(map[[32]byte]struct{}), now: time.Now, compare: bcrypt.CompareHashAndPassword}
	_, _ = rand.Read(a.key[:])
	l := c.Limits.Login
	n := l.MaxConcurrent
	if n <= 0 {
		n = max(1, runtime.GOMAXPROCS(0)/2)
	}
	a.sem = make(chan struct{}, n)
	if l.MaxFailures > 0 && l.FailureInterval > 0 {
		a.throttle = newThrottle(l.MaxFailures, l.FailureInterval.D(), throttleEntries)
	}
	if err := a.Reload(c); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload replaces the users and rules with c's. On error the old ones stay.
func (a *Auth) Reload(c *config.Config) error {
	st := &authState{
		users:     make(map[string]*authUser, len(c.Users)),
		anonymous: c.AllowAnonymous,
		anonACL:   c.Anonymous,
	}
	costs := map[int]int{}
	for _, u := range c.Users {
		if _, dup := st.users[u.Name]; dup {
			return fmt.Errorf("gateway: user %q: defined twice", u.Name)
		}
		au := &authUser{acl: config.ACL{Publish: u.Publish, Subscribe: u.Subscribe}}
		if u.PasswordHash != "" {
			cost, err := passwordhash.Check(u.PasswordHash)
			if err != nil {
				return fmt.Errorf("gateway: user %q: password_hash: %w", u.Name, err)
			}
			costs[cost]++
			au.hash = []byte(u.PasswordHash)
		}
		st.users[u.Name] = au
	}
	cost, most := DefaultBcryptCost, 0
	for c, n := range costs {
		if n > most || n == most && c > cost {
			cost, most = c, n
		}
	}
	st.dummy = dummyHash(cost)
	a.state.Store(st)
	return nil
}

var errBadLogin = fmt.Errorf("%w: bad username or password", message.ErrNotAuthorized)

// Authenticate checks a login. An empty username without a password is an
// anonymous client, let in only when allow_anonymous is true. A certified
// login (the name from a verified client certificate) needs only an
// existing user. Any other refusal wraps message.ErrNotAuthorized and does
// not tell whether the user exists or the attempt was throttled.
func (a *Auth) Authenticate(ctx context.Context, l message.Login) error {
	st := a.state.Load()
	if l.Username == "" && !l.HasPassword && !l.Certified {
		if st.anonymous {
			return nil
		}
		a.stats[LoginBadCredentials].Add(1)
		return fmt.Errorf("%w: anonymous access is not allowed", message.ErrNotAuthorized)
	}
	u, known := st.users[l.Username]
	if l.Certified {
		if !known {
			a.stats[LoginBadCredentials].Add(1)
			return fmt.Errorf("%w: certificate user %q is not configured", message.ErrNotAuthorized, l.Username)
		}
		return nil
	}
	var key [32]byte
	if known && u.hash != nil {
		key = a.cacheKey(l.Username, l.Password, u.hash)
		if a.cached(key) {
			return nil
		}
	}
	addr := sourceKey(l.Remote)
	if a.throttle != nil && !a.throttle.allowed(a.now(), addr, "u:"+l.Username) {
		a.stats[LoginThrottled].Add(1)
		return errBadLogin
	}
	real := known && u.hash != nil && l.HasPassword
	hash := st.dummy
	if real {
		hash = u.hash
	}
	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: login not checked: %w", message.ErrNotAuthorized, context.Cause(ctx))
	}
	err := a.compare(hash, []byte(l.Password))
	<-a.sem
	if err == nil && real {
		a.remember(key)
		return nil
	}
	a.stats[LoginBadCredentials].Add(1)
	if a.throttle != nil {
		a.throttle.failed(a.now(), addr, "u:"+l.Username)
	}
	if err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		return fmt.Errorf("%w: %w", message.ErrNotAuthorized, err)
	}
	return errBadLogin
}

// Stats returns the refused logins by reason.
func (a *Auth) Stats() LoginStats {
	s := LoginStats{Failures: make(map[string]uint64, numLoginFailures)}
	for i := range a.stats {
		s.Failures[loginFailureNames[i]] = a.stats[i].Load()
	}
	return s
}

// sourceKey is the throttling key of a client address: its IP, or the /64
// of an IPv6 address (one host usually has a whole /64). "" when unknown.
func sourceKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		if host == "" {
			return ""
		}
		return "a:" + host
	case ip.To4() != nil:
		return "a:" + ip.To4().String()
	}
	return "a:" + ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
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

// throttleEntries bounds the addresses and users whose failures are
// remembered.
const throttleEntries = 16384

// throttle is a token bucket per key (source address, username) that only
// failures drain: burst failures, then one per interval.
type throttle struct {
	burst    float64
	interval time.Duration
	max      int

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newThrottle(burst int, interval time.Duration, max int) *throttle {
	return &throttle{burst: float64(burst), interval: interval, max: max, buckets: map[string]*bucket{}}
}

// level refills b to now and returns its tokens.
func (t *throttle) level(b *bucket, now time.Time) float64 {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(t.burst, b.tokens+float64(d)/float64(t.interval))
		b.at = now
	}
	return b.tokens
}

// allowed reports whether a login from addr for user may be checked: addr
// has a failure left, and so has user, unless addr has no recent failure
// at all. So guessing one user's password from many addresses is slowed
// down, but cannot lock the user out of an address that behaves.
func (t *throttle) allowed(now time.Time, addr, user string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.buckets[addr]
	switch {
	case a != nil && t.level(a, now) < 1:
		return false
	case a == nil || t.level(a, now) >= t.burst:
		return true // a clean address
	}
	u := t.buckets[user]
	return u == nil || t.level(u, now) >= 1
}

// failed takes one failure from every key.
func (t *throttle) failed(now time.Time, keys ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range keys {
		if k == "" {
			continue
		}
		b := t.buckets[k]
		if b == nil {
			if len(t.buckets) >= t.max {
				t.pruneLocked(now)
			}
			b = &bucket{tokens: t.burst, at: now}
			t.buckets[k] = b
		}
		t.level(b, now)
		b.tokens = max(0, b.tokens-1)
	}
}

// pruneLocked forgets the keys that have all their failures back, or, when
// none has, an arbitrary one.
func (t *throttle) pruneLocked(now time.Time) {
	for k, b := range t.buckets {
		if t.level(b, now) >= t.burst {
			delete(t.buckets, k)
		}
	}
	if len(t.buckets) >= t.max {
		for k := range t.buckets {
			delete(t.buckets, k)
			break
		}
	}
}

func (a *Auth) acl(username string) (config.ACL, bool) {
	st := a.state.Load()
	if username == "" {
		return st.anonACL, st.anonymous
	}
	u, ok := st.users[username]
	if !ok {
		return config.ACL{}, false
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
		if f, ok := substitute(f, username, clientID); ok && aclMatch(f, topic) {
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

// aclMatch reports whether the ACL filter acl grants topic. It is
// message.Match except for $ topics: MQTT-4.7.2-1 keeps them from '#' and
// '+' subscriptions (delivery), which says nothing about rights. In an ACL
// a wildcard first level grants $ topics too, except $SYS (the broker's
// own, which devices may not publish to anyway): an ACL of '#' is "every
// topic", and a client that may publish $TopicA/B by it may also
// subscribe to $TopicA/B by name. $SYS needs a filter that names it.
func aclMatch(acl, topic string) bool {
	if message.Match(acl, topic) {
		return true
	}
	if !strings.HasPrefix(topic, "$") || isSys(topic) || !wildFirst(acl) {
		return false
	}
	// The first level of acl matches any first level: match the rest as
	// for an ordinary topic.
	return message.Match(acl, "_"+topic[1:])
}

// isSys reports whether topic (or filter) is under $SYS, in any case (as
// ingest.CheckTopic refuses it).
func isSys(topic string) bool {
	first, _, _ := strings.Cut(topic, "/")
	return strings.EqualFold(first, "$SYS")
}

// wildFirst reports whether filter's first level is '+' or '#'.
func wildFirst(filter string) bool {
	return strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")
}

// covers reports whether every topic matching filter sub is also granted
// by the ACL filter acl (aclMatch).
func covers(acl, sub string) bool {
	// A first-level wildcard grants no $SYS topic, so it covers no $SYS
	// filter either (see aclMatch).
	if isSys(sub) && wildFirst(acl) {
		return false
	}
	// Every topic has a first level, so "+/#" matches all that "#" does
	// (found by FuzzACLSubscribe; the level walk below would refuse it).
	if sub == "#" && acl == "+/#" {
		return true
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
// 0 means DefaultBcryptCost; others must be MinBcryptCost..MaxBcryptCost.
func HashPassword(password string, cost int) (string, error) {
	if cost == 0 {
		cost = DefaultBcryptCost
	}
	if cost < passwordhash.Floor || cost > MaxBcryptCost {
		return "", fmt.Errorf("gateway: hash password: cost must be %d..%d (got %d)", passwordhash.Floor, MaxBcryptCost, cost)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("gateway: hash password: %w", err)
	}
	return string(h), nil
}
