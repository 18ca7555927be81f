package gateway

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/ferrymq/ferry/gateway/config"
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
	info   []RouteInfo // routes then the default, for the status page
}

type compiledRoute struct {
	filter    string // MQTT filter; "" for the default route
	route     message.Route
	topic     config.Template
	upstreams []string // the route's upstreams (config.MainUpstream first if named)
}

// NewRouter builds a Router from c's routes and default route. c must be
// valid (Validate).
func NewRouter(c *config.Config) (*Router, error) {
	r := &Router{}
	if err := r.Reload(c); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload replaces the rules with c's. On error the old rules stay.
func (r *Router) Reload(c *config.Config) error {
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
		if cr.filter, err = config.RouteFilter(c.Routes[i].Match); err != nil {
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
	for i, cr := range t.routes {
		t.info = append(t.info, RouteInfo{Name: cr.route.Name, Match: c.Routes[i].Match, Priority: cr.route.Priority, LocalOnly: cr.route.LocalOnly})
	}
	t.info = append(t.info, RouteInfo{Name: def.route.Name, Priority: def.route.Priority, LocalOnly: def.route.LocalOnly})
	r.table.Store(t)
	return nil
}

func compileRoute(rc *config.RouteConfig, name, gatewayID string) (compiledRoute, error) {
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
		Name:           name,
		Priority:       uint8(rc.Priority),
		TTL:            rc.TTL.D(),
		Dedupe:         d,
		UpstreamQoS:    byte(rc.UpstreamQoS),
		UpstreamRetain: rc.UpstreamRetain,
		LocalOnly:      rc.LocalOnly,
		QoS0:           rc.QoS0WhenOffline.Message(),
	}, upstreams: slices.Clone(rc.Upstreams)}
	if !rc.LocalOnly {
		if cr.topic, err = config.ParseTemplate(rc.UpstreamTopic, gatewayID); err != nil {
			return compiledRoute{}, fmt.Errorf("upstream_topic: %w", err)
		}
	}
	return cr, nil
}

func (r *Router) match(topic string) *compiledRoute {
	t := r.table.Load()
	for i := range t.routes {
		if message.Match(t.routes[i].filter, topic) {
			return &t.routes[i]
		}
	}
	return &t.def
}

// Upstreams returns the names of the upstreams topic's route sends to, and
// the route's name. The slice is shared: do not modify it.
func (r *Router) Upstreams(topic string) (names []string, route string) {
	cr := r.match(topic)
	return cr.upstreams, cr.route.Name
}

// checkUpstreams returns an error when a route of c names an upstream that
// is not in running.
func checkUpstreams(c *config.Config, running []string) error {
	check := func(name string, rc *config.RouteConfig) error {
		for _, u := range rc.Upstreams {
			if !slices.Contains(running, u) {
				return fmt.Errorf("gateway: route %s: upstream %q is not running (the running ones: %s): adding an upstream needs a restart", name, u, strings.Join(running, ", "))
			}
		}
		return nil
	}
	for i := range c.Routes {
		name := c.Routes[i].Name
		if name == "" {
			name = fmt.Sprintf("routes[%d]", i)
		}
		if !c.Routes[i].LocalOnly {
			if err := check(name, &c.Routes[i]); err != nil {
				return err
			}
		}
	}
	if c.DefaultRoute.LocalOnly {
		return nil
	}
	return check("default", &c.DefaultRoute)
}

// Routes lists the routes in match order, the default route last.
func (r *Router) Routes() []RouteInfo {
	return append([]RouteInfo(nil), r.table.Load().info...)
}

// dedupeReason names a route's dedupe source for the duplicate counts.
func dedupeReason(k message.DedupeKind) string {
	switch k {
	case message.DedupeRetransmit:
		return "retransmit"
	case message.DedupeProperty:
		return "property"
	case message.DedupeJSON:
		return "json"
	case message.DedupeHash:
		return "hash"
	}
	return "none"
}

// Route returns the route of topic (an MQTT topic name) with its upstream
// topic resolved.
func (r *Router) Route(topic string) message.Route {
	cr := r.match(topic)
	rt := cr.route
	if !rt.LocalOnly {
		rt.UpstreamTopic = cr.topic.Render(topic)
	}
	return rt
}
