package gateway

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/ferrymq/ferry/internal/testkit"
)

// chrome is a headless Chromium driven over the DevTools protocol: just
// the commands the status page test needs, on the page target it opens
// with.
type chrome struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *logBuf
	conn *websocket.Conn

	wmu     sync.Mutex // serialises writes
	mu      sync.Mutex
	next    int
	pending map[int]chan cdpMessage
	events  []cdpMessage
	done    chan struct{} // the reader ended
}

type cdpMessage struct {
	ID     int             `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

var devtoolsURL = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

// startChrome starts Chromium with a fresh profile and connects to its
// first page. Everything is killed when the test ends.
func startChrome(t *testing.T, bin string) *chrome {
	t.Helper()
	c := &chrome{t: t, out: &logBuf{}, pending: map[int]chan cdpMessage{}, done: make(chan struct{})}
	c.cmd = exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir="+t.TempDir(),
		"--lang=en-US", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank")
	c.cmd.Env = append(os.Environ(), "LANG=en_US.UTF-8", "TZ=UTC")
	c.cmd.Stdout = c.out
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Its own process group, so that the renderers it starts go with it.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		if c.conn != nil {
			_ = c.conn.Close()
		}
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			_, _ = c.out.Write(append(sc.Bytes(), '\n'))
			if m := devtoolsURL.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	var browserURL string
	select {
	case browserURL = <-found:
	case <-exited:
		t.Fatalf("chromium exited before it listened:\n%s", c.out)
	case <-testkit.After(testkit.DefaultWait):
		t.Fatalf("hang guard: chromium did not listen for DevTools after %v\n%s", testkit.Timeout(testkit.DefaultWait), c.out)
	}
	// The page target of about:blank, from the browser's /json/list.
	host := strings.TrimPrefix(browserURL, "ws://")
	host = host[:strings.IndexByte(host, '/')]
	var pageURL string
	testkit.Wait(t, "chromium's page target", func() bool {
		resp, err := httpGetNoFail("http://" + host + "/json/list")
		if err != nil {
			return false
		}
		var targets []struct{ Type, WebSocketDebuggerURL string }
		if json.Unmarshal(resp, &targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" {
				pageURL = tg.WebSocketDebuggerURL
				return true
			}
		}
		return false
	})
	d := websocket.Dialer{HandshakeTimeout: testkit.Timeout(testkit.DefaultWait)}
	conn, resp, err := d.Dial(pageURL, nil)
	if resp != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		t.Fatalf("devtools %s: %v", pageURL, err)
	}
	conn.SetReadLimit(64 << 20) // screenshots
	c.conn = conn
	go c.read()
	c.call("Page.enable", nil)
	c.call("Network.enable", nil)
	return c
}

// use makes t (a subtest) the one the browser's failures go to, until
// the returned func restores the previous one.
func (c *chrome) use(t *testing.T) func() {
	prev := c.t
	c.t = t
	return func() { c.t = prev }
}

func (c *chrome) read() {
	defer close(c.done)
	for {
		var m cdpMessage
		if err := c.conn.ReadJSON(&m); err != nil {
			return
		}
		c.mu.Lock()
		if m.ID != 0 {
			if ch, ok := c.pending[m.ID]; ok {
				ch <- m
				delete(c.pending, m.ID)
			}
		} else {
			c.events = append(c.events, m)
		}
		c.mu.Unlock()
	}
}

// call sends a command and returns its result; a protocol error fails the
// test.
func (c *chrome) call(method string, params any) json.RawMessage {
	c.t.Helper()
	r, err := c.try(method, params)
	if err != nil {
		c.t.Fatalf("devtools %s: %v\n%s", method, err, c.out)
	}
	return r
}

func (c *chrome) try(method string, params any) (json.RawMessage, error) {
	c.mu.Lock()
	c.next++
	id := c.next
	ch := make(chan cdpMessage, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	p, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	if params == nil {
		p = []byte("{}")
	}
	c.wmu.Lock()
	err = c.conn.WriteJSON(map[string]any{"id": id, "method": method, "params": json.RawMessage(p)})
	c.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return nil, fmt.Errorf("%d %s", m.Error.Code, m.Error.Message)
		}
		return m.Result, nil
	case <-c.done:
		return nil, fmt.Errorf("the connection to chromium ended")
	case <-testkit.After(testkit.DefaultWait):
		return nil, fmt.Errorf("hang guard: no answer after %v", testkit.Timeout(testkit.DefaultWait))
	}
}

// eval evaluates a JavaScript expression in the page and decodes its
// (JSON-able) value into v.
func (c *chrome) eval(expr string, v any) {
	c.t.Helper()
	r := c.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true})
	var out struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(r, &out); err != nil {
		c.t.Fatal(err)
	}
	if e := out.ExceptionDetails; e != nil {
		c.t.Fatalf("page script: %s %s", e.Text, e.Exception.Description)
	}
	if v != nil {
		if err := json.Unmarshal(out.Result.Value, v); err != nil {
			c.t.Fatalf("page value %s: %v", out.Result.Value, err)
		}
	}
}

// navigate loads url at the given viewport width.
func (c *chrome) navigate(url string, width, height int, mobile bool) {
	c.t.Helper()
	c.viewport(width, height, mobile)
	c.mu.Lock()
	c.events = c.events[:0]
	c.mu.Unlock()
	c.call("Page.navigate", map[string]any{"url": url})
}

func (c *chrome) viewport(width, height int, mobile bool) {
	c.t.Helper()
	c.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
}

// responses returns the bodies of the finished responses whose URL
// contains part, newest first.
func (c *chrome) responses(part string) [][]byte {
	c.t.Helper()
	c.mu.Lock()
	urls := map[string]string{}
	var finished []string
	for _, e := range c.events {
		var p struct {
			RequestID string `json:"requestId"`
			Response  struct {
				URL string `json:"url"`
			} `json:"response"`
		}
		_ = json.Unmarshal(e.Params, &p)
		switch e.Method {
		case "Network.responseReceived":
			urls[p.RequestID] = p.Response.URL
		case "Network.loadingFinished":
			finished = append(finished, p.RequestID)
		}
	}
	c.mu.Unlock()
	var out [][]byte
	for i := len(finished) - 1; i >= 0; i-- {
		id := finished[i]
		if !strings.Contains(urls[id], part) {
			continue
		}
		r, err := c.try("Network.getResponseBody", map[string]any{"requestId": id})
		if err != nil {
			continue // evicted
		}
		var b struct {
			Body          string `json:"body"`
			Base64Encoded bool   `json:"base64Encoded"`
		}
		if err := json.Unmarshal(r, &b); err != nil {
			c.t.Fatal(err)
		}
		body := []byte(b.Body)
		if b.Base64Encoded {
			if body, err = base64.StdEncoding.DecodeString(b.Body); err != nil {
				c.t.Fatal(err)
			}
		}
		out = append(out, body)
	}
	return out
}

// screenshot saves the whole page, at the current width, as a PNG in dir
// and returns its path.
func (c *chrome) screenshot(dir, name string, width int, mobile bool) string {
	c.t.Helper()
	var h int
	c.eval("document.documentElement.scrollHeight", &h)
	c.viewport(width, h, mobile)
	r := c.call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true})
	var out struct{ Data string }
	if err := json.Unmarshal(r, &out); err != nil {
		c.t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(out.Data)
	if err != nil {
		c.t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// httpGetNoFail is a GET whose failure is an answer (the target may not
// listen yet), bounded by a hang guard.
func httpGetNoFail(url string) ([]byte, error) {
	cl := httpClientWithTimeout(testkit.Timeout(5 * time.Second))
	resp, err := cl.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}
