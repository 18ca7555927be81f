package gateway

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/message"
)

const routesSrc = minimal + `routes:
  - name: alarms
    match: alarms/#
    priority: 0
    ttl: 0s
    dedupe: json:id
    upstream_topic: 'alarm/{gateway_id}/{topic}'
  - name: temps
    match: /topic/sensors.*.temp
    priority: 3
    ttl: 90s
    dedupe: property
    upstream_topic: 'telemetry/{topic}/v1'
    upstream_qos: 0
    qos0_when_offline: drop
  - name: sensors
    match: sensors/#
    priority: 7
    dedupe: 'property:x-id'
  - name: local
    match: local/+
    local_only: true
  - name: fixed
    match: status
    upstream_topic: '{gateway_id}/status'
default_route:
  priority: 9
  ttl: 1h
  dedupe: hash
`

// TestRouterFields proves that each route field reaches the message.Route
// the router returns, and that the first matching route wins.
func TestRouterFields(t *testing.T) {
	r, err := NewRouter(mustParse(t, routesSrc))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		topic string
		want  message.Route
	}{
		{"alarms/fire/hall", message.Route{Name: "alarms", Priority: 0, Dedupe: message.Dedupe{Kind: message.DedupeJSON, Name: "id"},
			UpstreamTopic: "alarm/gw1/alarms/fire/hall", UpstreamQoS: 1}},
		// The STOMP destination /topic/sensors.*.temp is the filter sensors/+/temp,
		// and it wins over the later, wider sensors/#.
		{"sensors/room1/temp", message.Route{Name: "temps", Priority: 3, TTL: 90 * time.Second,
			Dedupe: message.Dedupe{Kind: message.DedupeProperty}, UpstreamTopic: "telemetry/sensors/room1/temp/v1",
			UpstreamQoS: 0, QoS0: message.QoS0Drop}},
		{"sensors/room1/humidity", message.Route{Name: "sensors", Priority: 7, Dedupe: message.Dedupe{Kind: message.DedupeProperty, Name: "x-id"},
			UpstreamTopic: "sites/gw1/sensors/room1/humidity", UpstreamQoS: 1}},
		{"sensors", message.Route{Name: "sensors", Priority: 7, Dedupe: message.Dedupe{Kind: message.DedupeProperty, Name: "x-id"},
			UpstreamTopic: "sites/gw1/sensors", UpstreamQoS: 1}},
		{"local/x", message.Route{Name: "local", Priority: 5, UpstreamQoS: 1, LocalOnly: true}},
		{"local/x/y", message.Route{Name: "default", Priority: 9, TTL: time.Hour, Dedupe: message.Dedupe{Kind: message.DedupeHash},
			UpstreamTopic: "sites/gw1/local/x/y", UpstreamQoS: 1}},
		{"status", message.Route{Name: "fixed", Priority: 5, UpstreamTopic: "gw1/status", UpstreamQoS: 1}},
		{"$SYS/x", message.Route{Name: "default", Priority: 9, TTL: time.Hour, Dedupe: message.Dedupe{Kind: message.DedupeHash},
			UpstreamTopic: "sites/gw1/$SYS/x", UpstreamQoS: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			if got := r.Route(tt.topic); got != tt.want {
				t.Errorf("Route(%q)\n got %+v\nwant %+v", tt.topic, got, tt.want)
			}
		})
	}
}

// TestRouteApply checks the route's effect on a message end to end:
// priority, expiry, dedupe key, upstream topic and QoS.
func TestRouteApply(t *testing.T) {
	r, err := NewRouter(mustParse(t, routesSrc))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	m := &message.Message{Topic: "sensors/r2/temp", AcceptedAt: now, Headers: []message.Header{{Key: "msg-id", Value: "abc"}}}
	r.Route(m.Topic).Apply(m)
	if m.Priority != 3 || !m.ExpiresAt.Equal(now.Add(90*time.Second)) || m.DedupeKey != message.ScopedDedupeKey(r.Route(m.Topic).Name, m.Source, "abc") ||
		m.UpstreamTopic != "telemetry/sensors/r2/temp/v1" || m.UpstreamQoS != 0 {
		t.Fatalf("applied: %+v", m)
	}
	m = &message.Message{Topic: "alarms/a", AcceptedAt: now, Payload: []byte(`{"id": 42}`)}
	r.Route(m.Topic).Apply(m)
	if m.Priority != 0 || !m.ExpiresAt.IsZero() || m.DedupeKey != message.ScopedDedupeKey("alarms", m.Source, "42") || m.UpstreamTopic != "alarm/gw1/alarms/a" {
		t.Fatalf("applied: %+v", m)
	}
}

// TestRouterReload swaps the rules while other goroutines route (run with
// -race): every result comes entirely from the old or the new table.
func TestRouterReload(t *testing.T) {
	c1 := mustParse(t, minimal+"routes: [{match: 'a/#', priority: 1, upstream_topic: 'one/{topic}'}]\n")
	c2 := mustParse(t, minimal+"routes: [{match: 'a/#', priority: 2, upstream_topic: 'two/{topic}'}]\n")
	r, err := NewRouter(c1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				rt := r.Route("a/b")
				old := rt.Priority == 1 && rt.UpstreamTopic == "one/a/b"
				updated := rt.Priority == 2 && rt.UpstreamTopic == "two/a/b"
				if !old && !updated {
					errs <- fmt.Errorf("mixed route %+v", rt)
					return
				}
			}
		}()
	}
	for i := range 200 {
		c := c1
		if i%2 == 0 {
			c = c2
		}
		if err := r.Reload(c); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := r.Route("a/b").Priority; got != 1 {
		t.Fatalf("after the last reload priority = %d, want 1", got)
	}

	// A bad table is refused and the old one stays.
	bad := *c2
	bad.Routes = []config.RouteConfig{{Match: "a/#", Priority: 12, UpstreamTopic: "x"}}
	if err := r.Reload(&bad); err == nil {
		t.Fatal("Reload accepted priority 12")
	}
	if got := r.Route("a/b").Priority; got != 1 {
		t.Fatalf("after a failed reload priority = %d, want 1", got)
	}
}

func BenchmarkRoute(b *testing.B) {
	c, err := config.Parse("ferry.yaml", []byte(routesSrc), nil)
	if err != nil {
		b.Fatal(err)
	}
	r, err := NewRouter(c)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		_ = r.Route("sensors/room1/humidity")
	}
}
