package gateway

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ferrymq/ferry/bridge/bridgetest"
	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// TestStatusPageInChromium loads the status page of a real gateway in
// headless Chromium in three states — idle (after a salvaged start), the
// link down with a backlog, draining (paced by bridge.max_rate) — checks
// what the page shows against the /api/status document it rendered, checks
// each state's facts (no ETA while the link is down, a delivery rate and
// an ETA while draining), checks that it fits a phone's width, and saves
// the screenshots under the test's temp dir.
func TestStatusPageInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Chromium, mosquitto and a gateway")
	}
	bin := requireChromium(t)
	up := bridgetest.StartMosquitto(t, bridgetest.MosquittoOptions{})
	proxy := bridgetest.NewProxy(t, up.Addr())
	cfg := e2eConfig(t, proxy.URL(), "")
	cfg.Bridge.MaxRate.Messages = 200
	cfg.Spool.MaxBytes = 4 << 20
	const salvaged = 5
	damagedSpool(t, cfg.Spool.Path, salvaged)

	r := startGateway(t, cfg)
	g := r.g
	if g.Spool().Salvaged() == nil {
		t.Fatal("the damaged spool was not salvaged: the idle state wants a salvage to show")
	}
	base := "http://" + g.HTTPAddr() + "/"
	shots := t.TempDir()
	br := startChrome(t, bin)

	// Idle: the salvaged messages and a few readings delivered, one
	// duplicate, one refused publish.
	c := pahoClient(t, g.MQTTAddr("mqtt"), "dev-a")
	for i := range 10 {
		publish(t, c, "sensors/a/temp", reading("a", i))
	}
	publish(t, c, "sensors/a/temp", reading("a", 3)) // the same json id: a duplicate
	publish(t, c, "alarms/door", `{"id":"d1"}`)
	bad := pahoClient(t, g.MQTTAddr("mqtt"), "dev-bad")
	_ = waitToken(t, bad.Publish("$SYS/x", 1, false, "no")) // refused: invalid_topic, and disconnected
	testkit.Wait(t, "everything to be delivered", func() bool {
		s := g.Spool().Stats()
		return s.Messages == 0 && s.Acked == salvaged+11
	})

	t.Run("idle", func(t *testing.T) {
		v := br.view(t, base)
		st := v.status
		if st.Link.State != LinkUp || st.DrainState != DrainEmpty || v.text["eta"] != "drained" {
			t.Errorf("idle: link %s, drain %s, page ETA %q", st.Link.State, st.DrainState, v.text["eta"])
		}
		if v.salvageHidden || !strings.Contains(v.text["salvage-text"], fmt.Sprintf("kept %d messages", salvaged)) ||
			!strings.Contains(v.text["salvage-text"], ".damaged-") {
			t.Errorf("salvage notice (hidden %v): %q", v.salvageHidden, v.text["salvage-text"])
		}
		if !hasRow(v.tables["dups"], "sensors", "json", "1") {
			t.Errorf("duplicates table %v, want sensors json 1", v.tables["dups"])
		}
		if !hasRow(v.tables["refused"], "invalid topic", "1", "0") {
			t.Errorf("refused table %v, want invalid topic: 1 (mqtt), 0 (stomp)", v.tables["refused"])
		}
		if !hasRow(v.tables["lanes"], "0", "alarms") || !hasRow(v.tables["lanes"], "5", "sensors, default") {
			t.Errorf("lanes %v, want lane 0 fed by alarms, 5 by sensors and the default route", v.tables["lanes"])
		}
		if len(v.tables["ups"]) != 0 || len(st.Upstreams) != 0 {
			t.Errorf("one upstream, yet an upstreams table: %v %v", v.tables["ups"], st.Upstreams)
		}
		if v.noOutagesHidden || len(st.Outages) != 0 {
			t.Errorf("outages at idle: %v", st.Outages)
		}
		br.shoot(t, shots, "idle")
	})

	// The link down (refused and cut), devices keep sending: 5000
	// readings over about 10 s, so that the outage spans samples and a
	// history step.
	proxy.Refuse()
	proxy.Cut()
	testkit.Wait(t, "the link to go down", func() bool { return !g.ups[0].up.Load() })
	const backlog = 5000
	for i := 0; i < backlog; i += 500 {
		sendMany(t, c, "sensors/b/temp", i, 500)
		time.Sleep(time.Second) // load shape only
	}
	testkit.Wait(t, "the backlog to be spooled", func() bool { return g.Spool().Stats().Messages == backlog })

	t.Run("link down with a backlog", func(t *testing.T) {
		v := br.view(t, base)
		st := v.status
		if st.Link.State == LinkUp || st.Spool.Messages != backlog {
			t.Fatalf("link %s, backlog %d: not the state this wants", st.Link.State, st.Spool.Messages)
		}
		if st.DrainETA != -1 || st.DrainState != DrainStopped || v.text["eta"] != "–" || v.text["eta-why"] != "not draining: link "+st.Link.State {
			t.Errorf("link %s: drain ETA %v (%s), page %q %q; want -1, no ETA shown", st.Link.State, st.DrainETA, st.DrainState, v.text["eta"], v.text["eta-why"])
		}
		if len(st.Outages) != 1 || !st.Outages[0].Ongoing || st.Outages[0].LastError == "" || !strings.HasSuffix(v.tables["outages"][0][1], "(ongoing)") {
			t.Errorf("outages %+v, rows %v: want one ongoing with its last error", st.Outages, v.tables["outages"])
		}
		if m := metricValue(t, base+"metrics", "ferry_bridge_drain_eta_seconds"); m != -1 {
			t.Errorf("ferry_bridge_drain_eta_seconds = %v with the link %s, want -1", m, st.Link.State)
		}
		br.shoot(t, shots, "link-down")
	})

	// The link back: a drain of 5000 at 200/s. The page is the first to
	// read the status after the heal.
	healed := g.Spool().Stats().Acked
	proxy.Heal()
	// 600 at 200/s: more than two of the sampler's ticks with the link up.
	testkit.Wait(t, "the drain to be under way", func() bool { return g.Spool().Stats().Acked >= healed+600 })

	t.Run("draining", func(t *testing.T) {
		v := br.view(t, base)
		st := v.status
		if st.Link.State != LinkUp || st.DrainState != DrainDraining || st.Rates.AckedPerSecond <= 0 || st.DrainETA <= 0 {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("draining: link %s, drain %s, acked/s %v, ETA %v\n%s", st.Link.State, st.DrainState, st.Rates.AckedPerSecond, st.DrainETA, b)
		}
		if v.text["ackrate"] == "0.0" || v.text["eta"] != pageDur(st.DrainETA) || v.text["eta-why"] != "at "+usRate(st.Rates.DrainPerSecond)+"/s net" {
			t.Errorf("page shows delivered/s %q, drain ETA %q %q", v.text["ackrate"], v.text["eta"], v.text["eta-why"])
		}
		// The outage was longer than the rate window: delivered/s is
		// measured since the link came up, not averaged with the outage.
		if r := st.Rates; r.AckedWindowSeconds >= r.WindowSeconds || !strings.HasSuffix(v.text["rate-window"], "since the link came up") {
			t.Errorf("rates %+v, page %q: want delivered/s since the link came up", r, v.text["rate-window"])
		}
		// Paced at 200/s: the rate since the link came up cannot be far above.
		if a := st.Rates.AckedPerSecond; a > 300 {
			t.Errorf("delivered %v/s with bridge.max_rate 200", a)
		}
		if v.text["pacing"] != "200 msg/s" {
			t.Errorf("pacing %q", v.text["pacing"])
		}
		if len(st.Outages) != 1 || st.Outages[0].Ongoing || st.Outages[0].DurationSeconds <= 0 {
			t.Errorf("outages %+v: want the one outage closed", st.Outages)
		}
		br.shoot(t, shots, "draining")
	})
}

