package config

import (
	"fmt"
	"net"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// HTTPListener is the listener of /metrics, /healthz, /readyz, the status
// page and the API (/api/status, /api/spool/…).
type HTTPListener struct {
	Address string `yaml:"address"` // host:port; "" disables
	// Hosts are more names the listener answers to in the Host header,
	// besides loopback names, IP addresses, the host of Address and the
	// machine's host name (with and without ".local"). Requests naming any
	// other host are refused, so that a page whose DNS name was rebound to
	// this gateway cannot read from it.
	Hosts []string `yaml:"hosts"`
	Auth  HTTPAuth `yaml:"auth"`
	// TLS serves HTTPS when cert_file is set; username_from does not apply
	// (the HTTP listener has its own auth).
	TLS ServerTLS `yaml:"tls"`
}

// HTTPAuth is the optional login of the HTTP listener: HTTP Basic with a
// username and a bcrypt password hash, or a bearer token given by its bcrypt
// hash; not both. It protects everything but /healthz and /readyz. It is
// required when the listener is not on loopback.
type HTTPAuth struct {
	Username     string `yaml:"username"`      // basic
	PasswordHash string `yaml:"password_hash"` // basic: bcrypt, from `ferry passwd`
	TokenHash    string `yaml:"token_hash"`    // bearer: bcrypt of the token, from `ferry passwd`
}

// Scheme is "basic", "bearer", or "" when no login is configured.
func (a HTTPAuth) Scheme() string {
	switch {
	case a.TokenHash != "":
		return "bearer"
	case a.Username != "" || a.PasswordHash != "":
		return "basic"
	}
	return ""
}

func (c *Config) validateHTTP(v *validator) {
	h, p := &c.Listeners.HTTP, "listeners.http"
	for i, name := range h.Hosts {
		if err := checkHostName(name); err != nil {
			v.addf(fmt.Sprintf("%s.hosts[%d]", p, i), "%v", err)
		}
	}
	a, ap := &h.Auth, p+".auth"
	basic := a.Username != "" || a.PasswordHash != ""
	switch {
	case basic && a.TokenHash != "":
		v.addf(ap+".token_hash", "set username and password_hash (basic) or token_hash (bearer), not both")
	case basic:
		if a.Username == "" {
			v.addf(ap+".username", "required with password_hash")
		} else if strings.ContainsAny(a.Username, ":\x00") || strings.TrimSpace(a.Username) != a.Username {
			v.addf(ap+".username", "must not contain ':', NUL or surrounding spaces (got %q)", a.Username)
		}
		v.bcryptHash(ap+".password_hash", a.PasswordHash, "with username")
	case a.TokenHash != "":
		v.bcryptHash(ap+".token_hash", a.TokenHash, "")
	}
	if h.Address != "" && checkHostPort(h.Address) == nil && !IsLoopback(h.Address) && a.Scheme() == "" {
		v.addf(p+".address", "listens beyond loopback, where anyone on the network could read dead-lettered payloads: "+
			"set listeners.http.auth (username and password_hash, or token_hash), or listen on 127.0.0.1")
	}
}

func (v *validator) bcryptHash(path, hash, with string) {
	if hash == "" {
		v.addf(path, "required %s: a bcrypt hash (ferry passwd prints one)", with)
		return
	}
	if _, err := bcrypt.Cost([]byte(hash)); err != nil {
		v.addf(path, "not a bcrypt hash (ferry passwd prints one)")
	}
}

// checkHostName accepts a DNS name or an IP address, without a port.
func checkHostName(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if net.ParseIP(s) != nil {
		return nil
	}
	if len(s) > 253 {
		return fmt.Errorf("longer than 253 bytes (got %d)", len(s))
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("want a host name such as gateway.example.net, without port or scheme (got %q)", s)
		}
		if !validID(label) { // letters, digits, - and _
			return fmt.Errorf("want a host name such as gateway.example.net, without port or scheme (got %q)", s)
		}
	}
	return nil
}
