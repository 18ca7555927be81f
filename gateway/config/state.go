package config

import (
	"github.com/ferrymq/ferry/protocols/mqtt"
)

// StateConfig is the local MQTT state kept across restarts: retained
// messages and persistent sessions, in the spool's file (docs/operations.md,
// "Local state"). Each cap has a metric when it is hit.
type StateConfig struct {
	// Persist keeps retained messages and persistent sessions in the
	// spool; false: in memory only, lost at a restart. Default true.
	Persist            bool     `yaml:"persist"`
	MaxRetainedBytes   ByteSize `yaml:"max_retained_bytes"`   // retained messages, all topics; default 64MiB
	MaxSessions        int      `yaml:"max_sessions"`         // persistent sessions; default 1000
	MaxSessionMessages int      `yaml:"max_session_messages"` // QoS 1/2 messages queued for one session; default 1000
	MaxSessionBytes    ByteSize `yaml:"max_session_bytes"`    // their bytes; default 8MiB
}

func defaultState() StateConfig {
	return StateConfig{Persist: true, MaxRetainedBytes: mqtt.DefaultMaxRetainedBytes, MaxSessions: mqtt.DefaultMaxSessions,
		MaxSessionMessages: mqtt.DefaultMaxSessionMessages, MaxSessionBytes: mqtt.DefaultMaxSessionBytes}
}

func (c *Config) validateState(v *validator) {
	s := c.State
	if s.MaxRetainedBytes < 1<<10 {
		v.addf("state.max_retained_bytes", "must be at least 1KiB (got %s)", s.MaxRetainedBytes)
	}
	v.intRange("state.max_sessions", s.MaxSessions, 1, 1<<20)
	// mochi keeps at most limits' subscriber queue plus max_inflight
	// deliveries per client; beyond about 65000 packet ids run out.
	v.intRange("state.max_session_messages", s.MaxSessionMessages, 1, 60000)
	if s.MaxSessionBytes < 1<<10 {
		v.addf("state.max_session_bytes", "must be at least 1KiB (got %s)", s.MaxSessionBytes)
	}
}
