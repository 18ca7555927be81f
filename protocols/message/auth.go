package message

import "context"

// Authorizer decides who may connect, publish and subscribe. One
// implementation (users with bcrypt hashes and per-user topic ACLs, in the
// gateway) serves MQTT and STOMP alike, so a user has the same rights on
// both. Topics and filters are in MQTT form; STOMP maps them first.
// Implementations must be safe for concurrent use and cheap: CanPublish runs
// on every message.
type Authorizer interface {
	// Authenticate checks a login. Anonymous clients pass an empty
	// username and HasPassword false. It may block (a slow password hash,
	// a queue of checks, a delay after failures) until ctx ends. A refusal
	// returns an error wrapping ErrNotAuthorized whose text may be shown to
	// the client.
	Authenticate(ctx context.Context, l Login) error
	// CanPublish reports whether username (as clientID) may publish to topic.
	CanPublish(username, clientID, topic string) bool
	// CanSubscribe reports whether username (as clientID) may subscribe to
	// filter.
	CanSubscribe(username, clientID, filter string) bool
}

// Login is what a client presented to log in.
type Login struct {
	Username    string
	Password    string
	HasPassword bool
	// Certified: Username was taken from the client's TLS certificate,
	// which the listener verified against its client CAs: no password is
	// checked, the user only has to exist.
	Certified bool
	// Remote is the client's address (host:port), by which repeated
	// failures are slowed down; "" when unknown.
	Remote   string
	Protocol Protocol
}

// AllowAll is an Authorizer that lets everyone in and everywhere: for tests
// and for the loopback-only development config.
type AllowAll struct{}

// Authenticate always succeeds.
func (AllowAll) Authenticate(context.Context, Login) error { return nil }

// CanPublish always allows.
func (AllowAll) CanPublish(string, string, string) bool { return true }

// CanSubscribe always allows.
func (AllowAll) CanSubscribe(string, string, string) bool { return true }
