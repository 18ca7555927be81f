package config

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ferrymq/ferry/bridge"
)

// DownstreamRoute is one entry of bridge.downstream: commands published
// upstream on Remote (an MQTT filter) are delivered to local subscribers
// under Local, a pattern with the same wildcards in the same order (see
// bridge.DownstreamRoute). A plain string is the shorthand for a route
// whose local topics are the remote ones: downstream: ["cmd/{gateway_id}/#"].
type DownstreamRoute struct {
	Remote string   `yaml:"remote"` // required; template with {gateway_id}
	Local  string   `yaml:"local"`  // default: remote (topics unchanged)
	TTL    Duration `yaml:"ttl"`    // not delivered within this: DLQ; default 0: kept until delivered
}

func (r *DownstreamRoute) setShorthand(s string) error {
	r.Remote = s
	return nil
}

// shorthand is implemented by list elements that are mappings but may also
// be written as a single value (a downstream route as its remote filter).
type shorthand interface {
	setShorthand(s string) error
}

// DownstreamFilters returns the remote filters of bridge.downstream with
// {gateway_id} resolved.
func (c *Config) DownstreamFilters() []string {
	out := make([]string, len(c.Bridge.Downstream))
	for i, r := range c.DownstreamRoutes() {
		out[i] = r.Remote
	}
	return out
}

// DownstreamRoutes returns bridge.downstream for the bridge, with
// {gateway_id} resolved.
func (c *Config) DownstreamRoutes() []bridge.DownstreamRoute {
	out := make([]bridge.DownstreamRoute, len(c.Bridge.Downstream))
	for i, r := range c.Bridge.Downstream {
		out[i] = bridge.DownstreamRoute{Remote: bridge.Expand(r.Remote, c.GatewayID), Local: bridge.Expand(r.Local, c.GatewayID), TTL: r.TTL.D()}
	}
	return out
}

// DownstreamSpoolPath is the file of the downstream lane, next to the
// spool: /var/lib/ferry/spool.db → /var/lib/ferry/spool.downstream.db.
func (c *Config) DownstreamSpoolPath() string {
	p := c.Spool.Path
	ext := filepath.Ext(p)
	return strings.TrimSuffix(p, ext) + ".downstream" + ext
}

func (v *validator) downstream(c *Config) {
	for i, r := range c.DownstreamRoutes() {
		p := fmt.Sprintf("bridge.downstream[%d]", i)
		if field, err := bridge.CheckDownstreamRoute(r); err != nil {
			v.addf(p+"."+field, "%v", err)
		}
	}
	if len(c.Bridge.Downstream) > 0 && c.Spool.DownstreamMaxBytes < 64<<10 {
		v.addf("spool.downstream_max_bytes", "must be at least 64KiB (got %s)", c.Spool.DownstreamMaxBytes)
	}
}
