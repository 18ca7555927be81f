package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ferrymq/ferry/protocols/message"
)

// Reason says why a connection was refused or a message, packet or frame
// was rejected. It is the one vocabulary of ferry_ingress_rejected_total for
// every protocol; its String is the label value.
type Reason uint8

// Reasons.
const (
	ReasonFull          Reason = iota // the spool is at its cap and the policy refused (message.ErrFull)
	ReasonQuota                       // per-client rate, connection cap, message.ErrQuotaExceeded
	ReasonTooLarge                    // packet, frame or message over a size limit
	ReasonInvalidTopic                // topic or destination invalid, too long, too deep, reserved
	ReasonNotAuthorized               // credentials, publish/subscribe ACL, will ACL
	ReasonShuttingDown                // the gateway is stopping
	ReasonTimeout                     // the Sink did not answer within the bounded wait
	ReasonExpired                     // the message expired before it was stored
	ReasonMalformed                   // a packet or frame that does not parse
	ReasonProtocol                    // a valid packet or frame where it is not allowed
	ReasonVersion                     // no protocol version in common
	ReasonReadTimeout                 // a half-sent packet/frame or a missing CONNECT
	ReasonInternal                    // any other Sink error
	NumReasons
)

var reasonNames = [NumReasons]string{
	"full", "quota", "too_large", "invalid_topic", "not_authorized", "shutting_down",
	"timeout", "expired", "malformed", "protocol", "unsupported_version", "read_timeout", "internal",
}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Transient reports whether a refusal for r is about the gateway's state
// rather than the message: the device will send the message again, so the
// messages it sent after it must not be stored before it.
func (r Reason) Transient() bool {
	switch r {
	case ReasonFull, ReasonQuota, ReasonTimeout, ReasonShuttingDown, ReasonInternal:
		return true
	}
	return false
}

// Classify maps a Sink error to its Reason. ctx is the context the Sink was
// called with, base the connection's (cancelled at shutdown).
func Classify(base, ctx context.Context, err error) Reason {
	switch {
	case errors.Is(err, message.ErrFull):
		return ReasonFull
	case errors.Is(err, message.ErrQuotaExceeded):
		return ReasonQuota
	case errors.Is(err, message.ErrTooLarge):
		return ReasonTooLarge
	case errors.Is(err, message.ErrExpired):
		return ReasonExpired
	case errors.Is(err, message.ErrNotAuthorized):
		return ReasonNotAuthorized
	case errors.Is(err, message.ErrInvalidTopic):
		return ReasonInvalidTopic
	case errors.Is(err, message.ErrShuttingDown), base != nil && base.Err() != nil:
		return ReasonShuttingDown
	case errors.Is(err, context.DeadlineExceeded), ctx != nil && ctx.Err() != nil:
		return ReasonTimeout
	}
	return ReasonInternal
}

// CheckTopic checks a topic name a device publishes to, for every
// protocol alike: valid for MQTT (message.ValidateTopic), at most maxLen
// bytes and maxLevels levels (0: no cap), and not under $SYS, which is the
// broker's own.
func CheckTopic(topic string, maxLen, maxLevels int) error {
	if maxLen > 0 && len(topic) > maxLen {
		return fmt.Errorf("%w: %d bytes, more than %d", message.ErrInvalidTopic, len(topic), maxLen)
	}
	if maxLevels > 0 {
		if n := strings.Count(topic, "/") + 1; n > maxLevels {
			return fmt.Errorf("%w: %d levels, more than %d", message.ErrInvalidTopic, n, maxLevels)
		}
	}
	if len(topic) >= len(sysPrefix) && strings.EqualFold(topic[:len(sysPrefix)], sysPrefix) {
		return fmt.Errorf("%w: %s is reserved", message.ErrInvalidTopic, sysPrefix)
	}
	return message.ValidateTopic(topic)
}

const sysPrefix = "$SYS"
