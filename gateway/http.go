package gateway

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/spool"
)

// Status is the JSON document of /api/status and the data of the status
// page. docs/operations.md describes what each part means to an operator.
type Status struct {
	GatewayID     string       `json:"gateway_id"`
	Version       string       `json:"version"`
	Time          time.Time    `json:"time"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Ready         bool         `json:"ready"`
	NotReady      string       `json:"not_ready,omitempty"` // why not, when not ready
	Link          LinkStatus   `json:"link"`
	Spool         *SpoolStatus `json:"spool,omitempty"` // nil: spool not open
	// Rates are averaged over the last RateWindow, sampled every second.
	Rates Rates `json:"rates"`
	// DrainETA is how long until the spool is empty at the current net
	// rate (acked/s − accepted/s since the link came up): 0 when empty, -1
	// when not draining; DrainState says which case applies (DrainEmpty …).
	DrainETA   float64 `json:"drain_eta_seconds"`
	DrainState string  `json:"drain_state"`
	// History is the last hour (nil without a spool).
	History *History `json:"history,omitempty"`
	// Outages are the last MaxOutages periods with the link not up, newest
	// (and the ongoing one) first.
	Outages []Outage       `json:"outages"`
	Clients map[string]int `json:"clients"` // connected, by protocol
	// Ingress is per protocol: clients and what was refused, by reason.
	Ingress []IngressStatus `json:"ingress"`
	// Duplicates are the messages acknowledged but not stored again, by
	// route and dedupe source.
	Duplicates []DuplicateCount `json:"duplicates"`
	// Salvage is the spool's salvage report when it was damaged at open
	// (nil: it was not): its fields as the spool reports them, in
	// snake_case (e.g. kept, lost, damaged, cause, completed).
	Salvage map[string]any `json:"salvage,omitempty"`
	// Upstreams are the upstreams, main first, when there are several
	// (upstreams in the configuration); absent with one.
	Upstreams []UpstreamStatus `json:"upstreams,omitempty"`
}

// UpstreamStatus is one upstream's share: its link and its spool's queue.
type UpstreamStatus struct {
	Name             string  `json:"name"`
	Link             string  `json:"link"` // up | connecting | down | ... (bridge.LinkState)
	Queued           int64   `json:"queued_messages"`
	QueuedBytes      int64   `json:"queued_bytes"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	Acked            uint64  `json:"acked"`
	Dropped          uint64  `json:"dropped"` // expired and overflow drops
	DeadLetters      int64   `json:"dead_letters"`
}

// LinkStatus summarises the upstream connections.
type LinkStatus struct {
	// State is "up" when every partition is up, the worst state (see
	// LinkStates) when none is, "partial" otherwise, and "none" without a
	// bridge.
	State        string            `json:"state"`
	Partitions   []LinkStats       `json:"partitions"`
	InFlight     int               `json:"in_flight"`
	Reconnects   uint64            `json:"reconnects"`
	Published    uint64            `json:"published"`
	Acked        uint64            `json:"acked"`
	Resent       uint64            `json:"resent"`
	Stalls       uint64            `json:"stalls"`
	DeadLettered uint64            `json:"dead_lettered"`
	Errors       map[string]uint64 `json:"errors"`
	// MaxRate is the drain's pacing (bridge.max_rate); zero: unpaced.
	MaxRate Pacing `json:"max_rate,omitzero"`
}

// Pacing is bridge.max_rate.
type Pacing struct {
	MessagesPerSecond float64 `json:"messages_per_second,omitempty"`
	BytesPerSecond    float64 `json:"bytes_per_second,omitempty"`
}

