package config

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/ferrymq/ferry/bridge"
	"github.com/ferrymq/ferry/spool"
)

// MainUpstream is the name of the upstream of the bridge section, in a
// route's upstreams and in the per-upstream metrics.
const MainUpstream = "main"

// UpstreamConfig is one further upstream (the upstreams list): a bridge of
// its own with a spool file of its own (UpstreamSpoolPath). A message of a
// route that names several upstreams is stored once per upstream, in each
// one's file, before the device is acknowledged; each upstream drains its
// copy at its own pace and deletes it on its own upstream's ack, so a slow
// or dead upstream neither holds back the others nor loses its share (up to
// its own spool caps).
type UpstreamConfig struct {
	// Name is what routes' upstreams and the metrics call it: letters,
	// digits, '-', '_'; not "main". Required.
	Name string `yaml:"name"`
	// Bridge takes the keys of the bridge section (defaults alike), except
	// downstream and embedded. client_id defaults to
	// ferry-{gateway_id}-<name>.
	Bridge BridgeConfig `yaml:"bridge"`
	// Spool holds the caps of this upstream's spool file; the other spool
	// keys (durability, dedupe, leases, ...) are the spool section's.
	Spool UpstreamSpoolConfig `yaml:"spool"`
}

// UpstreamSpoolConfig are the caps of one upstream's spool file.
type UpstreamSpoolConfig struct {
	MaxBytes    ByteSize `yaml:"max_bytes"`    // default 1GiB; 0: no cap
	MaxMessages int64    `yaml:"max_messages"` // default 0: no cap
	// Overflow when this upstream's spool is full: block | reject refuse
	// the message for every upstream of its route (the device retries);
	// drop_oldest | drop_lowest_priority keep the other upstreams flowing
	// and count what this one lost. Default block.
	Overflow Overflow `yaml:"overflow"`
}

func (u *UpstreamConfig) setDefaults() {
	*u = UpstreamConfig{Bridge: Default().Bridge, Spool: UpstreamSpoolConfig{MaxBytes: 1 << 30, Overflow: OverflowBlock}}
	u.Bridge.ClientID = ""
}

// bridgeBlock is one bridge block and the path of its keys.
type bridgeBlock struct {
	path string
	bc   *BridgeConfig
}

// bridgeBlocks returns the bridge section and every upstreams entry's
// bridge block.
func (c *Config) bridgeBlocks() []bridgeBlock {
	out := []bridgeBlock{{"bridge", &c.Bridge}}
	for i := range c.Upstreams {
		out = append(out, bridgeBlock{fmt.Sprintf("upstreams[%d].bridge", i), &c.Upstreams[i].Bridge})
	}
	return out
}

// UpstreamNames returns "main" and the names of the upstreams entries, in
// configuration order.
func (c *Config) UpstreamNames() []string {
	out := []string{MainUpstream}
	for _, u := range c.Upstreams {
		out = append(out, u.Name)
	}
	return out
}

// UpstreamSpoolPath is the spool file of upstream i: next to spool.path,
// "spool.db" → "spool.upstream-<name>.db".
func (c *Config) UpstreamSpoolPath(i int) string {
	p := c.Spool.Path
	ext := filepath.Ext(p)
	return strings.TrimSuffix(p, ext) + ".upstream-" + c.Upstreams[i].Name + ext
}

// UpstreamSpoolOptions are the options of upstream i's spool file: the
// spool section's, with the upstream's own caps and overflow policy.
func (c *Config) UpstreamSpoolOptions(i int, logger *slog.Logger) spool.Options {
	o := c.SpoolOptions(logger)
	s := c.Upstreams[i].Spool
	o.MaxBytes = none(int64(s.MaxBytes))
	o.MaxMessages = s.MaxMessages
	o.Overflow = s.Overflow.Spool()
	return o
}

// UpstreamBridgeOptions maps upstream i's bridge block to bridge.Options
// (as BridgeOptions does for the bridge section; no downstream routes).
func (c *Config) UpstreamBridgeOptions(i int) (bridge.Options, error) {
	u := c.Upstreams[i]
	bc := u.Bridge
	if bc.ClientID == "" {
		bc.ClientID = c.upstreamClientID(i)
	}
	return c.bridgeOptions(bc, bc.Upstream, nil)
}

