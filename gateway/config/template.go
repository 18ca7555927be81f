package config

import (
	"fmt"
	"strings"

	"github.com/ferrymq/ferry/protocols/message"
)

// Template is an upstream topic template with {gateway_id} already
// substituted: literal parts with {topic} between them.
type Template struct {
	parts []string // len(parts) = number of {topic} + 1
}

// ParseTemplate parses an upstream topic template. The placeholders are
// {gateway_id} and {topic} (the message's topic); anything else in braces
// is an error, as is a template that cannot yield a valid topic name.
func ParseTemplate(s, gatewayID string) (Template, error) {
	if s == "" {
		return Template{}, fmt.Errorf("required unless local_only: true (e.g. sites/{gateway_id}/{topic})")
	}
	parts := strings.Split(strings.ReplaceAll(s, "{gateway_id}", gatewayID), "{topic}")
	for _, p := range parts {
		if i := strings.IndexAny(p, "{}"); i >= 0 {
			return Template{}, fmt.Errorf("unknown placeholder in %q: only {gateway_id} and {topic}", s)
		}
	}
	t := Template{parts: parts}
	if err := message.ValidateTopic(t.Render("t")); err != nil {
		return Template{}, fmt.Errorf("%q does not yield a valid topic: %w", s, err)
	}
	return t, nil
}

// Render returns the upstream topic of topic.
func (t Template) Render(topic string) string {
	if len(t.parts) == 1 {
		return t.parts[0]
	}
	n := len(topic) * (len(t.parts) - 1)
	for _, p := range t.parts {
		n += len(p)
	}
	var b strings.Builder
	b.Grow(n)
	for i, p := range t.parts {
		if i > 0 {
			b.WriteString(topic)
		}
		b.WriteString(p)
	}
	return b.String()
}

// RouteFilter returns the MQTT filter of a route's match: a STOMP
// destination is mapped with message.FilterFromSTOMP.
func RouteFilter(match string) (string, error) {
	f := match
	if strings.HasPrefix(match, message.TopicPrefix) || strings.HasPrefix(match, message.QueuePrefix) {
		var err error
		if f, _, err = message.FilterFromSTOMP(match); err != nil {
			return "", err
		}
	}
	if err := message.ValidateFilter(f); err != nil {
		return "", err
	}
	return f, nil
}