// SpoolStatus is the backlog.
type SpoolStatus struct {
	Messages         int64        `json:"messages"`
	Bytes            int64        `json:"bytes"`
	Leased           int          `json:"leased"`
	OldestAgeSeconds float64      `json:"oldest_age_seconds"`
	Lanes            []LaneStatus `json:"lanes"`
	DLQMessages      int64        `json:"dlq_messages"`
	DLQBytes         int64        `json:"dlq_bytes"`
	Full             bool         `json:"full"`
	// FileSize is the size of the spool file in bytes, the one number
	// the page, ferry_spool_file_size_bytes and `ferry spool stats` show
	// (spool.Stats.FileSize).
	FileSize int64 `json:"file_size_bytes"`
	// StoredBytes is what MaxBytes caps: queue, dead letters and
	// retained messages. MaxBytes, MaxMessages: the caps, 0 for none.
	StoredBytes int64 `json:"stored_bytes"`
	MaxBytes    int64 `json:"max_bytes"`
	MaxMessages int64 `json:"max_messages"`
	// UsedPercent is how full the spool is against the nearer of its caps
	// (stored bytes of max_bytes, messages of max_messages); -1 without a
	// cap.
	UsedPercent float64           `json:"used_percent"`
	Accepted    uint64            `json:"accepted"`
	Duplicates  uint64            `json:"duplicates"`
	Acked       uint64            `json:"acked"`
	Rejected    uint64            `json:"rejected"`
	Dropped     map[string]uint64 `json:"dropped"`
}

