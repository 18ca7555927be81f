package config

import (
	"strings"
	"testing"

	"github.com/ferrymq/ferry/protocols/message"
)

func TestTemplate(t *testing.T) {
	tests := []struct {
		tmpl, topic, want, err string
	}{
		{"sites/{gateway_id}/{topic}", "a/b", "sites/gw/a/b", ""},
		{"{topic}", "a/b", "a/b", ""},
		{"fixed/topic", "a/b", "fixed/topic", ""},
		{"{topic}/{topic}", "x", "x/x", ""},
		{"", "", "", "required unless local_only"},
		{"{client_id}/{topic}", "", "", "unknown placeholder"},
		{"a/#/{topic}", "", "", "wildcards are not allowed"},
	}
	for _, tt := range tests {
		tp, err := ParseTemplate(tt.tmpl, "gw")
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseTemplate(%q) error = %v, want %q", tt.tmpl, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseTemplate(%q): %v", tt.tmpl, err)
			continue
		}
		if got := tp.Render(tt.topic); got != tt.want {
			t.Errorf("Render(%q, %q) = %q, want %q", tt.tmpl, tt.topic, got, tt.want)
		}
	}
}

// FuzzRouteTemplate: an upstream topic template either is refused at load
// or renders every valid topic as plain substitution does, into a valid
// topic name (unless the result is longer than MQTT allows).
func FuzzRouteTemplate(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzRouteTemplate.
	f.Add("sites/{gateway_id}/{topic}", "gw1", "sensors/a/temp")
	f.Fuzz(func(t *testing.T, tmpl, gatewayID, topic string) {
		tp, err := ParseTemplate(tmpl, gatewayID)
		if err != nil || !validID(gatewayID) || message.ValidateTopic(topic) != nil {
			return
		}
		resolved := strings.ReplaceAll(tmpl, "{gateway_id}", gatewayID)
		if rest := strings.ReplaceAll(resolved, "{topic}", ""); strings.ContainsAny(rest, "{}") {
			t.Fatalf("ParseTemplate(%q) accepted a template with a stray brace", tmpl)
		}
		want := strings.ReplaceAll(resolved, "{topic}", topic)
		got := tp.Render(topic)
		if got != want {
			t.Fatalf("template %q, gateway %q, topic %q: rendered %q, want %q", tmpl, gatewayID, topic, got, want)
		}
		if err := message.ValidateTopic(got); err != nil && len(got) <= message.MaxTopicLen {
			t.Fatalf("template %q renders valid topic %q as invalid %q: %v", tmpl, topic, got, err)
		}
	})
}
