package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry/gateway/config"
)

// Who may use the HTTP listener, and how a web page is kept out.
//
// A browser on the operator's machine is the attacker's way in: any page it
// shows may send requests to 127.0.0.1:8080. Three rules keep such pages
// from changing or reading anything:
//
//   - Host names. Every request must name this gateway in its Host header:
//     an IP address, localhost, the host of listeners.http.address, the
//     machine's host name (also with ".local") or one of listeners.http.hosts.
//     A DNS-rebinding page (its own name, re-pointed at 127.0.0.1) sends its
//     own name and gets 421.
//   - Changes are not simple requests. Every POST under /api/spool/ needs
//     the AdminHeader, which a page cannot send to another origin without a
//     CORS preflight the gateway never approves; and the Origin /
//     Sec-Fetch-Site headers browsers send must say same-origin
//     (http.CrossOriginProtection). Changes come from loopback clients, or
//     from any client that logged in, and each one is logged.
//   - Login. With listeners.http.auth set, every path but /healthz and
//     /readyz needs HTTP Basic or a bearer token. Validate requires it when
//     the listener is not on loopback.

// AdminHeader must be present (any value, which is logged as the client)
// on every request that changes the spool. `ferry spool` sends
// "ferry/<version>".
const AdminHeader = "Ferry-Admin"

// httpGuard checks the Host header and the login of every request, then
// passes it to next.
type httpGuard struct {
	next    http.Handler
	hosts   map[string]bool // lower case, without a trailing dot
	login   *httpLogin      // nil: no login configured
	log     *slog.Logger
	refused atomic.Uint64
	logSome rate.Sometimes // refusals are logged at most about once a second
}

type ctxKey int

const userKey ctxKey = 0

func newHTTPGuard(l config.HTTPListener, log *slog.Logger) *httpGuard {
	g := &httpGuard{hosts: map[string]bool{}, log: log, logSome: rate.Sometimes{First: 5, Interval: time.Second}}
	if host, _, err := net.SplitHostPort(l.Address); err == nil && host != "" {
		g.hosts[normHost(host)] = true
	}
	if hn, err := os.Hostname(); err == nil && hn != "" {
		hn = normHost(hn)
		g.hosts[hn] = true
		g.hosts[strings.TrimSuffix(hn, ".local")+".local"] = true
	}
	for _, h := range l.Hosts {
		g.hosts[normHost(h)] = true
	}
	if l.Auth.Scheme() != "" {
		g.login = newHTTPLogin(l.Auth)
	}
	return g
}

func normHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")), ".")
}

// hostAllowed reports whether a Host header names this gateway. IP
// addresses are always allowed: a rebinding attack needs a DNS name, and a
// browser that sends an IP address connected to that address. An empty
// Host (HTTP/1.0) is not a browser.
func (g *httpGuard) hostAllowed(hostport string) bool {
	if hostport == "" {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = normHost(host)
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	// Browsers resolve localhost and its subdomains to loopback themselves
	// (RFC 6761), never through DNS.
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	return g.hosts[host]
}

func (g *httpGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !g.hostAllowed(r.Host) {
		g.refuse(w, r, http.StatusMisdirectedRequest, "host",
			"Host "+r.Host+" is not a name of this gateway: add it to listeners.http.hosts")
		return
	}
	if g.login != nil && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" {
		user, ok := g.login.check(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", g.login.challenge())
			g.refuse(w, r, http.StatusUnauthorized, "login",
				"login required (listeners.http.auth, "+g.login.scheme+")")
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), userKey, user))
	}
	g.next.ServeHTTP(w, r)
}

// refuse answers with code and logs (rate-limited) what was refused.
func (g *httpGuard) refuse(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	n := g.refused.Add(1)
	g.logSome.Do(func() {
		g.log.Warn("http request refused", "reason", reason, "remote", r.RemoteAddr, "method", r.Method,
			"path", r.URL.Path, "host", r.Host, "origin", r.Header.Get("Origin"), "refused_total", n)
	})
	w.Header().Set("X-Content-Type-Options", "nosniff")
	http.Error(w, msg, code)
}

// user returns the login of r (set by the guard), "" without one.
func httpUser(r *http.Request) string {
	u, _ := r.Context().Value(userKey).(string)
	return u
}

// httpLogin checks HTTP Basic or bearer credentials against a bcrypt hash.
// A bcrypt check costs tens of milliseconds on a Pi, and the status page
// polls, so a credential that passed is remembered (as an HMAC under a
// process-random key); a wrong one always costs a full check, one at a time,
// so that a flood of bad logins takes at most one core.
type httpLogin struct {
	scheme string // "basic" | "bearer"
	user   string // basic: the username; bearer: "token"
	hash   []byte
	key    [32]byte
	slot   chan struct{}
	ok     atomic.Pointer[[32]byte]
}

func newHTTPLogin(a config.HTTPAuth) *httpLogin {
	l := &httpLogin{scheme: a.Scheme(), user: a.Username, hash: []byte(a.PasswordHash), slot: make(chan struct{}, 1)}
	if l.scheme == "bearer" {
		l.user, l.hash = "token", []byte(a.TokenHash)
	}
	_, _ = rand.Read(l.key[:])
	return l
}

func (l *httpLogin) challenge() string {
	if l.scheme == "bearer" {
		return `Bearer realm="ferry"`
	}
	return `Basic realm="ferry", charset="UTF-8"`
}

// check returns the user name of a request whose credentials pass.
func (l *httpLogin) check(r *http.Request) (string, bool) {
	var user, secret string
	if l.scheme == "basic" {
		u, p, ok := r.BasicAuth()
		if !ok {
			return "", false
		}
		user, secret = u, p
	} else {
		scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", false
		}
		user, secret = l.user, strings.TrimSpace(tok)
	}
	m := hmac.New(sha256.New, l.key[:])
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(secret))
	var d [32]byte
	copy(d[:], m.Sum(nil))
	if p := l.ok.Load(); p != nil && hmac.Equal(p[:], d[:]) {
		return user, true
	}
	select {
	case l.slot <- struct{}{}:
	case <-r.Context().Done():
		return "", false
	}
	defer func() { <-l.slot }()
	// The hash is checked whatever the username, so that a wrong name
	// costs as much as a wrong password.
	err := bcrypt.CompareHashAndPassword(l.hash, []byte(secret))
	if err != nil || subtle.ConstantTimeCompare([]byte(user), []byte(l.user)) != 1 {
		return "", false
	}
	l.ok.Store(&d)
	return user, true
}
