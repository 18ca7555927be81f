package gateway

import (
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/ferrymq/ferry/protocols/message"
)

// Router is the message.Router built from the configured routes: the first
// route whose filter matches a topic wins, the default route takes the
// rest. Route is lock-free and safe for concurrent use; Reload swaps the
// whole rule set atomically, so a message sees either the old rules or the
// new ones, never a mix.
type Router struct {
	table atomic.Pointer[routeTable]
}

var _ message.Router = (*Router)(nil)

type routeTable struct {
	routes []compiledRoute
	def    compiledRoute
}

type compiledRoute struct {
	filter string // MQTT filter; "" for the default route
	route  message.Route
	topic  template
}

// NewRouter builds a Router from c's routes and default route. c must be
// valid (Validate).
func NewRouter(c *Config) (*Router, error) {
	r := &Router{}
	if err := r.Reload(c); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload replaces the rules with c's. On error the old rules stay.
func (r *Router) Reload(c *Config) error {
	t := &routeTable{routes: make([]compiledRoute, len(c.Routes))}
	for i := range c.Routes {
		name := c.Routes[i].Name
		if name == "" {
			name = fmt.Sprintf("routes[%d]", i)
		}
		cr, err := compileRoute(&c.Routes[i], name, c.GatewayID)
		if err != nil {
			return fmt.Errorf("gateway: route %s: %w", name, err)
		}
		if cr.filter, err = routeFilter(c.Routes[i].Match); err != nil {
			return fmt.Errorf("gateway: route %s: match: %w", name, err)
		}
		t.routes[i] = cr
	}
	name := c.DefaultRoute.Name
	if name == "" {
		name = "default"
	}
	def, err := compileRoute(&c.DefaultRoute, name, c.GatewayID)
	if err != nil {
		return fmt.Errorf("gateway: default route: %w", err)
	}
	t.def = def
	r.table.Store(t)
	return nil
}

func compileRoute(rc *RouteConfig, name, gatewayID string) (compiledRoute, error) {
	d, err := message.ParseDedupe(rc.Dedupe)
	if err != nil {
		return compiledRoute{}, err
	}
	if rc.Priority < 0 || rc.Priority > message.MaxPriority {
		return compiledRoute{}, fmt.Errorf("priority %d out of range", rc.Priority)
	}
	if rc.UpstreamQoS < 0 || rc.UpstreamQoS > 1 {
		return compiledRoute{}, fmt.Errorf("upstream_qos %d out of range", rc.UpstreamQoS)
	}
	cr := compiledRoute{route: message.Route{
		Name:        name,
		Priority:    uint8(rc.Priority),
		TTL:         rc.TTL.D(),
		Dedupe:      d,
		UpstreamQoS: byte(rc.UpstreamQoS),
		LocalOnly:   rc.LocalOnly,
	}}
	if rc.QoS0WhenOffline == "drop" {
		cr.route.QoS0 = message.QoS0Drop
	}
	if !rc.LocalOnly {
		if cr.topic, err = parseTemplate(rc.UpstreamTopic, gatewayID); err != nil {
			return compiledRoute{}, fmt.Errorf("upstream_topic: %w", err)
		}
	}
	return cr, nil
}

// Route returns the route of topic (an MQTT topic name) with its upstream
// topic resolved.
func (r *Router) Route(topic string) message.Route {
	t := r.table.Load()
	cr := &t.def
	for i := range t.routes {
		if message.Match(t.routes[i].filter, topic) {
			cr = &t.routes[i]
			break
		}
	}
	rt := cr.route
	if !rt.LocalOnly {
		rt.UpstreamTopic = cr.topic.render(topic)
	}
	return rt
}

// template is an upstream topic template with {gateway_id} already
// substituted: literal parts with {topic} between them.
type template struct {
	parts []string // len(parts) = number of {topic} + 1
}

// parseTemplate parses an upstream topic template. The placeholders are
// {gateway_id} and {topic} (the message's topic); anything else in braces
// is an error, as is a template that cannot yield a valid topic name.
func parseTemplate(s, gatewayID string) (template, error) {
	if s == "" {
		return template{}, fmt.Errorf("required unless local_only: true (e.g. sites/{gateway_id}/{topic})")
	}
	parts := strings.Split(strings.ReplaceAll(s, "{gateway_id}", gatewayID), "{topic}")
	for _, p := range parts {
		if i := strings.IndexAny(p, "{}"); i >= 0 {
			return template{}, fmt.Errorf("unknown placeholder in %q: only {gateway_id} and {topic}", s)
		}
	}
	t := template{parts: parts}
	if err := message.ValidateTopic(t.render("t")); err != nil {
		return template{}, fmt.Errorf("%q does not yield a valid topic: %w", s, err)
	}
	return t, nil
}

func (t template) render(topic string) string {
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
