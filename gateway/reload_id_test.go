package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/gateway/config"
)

// SIGHUP after editing gateway_id: the reload says gateway_id needs a
// restart, so the routes must keep resolving {gateway_id} to the running id
// (as the client id, downstream filters and status page do) until then.
func TestReloadKeepsRunningGatewayID(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.yaml")
	y := func(id string) []byte {
		return []byte("gateway_id: " + id + "\nallow_anonymous: true\nlisteners: {mqtt: {address: \"127.0.0.1:0\"}, stomp: {address: \"\"}, http: {address: \"\"}}\nspool: {path: " + filepath.Join(dir, "s.db") + "}\nbridge: {upstream: [embedded], embedded_address: \"127.0.0.1:0\"}\n")
	}
	os.WriteFile(path, y("old"), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer g.sp.Close()
	os.WriteFile(path, y("new"), 0o600)
	if err := g.Reload(path); err != nil {
		t.Fatal(err)
	}
	r := g.router.Route("sensors/t")
	up := r.UpstreamTopic
	t.Logf("upstream topic after reload: %q; restart-required keys logged as needing restart include gateway_id", up)
	if strings.Contains(up, "new") {
		t.Fatalf("gateway_id change 'needs a restart' but was applied to upstream topics at reload: %q", up)
	}
}
