package gateway

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestGrafanaDashboardUsesRealMetrics: every metric the dashboard queries
// is one the gateway exports (docs/metrics.md is checked against the code
// by TestMetricsDocumented).
func TestGrafanaDashboardUsesRealMetrics(t *testing.T) {
	b, err := os.ReadFile("../configs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`ferry_[a-z_]+`)
	n := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_count"), "_sum")
				if !strings.Contains(string(doc), "`"+base+"`") && !strings.Contains(string(doc), base+"{") && !strings.Contains(string(doc), base+" ") {
					t.Errorf("panel %q queries %s, which the gateway does not export", p.Title, m)
				}
				n++
			}
		}
	}
	if n < 15 {
		t.Fatalf("dashboard queries only %d metrics", n)
	}
}
