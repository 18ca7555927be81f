package bridge

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferrymq/ferry/protocols/message"
)

// DownstreamRoute maps upstream topics to local ones, like the local and
// remote prefixes of a Mosquitto bridge but by wildcard position: Remote is
// the filter subscribed upstream; Local is the local topic pattern, with
// the same wildcards (+ and #) in the same order. Each wildcard of Local
// receives the levels its counterpart in Remote matched; the literal levels
// around them are rewritten. So remote cmd/pi-lab/# with local cmd/# turns
// cmd/pi-lab/pump1/valve into cmd/pump1/valve, and remote
// c/+/set/# with local dev/+/# turns c/a/set/x/y into dev/a/x/y. A # that
// matched no level (cmd/pi-lab for cmd/pi-lab/#) drops its level and the
// slash before it: cmd. Empty Local means Local = Remote (topics unchanged).
type DownstreamRoute struct {
	Remote string // upstream filter; {gateway_id} is resolved
	Local  string // local pattern; {gateway_id} is resolved; "" = Remote
	// TTL: a command not delivered locally this long after it arrived is
	// dead-lettered; 0: kept until delivered (a message expiry set by the
	// sender, where the upstream carries one, is kept when sooner).
	TTL time.Duration
}

// compiledRoute is a DownstreamRoute ready to map topics.
type compiledRoute struct {
	remote, local []string // levels
	filter        string
	ttl           time.Duration
}

// CheckDownstreamRoute checks one route whose {gateway_id} is resolved
// (see Expand). field names what is wrong: "remote", "local" or "ttl".
func CheckDownstreamRoute(r DownstreamRoute) (field string, err error) {
	if _, err := compileRoute(r); err != nil {
		var re *routeError
		if errors.As(err, &re) {
			return re.field, re.err
		}
		return "", err
	}
	return "", nil
}

// routeError names the field of a route a problem is about.
type routeError struct {
	field string
	err   error
}

func (e *routeError) Error() string { return e.field + ": " + e.err.Error() }
func (e *routeError) Unwrap() error { return e.err }

func compileRoute(r DownstreamRoute) (compiledRoute, error) {
	if r.Remote == "" {
		return compiledRoute{}, &routeError{"remote", errors.New("required")}
	}
	if err := message.ValidateFilter(r.Remote); err != nil {
		return compiledRoute{}, &routeError{"remote", err}
	}
	if strings.ContainsAny(r.Remote, "{}") {
		return compiledRoute{}, &routeError{"remote", fmt.Errorf("unknown placeholder: only {gateway_id} (got %q)", r.Remote)}
	}
	local := r.Local
	if local == "" {
		local = r.Remote
	}
	if strings.ContainsAny(local, "{}") {
		return compiledRoute{}, &routeError{"local", fmt.Errorf("unknown placeholder: only {gateway_id} (got %q)", r.Local)}
	}
	if err := message.ValidateFilter(local); err != nil {
		return compiledRoute{}, &routeError{"local", err}
	}
	if strings.HasPrefix(local, "$") {
		return compiledRoute{}, &routeError{"local", fmt.Errorf("must not start with $ (got %q)", local)}
	}
	if w, l := wildcards(r.Remote), wildcards(local); w != l {
		return compiledRoute{}, &routeError{"local", fmt.Errorf("must have the wildcards of remote %q in the same order (%q has %q, remote %q)", r.Remote, local, l, w)}
	}
	if r.TTL < 0 {
		return compiledRoute{}, &routeError{"ttl", fmt.Errorf("must not be negative (got %s)", r.TTL)}
	}
	return compiledRoute{remote: strings.Split(r.Remote, "/"), local: strings.Split(local, "/"), filter: r.Remote, ttl: r.TTL}, nil
}

// wildcards returns the sequence of wildcard levels of a filter: "+#".
func wildcards(filter string) string {
	var b strings.Builder
	for _, l := range strings.Split(filter, "/") {
		if l == "+" || l == "#" {
			b.WriteString(l)
		}
	}
	return b.String()
}

// mapTopic returns the local topic of an upstream topic, and whether the
// route's remote filter matches it. err is set when the remote filter
// matches but the mapping gives no valid local topic: a + that caught an
// empty level as the whole local topic (c/+ → + for "c/"), a # that caught
// nothing as the whole local topic, a caught level that puts $ first, or
// literal levels that make the topic too long.
func (r *compiledRoute) mapTopic(topic string) (string, bool, error) {
	if !message.Match(r.filter, topic) {
		return "", false, nil
	}
	levels := strings.Split(topic, "/")
	// What each wildcard of remote matched, in order.
	var caught [][]string
	for i, l := range r.remote {
		switch l {
		case "+":
			caught = append(caught, levels[i:i+1])
		case "#":
			if i < len(levels) {
				caught = append(caught, levels[i:])
			} else {
				caught = append(caught, nil) // a/# matching a
			}
		}
	}
	out := make([]string, 0, len(levels)+len(r.local))
	w := 0
	for _, l := range r.local {
		switch l {
		case "+", "#":
			out = append(out, caught[w]...)
			w++
		default:
			out = append(out, l)
		}
	}
	local := strings.Join(out, "/")
	if err := message.ValidateTopic(local); err != nil {
		return "", true, fmt.Errorf("route %s → %s maps %q to no valid local topic: %w", r.filter, strings.Join(r.local, "/"), topic, err)
	}
	if strings.HasPrefix(local, "$") {
		return "", true, fmt.Errorf("route %s → %s maps %q to %q: %w: a local topic must not start with $", r.filter, strings.Join(r.local, "/"), topic, local, message.ErrInvalidTopic)
	}
	return local, true, nil
}

// downstreamRoutes picks the first route whose remote filter matches.
type downstreamRoutes []compiledRoute

func compileRoutes(routes []DownstreamRoute) (downstreamRoutes, error) {
	out := make(downstreamRoutes, len(routes))
	for i, r := range routes {
		c, err := compileRoute(r)
		if err != nil {
			return nil, fmt.Errorf("downstream[%d].%w", i, err)
		}
		out[i] = c
	}
	return out, nil
}

// lookup returns the local topic and the TTL of the first matching route;
// err when that route maps the topic to no valid local topic.
func (rs downstreamRoutes) lookup(topic string) (local string, ttl time.Duration, ok bool, err error) {
	for i := range rs {
		if l, ok, err := rs[i].mapTopic(topic); ok {
			return l, rs[i].ttl, true, err
		}
	}
	return "", 0, false, nil
}

// filters returns the remote filters, once each.
func (rs downstreamRoutes) filters() []string {
	seen := make(map[string]bool, len(rs))
	var out []string
	for _, r := range rs {
		if !seen[r.filter] {
			seen[r.filter] = true
			out = append(out, r.filter)
		}
	}
	return out
}
