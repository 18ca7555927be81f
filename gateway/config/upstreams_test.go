package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/spool"
)

func TestUpstreams(t *testing.T) {
	c := mustParse(t, minimal+`spool: {path: /data/spool.db, overflow: reject, dedupe_window: 1m}
upstreams:
  - name: analytics
    bridge: {upstream: nats://127.0.0.1:4222, jetstream: {stream: S}}
    spool: {max_bytes: 1MiB, overflow: drop_oldest}
  - name: backup
    bridge: {upstream: tcp://127.0.0.1:1884, window: 8}
routes:
  - match: a/#
    upstreams: [main, analytics]
  - match: b/#
    upstreams: backup
`)
	if got, want := c.UpstreamNames(), []string{"main", "analytics", "backup"}; !reflect.DeepEqual(got, want) {
		t.Errorf("UpstreamNames = %v, want %v", got, want)
	}
	if got := c.Routes[1].Upstreams; !reflect.DeepEqual(got, []string{"backup"}) {
		t.Errorf("a single name is a list of one: %v", got)
	}
	if got := c.DefaultRoute.Upstreams; !reflect.DeepEqual(got, []string{MainUpstream}) {
		t.Errorf("default route's upstreams = %v", got)
	}
	if got := c.UpstreamSpoolPath(0); got != "/data/spool.upstream-analytics.db" {
		t.Errorf("UpstreamSpoolPath = %q", got)
	}
	so := c.UpstreamSpoolOptions(0, nil)
	if so.MaxBytes != 1<<20 || so.Overflow != spool.DropOldest || so.DedupeWindow != c.SpoolOptions(nil).DedupeWindow {
		t.Errorf("analytics spool options: max %d overflow %v dedupe %v", so.MaxBytes, so.Overflow, so.DedupeWindow)
	}
	if so := c.UpstreamSpoolOptions(1, nil); so.MaxBytes != 1<<30 || so.Overflow != spool.Block {
		t.Errorf("backup spool options (defaults): max %d overflow %v", so.MaxBytes, so.Overflow)
	}
	bo, err := c.UpstreamBridgeOptions(1)
	if err != nil {
		t.Fatal(err)
	}
	if bo.ClientID != "ferry-{gateway_id}-backup" || bo.Window != 8 || bo.Partitions != 1 || bo.Downstream != nil ||
		!reflect.DeepEqual(bo.Brokers, []string{"tcp://127.0.0.1:1884"}) {
		t.Errorf("backup bridge options: %+v", bo)
	}
	if bo, _ := c.UpstreamBridgeOptions(0); bo.JetStream.Stream != "S" {
		t.Errorf("analytics jetstream: %+v", bo.JetStream)
	}
}

func TestBadUpstreams(t *testing.T) {
	src := minimal + `upstreams:
  - name: main
    bridge: {upstream: tcp://a:1883}
  - name: x
    bridge: {upstream: embedded}
  - name: 'a b'
    bridge: {upstream: tcp://b:1883, window: 0, downstream: [c/#]}
  - name: x
    bridge: {upstream: tcp://127.0.0.1:1884, client_id: 'ferry-{gateway_id}'}
    spool: {overflow: spill, max_messages: -1}
  - bridge: {}
routes:
  - match: a/#
    upstreams: [main, nowhere, main]
  - match: b/#
    upstreams: []
  - match: c/#
    local_only: true
    upstreams: [main]
`
	_, err := Parse("ferry.yaml", []byte(src), nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`upstreams[0].name: "main" is the bridge section's upstream: choose another name`,
		`upstreams[1].bridge.upstream: embedded is only for the bridge section`,
		`upstreams[2].name: must be letters, digits, '-' or '_' (got "a b")`,
		`upstreams[2].bridge.window: must be 1..65535 (got 0)`,
		`upstreams[2].bridge.downstream: commands come down through the bridge section only`,
		`upstreams[3].name: same name as upstreams[1]`,
		`upstreams[3].bridge.client_id: same broker and client id as bridge.client_id ("ferry-{gateway_id}"): the two connections would take each other's session over`,
		`upstreams[3].spool.max_messages: must not be negative (got -1)`,
		`upstreams[3].spool.overflow: must be`,
		`upstreams[4].name: required: a name for routes' upstreams, such as analytics`,
		`upstreams[4].bridge.upstream: required`,
		`routes[0].upstreams[1]: no upstream named "nowhere" (have main, x)`,
		`routes[0].upstreams[2]: "main" named twice (also upstreams[0])`,
		`routes[1].upstreams: must name at least one upstream`,
		`routes[2].upstreams: has no effect with local_only: true`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

func TestUpstreamPasswordRedacted(t *testing.T) {
	c := mustParse(t, minimal+"upstreams:\n  - name: u\n    bridge: {upstream: tcp://b:1883, password: hunter2}\n")
	y, err := c.EffectiveYAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(y), "hunter2") || !strings.Contains(string(y), Redacted) {
		t.Fatalf("password not redacted:\n%s", y)
	}
	if c.Upstreams[0].Bridge.Password != "hunter2" {
		t.Fatal("EffectiveYAML changed the configuration")
	}
}