// damagedSpool writes a spool with n queued messages at path and destroys
// its second meta page, so that the next Open salvages it.
func damagedSpool(t *testing.T, path string, n int) {
	t.Helper()
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		m := &message.Message{Topic: "sensors/old/temp", UpstreamTopic: "sites/gw1/sensors/old/temp", UpstreamQoS: 1,
			Priority: 5, Payload: []byte(reading("old", i)), AcceptedAt: time.Now()}
		if _, err := s.Put(context.Background(), spool.Entry{Priority: 5, Data: message.Encode(nil, m)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := int(binary.LittleEndian.Uint32(b[16+8:])) // bbolt: page header, then magic, version, page size
	clear(b[ps : 2*ps])
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// sendMany publishes n QoS 1 readings from sequence number from on, and
// waits for every acknowledgement.
func sendMany(t *testing.T, c paho.Client, topic string, from, n int) {
	t.Helper()
	toks := make([]paho.Token, 0, n)
	for i := range n {
		toks = append(toks, c.Publish(topic, 1, false, reading("b", from+i)))
	}
	for _, tok := range toks {
		if err := waitToken(t, tok); err != nil {
			t.Fatalf("publish %s: %v", topic, err)
		}
	}
}

// pageView is what the page shows and the /api/status document it showed.
type pageView struct {
	status          Status
	text            map[string]string
	tables          map[string][][]string
	refusedHead     []string
	charts          map[string][]chartSeries
	salvageHidden   bool
	noOutagesHidden bool
	scrollWidth     int
	innerWidth      int
}

type chartSeries struct {
	Series string `json:"series"`
	Points int    `json:"points"`
}

var pageIDs = []string{"gw", "link", "link-since", "ackrate", "accrate", "rate-window", "eta", "eta-why", "inflight", "pacing",
	"reconn", "acctotal", "acktotal", "backlog-max", "rates-max", "backlog", "bytes", "oldest", "used", "used-of", "file",
	"dlq", "full", "salvage-text"}

// snapshotJS reads, in one go, everything the test compares.
const snapshotJS = `(() => {
  const ids = IDS, text = {}, tables = {}, charts = {};
  if (document.readyState !== "complete" || !ids.every(id => document.getElementById(id))) return {time: ""};
  for (const id of ids) text[id] = document.getElementById(id).textContent;
  for (const id of ["parts","outages","lanes","refused","dups","dropped","ups"])
    tables[id] = [...document.getElementById(id).tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent));
  for (const id of ["backlog","rates"])
    charts[id] = [...document.querySelectorAll("#chart-"+id+" path")].map(p => ({series: p.dataset.series, points: +p.dataset.points}));
  return {time: document.documentElement.dataset.statusTime || "", text, tables, charts,
    refusedHead: [...document.getElementById("refused").tHead.rows[0].cells].map(c => c.textContent),
    salvageHidden: document.getElementById("salvage").hidden, noOutagesHidden: document.getElementById("no-outages").hidden,
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth};
})()`

// view loads the page at desktop width, waits for its first render and
// checks every value against the document it rendered.
func (c *chrome) view(t *testing.T, url string) pageView {
	t.Helper()
	defer c.use(t)()
	c.navigate(url, 1280, 900, false)
	v := c.snapshot(t)
	checkRendered(t, v)
	return v
}

func (c *chrome) snapshot(t *testing.T) pageView {
	t.Helper()
	ids, _ := json.Marshal(pageIDs)
	js := strings.Replace(snapshotJS, "IDS", string(ids), 1)
	var raw struct {
		Time            string                   `json:"time"`
		Text            map[string]string        `json:"text"`
		Tables          map[string][][]string    `json:"tables"`
		Charts          map[string][]chartSeries `json:"charts"`
		RefusedHead     []string                 `json:"refusedHead"`
		SalvageHidden   bool                     `json:"salvageHidden"`
		NoOutagesHidden bool                     `json:"noOutagesHidden"`
		ScrollWidth     int                      `json:"scrollWidth"`
		InnerWidth      int                      `json:"innerWidth"`
	}
	var st Status
	testkit.Wait(t, "the page to render a status and its response to be seen", func() bool {
		c.eval(js, &raw)
		if raw.Time == "" {
			return false
		}
		want, err := time.Parse(time.RFC3339Nano, raw.Time)
		if err != nil {
			t.Fatalf("page status time %q: %v", raw.Time, err)
		}
		for _, body := range c.responses("/api/status") {
			var s Status
			if json.Unmarshal(body, &s) == nil && s.Time.Equal(want) {
				st = s
				return true
			}
		}
		return false
	})
	return pageView{status: st, text: raw.Text, tables: raw.Tables, refusedHead: raw.RefusedHead, charts: raw.Charts,
		salvageHidden: raw.SalvageHidden, noOutagesHidden: raw.NoOutagesHidden, scrollWidth: raw.ScrollWidth, innerWidth: raw.InnerWidth}
}

// shoot saves the page at desktop and at phone width (checking that
// nothing but the tables' own scrolling is wider than the phone) and logs
// the paths.
func (c *chrome) shoot(t *testing.T, dir, name string) {
	t.Helper()
	defer c.use(t)()
	p := c.screenshot(dir, name+".png", 1280, false)
	const phone = 390
	c.viewport(phone, 844, true)
	v := c.snapshot(t)
	if v.scrollWidth > phone || v.innerWidth != phone {
		t.Errorf("at phone width the page is %d px wide in a %d px viewport (want %d)", v.scrollWidth, v.innerWidth, phone)
	}
	checkRendered(t, v)
	pp := c.screenshot(dir, name+"-phone.png", phone, true)
	t.Logf("screenshots of %s: %s, %s", name, p, pp)
	// The temp dir goes with the test; FERRY_SCREENSHOTS keeps copies.
	if keep := os.Getenv("FERRY_SCREENSHOTS"); keep != "" {
		for _, f := range []string{p, pp} {
			b, err := os.ReadFile(f)
			if err == nil {
				err = os.WriteFile(filepath.Join(keep, filepath.Base(f)), b, 0o644)
			}
			if err != nil {
				t.Errorf("FERRY_SCREENSHOTS: %v", err)
			}
		}
	}
}

// checkRendered compares what the page shows with the document it showed.
func checkRendered(t *testing.T, v pageView) {
	t.Helper()
	st, x := v.status, v.text
	eq := func(what, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("page %s = %q, /api/status says %q", what, got, want)
		}
	}
	eq("gateway", x["gw"], st.GatewayID)
	eq("link", x["link"], st.Link.State)
	eq("delivered/s", x["ackrate"], usRate(st.Rates.AckedPerSecond))
	eq("accepted/s", x["accrate"], usRate(st.Rates.AcceptedPerSecond))
	wantETA := map[string]string{DrainEmpty: "drained", DrainKeepingUp: "keeping up", DrainDraining: pageDur(st.DrainETA)}[st.DrainState]
	if wantETA == "" {
		wantETA = "–"
	}
	eq("drain ETA", x["eta"], wantETA)
	eq("in flight", x["inflight"], usNum(int64(st.Link.InFlight)))
	eq("reconnects", x["reconn"], usNum(int64(st.Link.Reconnects)))
	eq("delivered total", x["acktotal"], usNum(int64(st.Link.Acked)))
	var pace []string
	if mr := st.Link.MaxRate; mr.MessagesPerSecond > 0 {
		pace = append(pace, usNum(int64(mr.MessagesPerSecond))+" msg/s")
	}
	if mr := st.Link.MaxRate; mr.BytesPerSecond > 0 {
		pace = append(pace, pageSize(int64(mr.BytesPerSecond))+"/s")
	}
	if len(pace) == 0 {
		pace = []string{"unpaced"}
	}
	eq("pacing", x["pacing"], strings.Join(pace, ", "))
	sp := st.Spool
	eq("accepted total", x["acctotal"], usNum(int64(sp.Accepted)))
	eq("backlog", x["backlog"], usNum(sp.Messages))
	eq("file", x["file"], pageSize(sp.FileSize))
	eq("used", x["used"], fmt.Sprintf("%.1f %%", sp.UsedPercent))
	eq("used of", x["used-of"], pageSize(sp.StoredBytes)+" of "+pageSize(sp.MaxBytes))
	eq("dead letters", x["dlq"], usNum(sp.DLQMessages))

	var lanes [][]string
	for _, l := range sp.Lanes {
		if l.Messages > 0 || len(l.Routes) > 0 {
			routes := strings.Join(l.Routes, ", ")
			if routes == "" {
				routes = "–"
			}
			lanes = append(lanes, []string{strconv.Itoa(l.Lane), routes, usNum(l.Messages), pageSize(l.Bytes)})
		}
	}
	if got := v.tables["lanes"]; len(got) != len(lanes) {
		t.Errorf("page lanes %v, /api/status %v", got, lanes)
	} else {
		for i := range lanes {
			eq("lane row", strings.Join(got[i][:4], "|"), strings.Join(lanes[i], "|"))
		}
	}
	if got := v.tables["parts"]; len(got) != len(st.Link.Partitions) {
		t.Errorf("page partitions %v, /api/status %+v", got, st.Link.Partitions)
	} else {
		for i, p := range st.Link.Partitions {
			eq("partition state", got[i][1], p.State)
			if !strings.HasPrefix(got[i][5], p.LastError) {
				t.Errorf("partition %d last error %q, /api/status %q", i, got[i][5], p.LastError)
			}
		}
	}
	if got := v.tables["outages"]; len(got) != len(st.Outages) || v.noOutagesHidden != (len(st.Outages) > 0) {
		t.Errorf("page outages %v (none-notice hidden %v), /api/status %+v", got, v.noOutagesHidden, st.Outages)
	} else {
		for i, o := range st.Outages {
			lasted := pageDur(o.DurationSeconds)
			if o.Ongoing {
				lasted += " (ongoing)"
			}
			state := o.State
			if state == "" {
				state = "brief"
			}
			eq("outage row", strings.Join(got[i][1:], "|"), strings.Join([]string{lasted, state, usNum(o.BacklogPeak), o.LastError}, "|"))
		}
	}
	// Refused: a column per protocol, a row per reason.
	reasons := map[string]bool{}
	for _, in := range st.Ingress {
		for r := range in.Refused {
			reasons[r] = true
		}
	}
	if got := v.tables["refused"]; len(reasons) > 0 && len(got) != len(reasons) {
		t.Errorf("page refusals %v, /api/status %+v", got, st.Ingress)
	} else if len(reasons) > 0 {
		for _, row := range got {
			reason := strings.ReplaceAll(row[0], " ", "_")
			for j, in := range st.Ingress {
				eq("refused "+reason+" "+in.Protocol, row[1+j], usNum(int64(in.Refused[reason])))
				eq("refused column", v.refusedHead[1+j], in.Protocol)
			}
		}
	}
	if got := v.tables["dups"]; len(st.Duplicates) > 0 && len(got) != len(st.Duplicates) {
		t.Errorf("page duplicates %v, /api/status %+v", got, st.Duplicates)
	} else {
		for i, d := range st.Duplicates {
			eq("duplicates row", strings.Join(got[i], "|"), d.Route+"|"+d.Reason+"|"+usNum(int64(d.Count)))
		}
	}
	h := st.History
	for _, ch := range []string{"backlog", "rates"} {
		for _, s := range v.charts[ch] {
			if s.Points != len(h.T) {
				t.Errorf("chart %s %s has %d points, the history %d", ch, s.Series, s.Points, len(h.T))
			}
		}
	}
	if len(v.charts["backlog"]) != 1 || len(v.charts["rates"]) != 2 {
		t.Errorf("charts %v: want backlog, and accepted and delivered", v.charts)
	}
	var top int64
	for _, b := range h.Backlog {
		top = max(top, b)
	}
	eq("backlog chart's top", x["backlog-max"], usNum(int64(niceMax(float64(top)))))
	if v.salvageHidden != (st.Salvage == nil) {
		t.Errorf("salvage notice hidden %v with salvage %v", v.salvageHidden, st.Salvage)
	}
	if t.Failed() {
		b, _ := json.MarshalIndent(st, "", "  ")
		t.Logf("the page's /api/status:\n%s", b)
	}
}

func hasRow(rows [][]string, cells ...string) bool {
	for _, r := range rows {
		if len(r) >= len(cells) && strings.Join(r[:len(cells)], "|") == strings.Join(cells, "|") {
			return true
		}
	}
	return false
}

// usNum, usRate, pageDur, pageSize and niceMax format as the page does
// (en-US).
func usNum(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func usRate(x float64) string {
	s := strconv.FormatFloat(math.Abs(x), 'f', 1, 64)
	whole, frac, _ := strings.Cut(s, ".")
	n, _ := strconv.ParseInt(whole, 10, 64)
	if x < 0 {
		return "-" + usNum(n) + "." + frac
	}
	return usNum(n) + "." + frac
}

func pageDur(s float64) string {
	if s < 0 {
		return "–"
	}
	n := int64(math.Round(s))
	switch {
	case n < 60:
		return fmt.Sprintf("%ds", n)
	case n < 3600:
		return fmt.Sprintf("%dm%ds", n/60, n%60)
	case n < 86400:
		return fmt.Sprintf("%dh%dm", n/3600, n%3600/60)
	}
	return fmt.Sprintf("%dd%dh", n/86400, n%86400/3600)
}

func pageSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + units[i]
}

func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// metricValue scrapes url and returns the value of the unlabelled sample
// name.
func metricValue(t *testing.T, url, name string) float64 {
	t.Helper()
	for line := range strings.SplitSeq(httpGet(t, url), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("%s has no %s", url, name)
	return 0
}

func httpClientWithTimeout(d time.Duration) *http.Client { return &http.Client{Timeout: d} }
