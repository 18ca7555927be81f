package message

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Topic mapping between MQTT and STOMP.
//
// Ferry follows the convention of RabbitMQ's MQTT and STOMP plugins, which
// device and cloud teams already know: the tail of a STOMP destination uses
// '.' as the level separator, so the two characters '/' and '.' swap places.
//
//	MQTT topic            STOMP destination
//	sensors/room1/temp    /topic/sensors.room1.temp
//	a//b   (empty level)  /topic/a..b
//	/a     (leading /)    /topic/.a
//	v1.2/x (dot in level) /topic/v1/2.x
//	a/+/#  (filter)       /topic/a.*.#
//
// Swapping is a bijection, so every topic maps and maps back unchanged, empty
// levels and dots included. Wildcards only appear in subscriptions: MQTT '+'
// is STOMP '*', '#' is '#'.
//
// A destination is /topic/… (publish-subscribe: every subscriber gets each
// message) or /queue/… (competing consumers: each message goes to one
// subscriber). Both name the same topic space, so a SEND to /queue/a.b is
// the MQTT topic a/b and reaches MQTT subscribers of a/b too. Any other
// prefix is ErrUnknownDestination.

// DestKind is the kind of a STOMP destination.
type DestKind uint8

// Destination kinds.
const (
	DestTopic DestKind = iota // /topic/…
	DestQueue                 // /queue/…
)

// Destination prefixes.
const (
	TopicPrefix = "/topic/"
	QueuePrefix = "/queue/"
)

// ErrUnknownDestination is returned for a STOMP destination that is neither
// /topic/… nor /queue/….
var ErrUnknownDestination = errors.New("unknown destination: want /topic/… or /queue/…")

// ErrInvalidTopic is returned (wrapped) for a topic that MQTT would refuse.
var ErrInvalidTopic = errors.New("invalid topic")

// ToSTOMP maps an MQTT topic or filter to a STOMP destination of kind k.
func ToSTOMP(topic string, k DestKind) string {
	p := TopicPrefix
	if k == DestQueue {
		p = QueuePrefix
	}
	return p + swap(topic, "/.", "+", "*")
}

// FromSTOMP maps a STOMP destination to an MQTT topic (or filter, when it has
// wildcards) and its kind. The result is not validated: call ValidateTopic or
// ValidateFilter as the operation requires.
func FromSTOMP(dest string) (string, DestKind, error) {
	var k DestKind
	var tail string
	switch {
	case strings.HasPrefix(dest, TopicPrefix):
		k, tail = DestTopic, dest[len(TopicPrefix):]
	case strings.HasPrefix(dest, QueuePrefix):
		k, tail = DestQueue, dest[len(QueuePrefix):]
	default:
		return "", 0, fmt.Errorf("%w (got %q)", ErrUnknownDestination, dest)
	}
	if tail == "" {
		return "", 0, fmt.Errorf("%w: destination %q has an empty name", ErrInvalidTopic, dest)
	}
	return swap(tail, "./", "*", "+"), k, nil
}

// swap exchanges the two bytes of ab with each other and replaces from with
// to. strings.Replacer applies all pairs in one pass, so a swapped byte is
// never swapped back.
func swap(s, ab, from, to string) string {
	return strings.NewReplacer(ab[:1], ab[1:], ab[1:], ab[:1], from, to).Replace(s)
}

// ValidateTopic checks a topic name for publishing, as MQTT defines it: not
// empty, valid UTF-8 without NUL, at most MaxTopicLen bytes, no wildcards.
func ValidateTopic(topic string) error {
	if err := validateCommon(topic); err != nil {
		return err
	}
	if strings.ContainsAny(topic, "+#") {
		return fmt.Errorf("%w: wildcards are not allowed in a topic name (%q)", ErrInvalidTopic, topic)
	}
	return nil
}

// ValidateFilter checks a topic filter for subscribing: as ValidateTopic, but
// '+' may stand for a whole level and '#' only as the last whole level.
func ValidateFilter(filter string) error {
	if err := validateCommon(filter); err != nil {
		return err
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("%w: '+' must fill a whole level (%q)", ErrInvalidTopic, filter)
		}
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("%w: '#' must be the whole last level (%q)", ErrInvalidTopic, filter)
		}
	}
	return nil
}

func validateCommon(t string) error {
	switch {
	case t == "":
		return fmt.Errorf("%w: empty", ErrInvalidTopic)
	case len(t) > MaxTopicLen:
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidTopic, len(t), MaxTopicLen)
	case !utf8.ValidString(t):
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidTopic)
	case strings.ContainsRune(t, 0):
		return fmt.Errorf("%w: contains NUL", ErrInvalidTopic)
	}
	return nil
}

// Match reports whether topic matches the MQTT filter. Topics starting with
// '$' match only filters that start with the same level ('#' and '+' at the
// first level do not match them, as MQTT specifies).
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			// "a/#" also matches "a": the parent level.
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}
