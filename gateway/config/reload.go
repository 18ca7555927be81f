package config

import (
	"fmt"
	"reflect"
	"slices"
	"sort"

	"go.yaml.in/yaml/v4"
)

// ReloadableKeys are the top-level keys a reload (SIGHUP) applies without a
// restart: the rules that Router and Auth swap atomically. log.level is
// applied too (Options.LogLevel); log.format is not.
var ReloadableKeys = []string{"allow_anonymous", "anonymous", "users", "users_file", "routes", "default_route"}

// RestartRequired compares a running configuration with a newly loaded one
// and returns the keys that changed but take effect only after a restart
// (listeners, spool, bridge, log.format, gateway_id), sorted: top-level
// keys, and log.format for the log section, whose level a reload applies.
// A reload applies the ReloadableKeys and should log these.
func RestartRequired(old, new *Config) []string {
	var out []string
	ov, nv := reflect.ValueOf(old).Elem(), reflect.ValueOf(new).Elem()
	reloadable := make(map[string]bool, len(ReloadableKeys))
	for _, k := range ReloadableKeys {
		reloadable[k] = true
	}
	for name, i := range yamlFields(ov.Type()) {
		if reloadable[name] {
			continue
		}
		if name == "log" {
			if old.Log.Format != new.Log.Format {
				out = append(out, "log.format")
			}
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Redacted is the text that replaces secrets in EffectiveYAML.
const Redacted = "REDACTED"

// EffectiveYAML returns the configuration with every default filled in, as
// YAML, with the upstream password and the password and token hashes replaced by
// Redacted: for `ferry check --print` and support requests.
func (c *Config) EffectiveYAML() ([]byte, error) {
	cp := *c
	cp.Users = make([]User, len(c.Users))
	for i, u := range c.Users {
		u.PasswordHash = Redacted
		cp.Users[i] = u
	}
	if cp.Bridge.Password != "" {
		cp.Bridge.Password = Redacted
	}
	cp.Upstreams = slices.Clone(c.Upstreams)
	for i := range cp.Upstreams {
		if cp.Upstreams[i].Bridge.Password != "" {
			cp.Upstreams[i].Bridge.Password = Redacted
		}
	}
	for _, s := range []*string{&cp.Listeners.HTTP.Auth.PasswordHash, &cp.Listeners.HTTP.Auth.TokenHash} {
		if *s != "" {
			*s = Redacted
		}
	}
	b, err := yaml.Marshal(&cp)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return b, nil
}