func (c *Config) upstreamClientID(i int) string {
	if id := c.Upstreams[i].Bridge.ClientID; id != "" {
		return id
	}
	return "ferry-{gateway_id}-" + c.Upstreams[i].Name
}

func validUpstreamName(s string) bool {
	for _, r := range s {
		switch {
		case r == '-', r == '_', r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		default:
			return false
		}
	}
	return s != ""
}

func (c *Config) validateUpstreams(v *validator) {
	seen := map[string]int{}
	// Two connections with one client id to one broker take each other's
	// session over, one after the other, for ever.
	ids := map[string]string{firstOr(c.Bridge.Upstream) + " " + c.Bridge.ClientID: "bridge.client_id"}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := fmt.Sprintf("upstreams[%d]", i)
		switch {
		case u.Name == "":
			v.addf(p+".name", "required: a name for routes' upstreams, such as analytics")
		case u.Name == MainUpstream:
			v.addf(p+".name", "%q is the bridge section's upstream: choose another name", MainUpstream)
		case !validUpstreamName(u.Name):
			v.addf(p+".name", "must be letters, digits, '-' or '_' (got %q)", u.Name)
		default:
			if j, dup := seen[u.Name]; dup {
				v.addf(p+".name", "same name as upstreams[%d]", j)
			}
			seen[u.Name] = i
		}
		b := &u.Bridge
		if slices.Contains(b.Upstream, Embedded) {
			v.addf(p+".bridge.upstream", "embedded is only for the bridge section")
		} else {
			clientID := b.ClientID
			if clientID == "" {
				clientID = c.upstreamClientID(i)
			}
			saved := b.ClientID
			b.ClientID = clientID // client_id is required of the main bridge only
			c.validateBridgeBlock(v, p+".bridge", b)
			b.ClientID = saved
			if !strings.HasPrefix(firstOr(b.Upstream), "nats://") {
				key := firstOr(b.Upstream) + " " + clientID
				if other, dup := ids[key]; dup && !v.has(p+".bridge.client_id") {
					v.addf(p+".bridge.client_id", "same broker and client id as %s (%q): the two connections would take each other's session over", other, clientID)
				}
				ids[key] = p + ".bridge.client_id"
			}
		}
		if len(b.Downstream) > 0 {
			v.addf(p+".bridge.downstream", "commands come down through the bridge section only")
		}
		if s := u.Spool; s.MaxMessages < 0 {
			v.addf(p+".spool.max_messages", "must not be negative (got %d)", s.MaxMessages)
		}
		if s := u.Spool; strconv.IntSize == 32 && (s.MaxBytes <= 0 || s.MaxBytes > spool.Max32BitBytes) {
			v.addf(p+".spool.max_bytes", "must be 1B..1GiB on this 32-bit system (got %s; 0 means no cap)", s.MaxBytes)
		} else if s.MaxBytes > 0 && c.Spool.MaxMessageBytes > s.MaxBytes {
			v.addf(p+".spool.max_bytes", "must be at least spool.max_message_bytes (%s < %s)", s.MaxBytes, c.Spool.MaxMessageBytes)
		}
		v.check(p+".spool.overflow", u.Spool.Overflow)
	}
}

// validateRouteUpstreams checks a route's upstreams against the configured
// ones.
func (c *Config) validateRouteUpstreams(v *validator, p string, r *RouteConfig) {
	if len(r.Upstreams) == 0 {
		v.addf(p+".upstreams", "must name at least one upstream (main or a name from upstreams), or be left out for [main]; use local_only: true for none")
		return
	}
	var known []string // the names routes can use, for the message
	for _, n := range c.UpstreamNames() {
		if validUpstreamName(n) && !slices.Contains(known, n) {
			known = append(known, n)
		}
	}
	for j, name := range r.Upstreams {
		q := fmt.Sprintf("%s.upstreams[%d]", p, j)
		if !slices.Contains(known, name) {
			v.addf(q, "no upstream named %q (have %s)", name, strings.Join(known, ", "))
		} else if k := slices.Index(r.Upstreams, name); k < j {
			v.addf(q, "%q named twice (also upstreams[%d])", name, k)
		}
	}
}
