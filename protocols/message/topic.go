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
// Swapping is a bijection, so every topic name maps and maps back unchanged,
// empty levels, dots and asterisks included. Wildcards only appear in
// subscriptions (FilterToSTOMP, FilterFromSTOMP): a whole-level MQTT '+' is
// STOMP '*', '#' is '#'.
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

// ToSTOMP maps an MQTT topic name to a STOMP destination of kind k. It is
// the exact inverse of FromSTOMP.
func ToSTOMP(topic string, k DestKind) string {
	return prefix(k) + swapper.Replace(topic)
}

// FromSTOMP maps a STOMP destination (a SEND's, or a MESSAGE's) to an MQTT
// topic name and its kind. The result is not validated: call ValidateTopic.
func FromSTOMP(dest string) (string, DestKind, error) {
	k, tail, err := splitDest(dest)
	if err != nil {
		return "", 0, err
	}
	return swapper.Replace(tail), k, nil
}

// FilterToSTOMP maps an MQTT topic filter to a STOMP subscription
// destination: a whole-level '+' becomes '*'.
func FilterToSTOMP(filter string, k DestKind) string {
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if l == "+" {
			levels[i] = "*"
		} else {
			levels[i] = swapper.Replace(l)
		}
	}
	return prefix(k) + strings.Join(levels, ".")
}

// FilterFromSTOMP maps a SUBSCRIBE destination to an MQTT topic filter: a
// whole-level '*' is the single-level wildcard '+', '#' stays '#'. (So a
// subscription cannot name a level that is literally "*"; a SEND can.) The
// result is not validated: call ValidateFilter.
func FilterFromSTOMP(dest string) (string, DestKind, error) {
	k, tail, err := splitDest(dest)
	if err != nil {
		return "", 0, err
	}
	levels := strings.Split(tail, ".")
	for i, l := range levels {
		if l == "*" {
			levels[i] = "+"
		} else {
			levels[i] = swapper.Replace(l)
		}
	}
	return strings.Join(levels, "/"), k, nil
}

func prefix(k DestKind) string {
	if k == DestQueue {
		return QueuePrefix
	}
	return TopicPrefix
}

func splitDest(dest string) (DestKind, string, error) {
	var k DestKind
	var tail string
	switch {
	case strings.HasPrefix(dest, TopicPrefix):
		k, tail = DestTopic, dest[len(TopicPrefix):]
	case strings.HasPrefix(dest, QueuePrefix):
		k, tail = DestQueue, dest[len(QueuePrefix):]
	default:
		return 0, "", fmt.Errorf("%w (got %q)", ErrUnknownDestination, dest)
	}
	if tail == "" {
		return 0, "", fmt.Errorf("%w: destination %q has an empty name", ErrInvalidTopic, dest)
	}
	return k, tail, nil
}

// swapper exchanges '/' and '.'. strings.Replacer applies all pairs in one
// pass, so a swapped byte is never swapped back.
var swapper = strings.NewReplacer("/", ".", ".", "/")

// ValidateTopic checks a topic name for publishing: not empty, at most
// MaxTopicLen bytes, no wildcards, well-formed UTF-8 without NUL (MQTT's
// MUSTs, [MQTT-1.5.3-1] and -2), and none of the code points MQTT 3.1.1
// §1.5.3 says a string SHOULD NOT hold and a receiver MAY close the
// connection for: the control characters U+0001–U+001F and U+007F–U+009F
// and the Unicode non-characters (U+FDD0–U+FDEF and the last two code points
// of every plane, U+FFFE, U+FFFF, U+1FFFE … U+10FFFF). Mosquitto (2.0.11,
// checked) closes the connection of a client that publishes any of them, so
// a gateway that spooled one would take its own uplink down each time it
// tried to forward it.
//
// The number of levels is not limited here: brokers differ (mosquitto takes
// at most 201, AWS IoT Core 8), so that limit is configuration.
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
	}
	for i, r := range t {
		switch {
		case r == utf8.RuneError && isRuneError(t[i:]):
			return fmt.Errorf("%w: not valid UTF-8 (byte %d)", ErrInvalidTopic, i)
		case r == 0:
			return fmt.Errorf("%w: contains NUL (byte %d)", ErrInvalidTopic, i)
		case r <= 0x1f || (r >= 0x7f && r <= 0x9f):
			return fmt.Errorf("%w: contains control character %U (byte %d), which MQTT brokers may refuse", ErrInvalidTopic, r, i)
		case isNonCharacter(r):
			return fmt.Errorf("%w: contains Unicode non-character %U (byte %d), which MQTT brokers may refuse", ErrInvalidTopic, r, i)
		}
	}
	return nil
}

// isRuneError tells a real U+FFFD in s (fine) from an invalid byte, both of
// which range decodes as utf8.RuneError.
func isRuneError(s string) bool {
	_, n := utf8.DecodeRuneInString(s)
	return n == 1
}

// isNonCharacter reports the 66 Unicode non-characters: U+FDD0–U+FDEF and
// U+nFFFE, U+nFFFF of each of the 17 planes.
func isNonCharacter(r rune) bool {
	return (r >= 0xfdd0 && r <= 0xfdef) || r&0xfffe == 0xfffe
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