// LaneStatus is one priority lane.
type LaneStatus struct {
	Lane             int     `json:"lane"`
	Messages         int64   `json:"messages"`
	Bytes            int64   `json:"bytes"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// Routes are the names of the routes that feed the lane, in match
	// order (the default route last).
	Routes []string `json:"routes"`
}

// IngressStatus is one ingress protocol.
type IngressStatus struct {
	Protocol      string            `json:"protocol"`
	Connected     int               `json:"connected"`
	Refused       map[string]uint64 `json:"refused"` // messages, packets, frames and connections refused, by reason
	LocalDropped  uint64            `json:"local_dropped"`
	SlowConsumers uint64            `json:"slow_consumers"`
}

// DuplicateCount is the duplicates of one route.
type DuplicateCount struct {
	Route  string `json:"route"`
	Reason string `json:"reason"` // the route's dedupe source
	Count  uint64 `json:"count"`
}

// Status returns a snapshot for /api/status. Ready fields are filled by the
// HTTP handler.
func (m *Metrics) Status() Status {
	now := m.opts.Now()
	st := Status{
		GatewayID:     m.opts.GatewayID,
		Version:       m.opts.Version,
		Time:          now.UTC(),
		UptimeSeconds: now.Sub(m.started).Seconds(),
		Link:          LinkStatus{State: "none", Partitions: []LinkStats{}, Errors: map[string]uint64{}},
		DrainState:    DrainStopped,
		DrainETA:      -1,
		Clients:       map[string]int{},
		Ingress:       []IngressStatus{},
		Duplicates:    m.duplicates(),
		Salvage:       salvageFields(m.opts.Salvage),
	}
	st.Link.MaxRate = Pacing{MessagesPerSecond: m.opts.MaxRate, BytesPerSecond: m.opts.MaxByteRate}
	if m.opts.Upstreams != nil {
		if ups := m.opts.Upstreams(); len(ups) > 1 {
			st.Upstreams = ups
		}
	}
	if m.opts.Bridge != nil {
		b := m.opts.Bridge()
		l := &st.Link
		l.Partitions = append(l.Partitions, b.Links...)
		l.State = summarizeLinks(b.Links)
		for _, p := range b.Links {
			l.InFlight += p.InFlight
		}
		l.Reconnects, l.Published, l.Acked, l.Resent, l.Stalls, l.DeadLettered = b.Reconnects, b.Published, b.Acked, b.Resent, b.Stalls, b.DeadLettered
		for k, v := range b.Errors {
			l.Errors[k] = v
		}
	}
	if m.opts.Spool != nil {
		s := m.opts.Spool.Stats()
		ss := &SpoolStatus{
			Messages: s.Messages, Bytes: s.Bytes, Leased: s.Leased,
			OldestAgeSeconds: age(now, s.Oldest()),
			Lanes:            make([]LaneStatus, len(s.Lanes)),
			DLQMessages:      s.DLQMessages, DLQBytes: s.DLQBytes,
			Full: s.Full, FileSize: s.FileSize,
			StoredBytes: stored(&s), MaxBytes: m.opts.SpoolMaxBytes, MaxMessages: m.opts.SpoolMaxMessages,
			UsedPercent: usedPercent(stored(&s), m.opts.SpoolMaxBytes, s.Messages, m.opts.SpoolMaxMessages),
			Accepted:    s.Accepted, Duplicates: s.Duplicates, Acked: s.Acked, Rejected: s.Rejected,
			Dropped: map[string]uint64{},
		}
		var routes []RouteInfo
		if m.opts.Routes != nil {
			routes = m.opts.Routes()
		}
		for i, l := range s.Lanes {
			ss.Lanes[i] = LaneStatus{Lane: i, Messages: l.Messages, Bytes: l.Bytes, OldestAgeSeconds: age(now, l.Oldest), Routes: []string{}}
			for _, r := range routes {
				if !r.LocalOnly && int(r.Priority) == i {
					ss.Lanes[i].Routes = append(ss.Lanes[i].Routes, r.Name)
				}
			}
		}
		for i, n := range s.Dropped {
			ss.Dropped[spool.DropReasonNames[i]] = n
		}
		st.Spool = ss
		st.Rates = m.current(now)
		st.DrainState, st.DrainETA = drain(s.Messages, s.Leased, st.Link.State == LinkUp, st.Rates)
	}
	m.mu.Lock()
	st.Outages = m.smp.outageList(now)
	if m.opts.Spool != nil {
		st.History = m.smp.history()
	}
	m.mu.Unlock()
	if m.opts.Ingress != nil {
		for _, in := range m.opts.Ingress() {
			st.Clients[in.Protocol] += in.Connected
			is := IngressStatus{Protocol: in.Protocol, Connected: in.Connected, Refused: map[string]uint64{},
				LocalDropped: in.LocalDropped, SlowConsumers: in.SlowConsumers}
			for k, v := range in.Rejected {
				if v > 0 {
					is.Refused[k] = v
				}
			}
			st.Ingress = append(st.Ingress, is)
		}
	}
	return st
}

// usedPercent is how full the spool is against the nearer cap; -1 without
// one.
func usedPercent(bytes, maxBytes, msgs, maxMsgs int64) float64 {
	p := -1.0
	if maxBytes > 0 {
		p = max(p, 100*float64(bytes)/float64(maxBytes))
	}
	if maxMsgs > 0 {
		p = max(p, 100*float64(msgs)/float64(maxMsgs))
	}
	if p < 0 {
		return -1
	}
	return roundTo(p, 1)
}

func summarizeLinks(links []LinkStats) string {
	if len(links) == 0 {
		return LinkDown
	}
	up := 0
	for _, l := range links {
		if l.State == LinkUp {
			up++
		}
	}
	switch up {
	case len(links):
		return LinkUp
	case 0:
		for _, s := range LinkStates {
			for _, l := range links {
				if l.State == s {
					return s
				}
			}
		}
		return links[0].State
	}
	return "partial"
}

// HTTPOptions configure the HTTP handler.
type HTTPOptions struct {
	Metrics *Metrics
	// Ready reports whether the gateway serves: nil when the listeners are
	// up and the spool is open, else the reason. nil func: always ready.
	// The upstream link does not belong here: a gateway with the link down
	// is doing its job (spooling).
	Ready func() error
	// Spool, when set, is served under /api/spool/ for `ferry spool`
	// against a running gateway.
	Spool *spool.Spool
	// Upstreams are the spools of the upstreams entries by name, served
	// under /api/upstreams/NAME/spool/ alike.
	Upstreams map[string]*spool.Spool
	// Listener is the HTTP listener's configuration: the host names it
	// answers to and its login (listeners.http). The zero value answers to
	// loopback names and IP addresses, without a login.
	Listener config.HTTPListener
	Logger   *slog.Logger // nil: discard
}

//go:embed status.html
var statusPage []byte

// NewHTTPHandler returns the handler of the HTTP listener:
//
//	GET /metrics      Prometheus exposition (the Metrics registry)
//	GET /healthz      200 "ok" while the process serves HTTP
//	GET /readyz       200 when Ready() is nil, else 503; the body names the
//	                  link state either way
//	GET /api/status   Status as JSON (indented; ?compact: not, as the
//	                  page asks for it: half the size with an hour of history)
//	/api/spool/…      the spool admin API (with Spool; see spoolAPI)
//	GET /             the status page (self-contained; polls /api/status)
//
// Every request must name this gateway in its Host header (see
// HTTPListener.Hosts; 421 otherwise), and with a login configured every
// path but /healthz and /readyz needs it (401 otherwise).
func NewHTTPHandler(o HTTPOptions) http.Handler {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ready := o.Ready
	if ready == nil {
		ready = func() error { return nil }
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Metrics.Registry(), promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		link := o.Metrics.linkState()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\nlink: " + link + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\nlink: " + link + "\n"))
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		st := o.Metrics.Status()
		if err := ready(); err != nil {
			st.NotReady = err.Error()
		} else {
			st.Ready = true
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		if !r.URL.Query().Has("compact") {
			enc.SetIndent("", "  ")
		}
		if err := enc.Encode(st); err != nil {
			log.Debug("status write failed", "err", err)
		}
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
		_, _ = w.Write(statusPage)
	})
	g := newHTTPGuard(o.Listener, log)
	if o.Spool != nil {
		mux.Handle("/api/spool/", spoolAPI(o.Spool, g))
	}
	for name, sp := range o.Upstreams {
		// /api/upstreams/NAME/spool/… is /api/spool/… on NAME's spool.
		prefix := "/api/upstreams/" + name
		api := spoolAPI(sp, g)
		mux.HandleFunc(prefix+"/spool/", func(w http.ResponseWriter, r *http.Request) {
			r2 := r.Clone(r.Context())
			r2.URL.Path = "/api" + strings.TrimPrefix(r.URL.Path, prefix)
			r2.URL.RawPath = ""
			api.ServeHTTP(w, r2)
		})
	}
	g.next = mux
	return g
}

func (m *Metrics) linkState() string {
	if m.opts.Bridge == nil {
		return "none"
	}
	return summarizeLinks(m.opts.Bridge().Links)
}

// NewHTTPServer returns an http.Server for the handler with timeouts that
// keep slow or idle clients from holding connections.
func NewHTTPServer(addr string, h http.Handler, logger *slog.Logger) *http.Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}

// salvageFields turns the spool's salvage report into JSON fields by
// reflection, so that what the spool adds to its report shows on the page
// without a change here: snake_case names, errors as their text, zero
// times left out, and "summary", the report as text.
func salvageFields(rep *spool.SalvageReport) map[string]any {
	if rep == nil {
		return nil
	}
	out := map[string]any{"summary": fmt.Sprint(rep)}
	v := reflect.ValueOf(rep).Elem()
	for i := range v.NumField() {
		f, fv := v.Type().Field(i), v.Field(i)
		if !f.IsExported() || (fv.Kind() == reflect.Interface || fv.Kind() == reflect.Pointer) && fv.IsNil() {
			continue
		}
		switch x := fv.Interface().(type) {
		case error:
			out[snakeCase(f.Name)] = x.Error()
		case time.Time:
			if !x.IsZero() {
				out[snakeCase(f.Name)] = x
			}
		default:
			out[snakeCase(f.Name)] = x
		}
	}
	return out
}

// snakeCase turns a Go field name into a JSON key: RawScan → raw_scan,
// DLQKept → dlq_kept, LostIDs → lost_ids.
func snakeCase(s string) string {
	var b strings.Builder
	r := []rune(s)
	plural := func(i int) bool { // r[i] is the "s" of an acronym's plural
		return r[i] == 's' && (i+1 == len(r) || unicode.IsUpper(r[i+1]))
	}
	for i, c := range r {
		if unicode.IsUpper(c) {
			if i > 0 && (!unicode.IsUpper(r[i-1]) || i+1 < len(r) && unicode.IsLower(r[i+1]) && !plural(i+1)) {
				b.WriteByte('_')
			}
			c = unicode.ToLower(c)
		}
		b.WriteRune(c)
	}
	return b.String()
}

// FetchStatus reads /api/status from the gateway whose HTTP listener is at
// addr (host:port), as the demo and the chaos rig watch their child
// gateway. The listener must not require a login.
func FetchStatus(ctx context.Context, c *http.Client, addr string) (*Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/api/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/api/status: %s", resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("/api/status: %w", err)
	}
	return &st, nil
}
