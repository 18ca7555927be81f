package gateway

import (
	_ "embed"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrymq/ferry/spool"
)

// Status is the JSON document of /api/status and the data of the status
// page.
type Status struct {
	GatewayID     string         `json:"gateway_id"`
	Version       string         `json:"version"`
	Time          time.Time      `json:"time"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	Ready         bool           `json:"ready"`
	NotReady      string         `json:"not_ready,omitempty"` // why not, when not ready
	Link          LinkStatus     `json:"link"`
	Spool         *SpoolStatus   `json:"spool,omitempty"` // nil: spool not open
	Rates         Rates          `json:"rates"`
	DrainETA      float64        `json:"drain_eta_seconds"` // 0: nothing to drain; -1: not draining
	Clients       map[string]int `json:"clients"`           // connected, by protocol
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
}

// SpoolStatus is the backlog.
type SpoolStatus struct {
	Messages         int64             `json:"messages"`
	Bytes            int64             `json:"bytes"`
	Leased           int               `json:"leased"`
	OldestAgeSeconds float64           `json:"oldest_age_seconds"`
	Lanes            []LaneStatus      `json:"lanes"`
	DLQMessages      int64             `json:"dlq_messages"`
	DLQBytes         int64             `json:"dlq_bytes"`
	Full             bool              `json:"full"`
	FileSize         int64             `json:"file_size"`
	Accepted         uint64            `json:"accepted"`
	Duplicates       uint64            `json:"duplicates"`
	Acked            uint64            `json:"acked"`
	Rejected         uint64            `json:"rejected"`
	Dropped          map[string]uint64 `json:"dropped"`
}

// LaneStatus is one priority lane.
type LaneStatus struct {
	Lane             int     `json:"lane"`
	Messages         int64   `json:"messages"`
	Bytes            int64   `json:"bytes"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
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
		Clients:       map[string]int{},
	}
	if m.opts.Spool != nil {
		s := m.opts.Spool.Stats()
		ss := &SpoolStatus{
			Messages: s.Messages, Bytes: s.Bytes, Leased: s.Leased,
			OldestAgeSeconds: age(now, s.Oldest()),
			Lanes:            make([]LaneStatus, len(s.Lanes)),
			DLQMessages:      s.DLQMessages, DLQBytes: s.DLQBytes,
			Full: s.Full, FileSize: s.FileSize,
			Accepted: s.Accepted, Duplicates: s.Duplicates, Acked: s.Acked, Rejected: s.Rejected,
			Dropped: map[string]uint64{},
		}
		for i, l := range s.Lanes {
			ss.Lanes[i] = LaneStatus{Lane: i, Messages: l.Messages, Bytes: l.Bytes, OldestAgeSeconds: age(now, l.Oldest)}
		}
		for i, n := range s.Dropped {
			ss.Dropped[spool.DropReasonNames[i]] = n
		}
		st.Spool = ss
		st.Rates = m.observeRates(now, &s)
		st.DrainETA = st.Rates.drainETA
	}
	if m.opts.Ingress != nil {
		for _, in := range m.opts.Ingress() {
			st.Clients[in.Protocol] += in.Connected
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
	return st
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
	Ready  func() error
	Logger *slog.Logger // nil: discard
}

//go:embed status.html
var statusPage []byte

// NewHTTPHandler returns the handler of the HTTP listener:
//
//	GET /metrics      Prometheus exposition (the Metrics registry)
//	GET /healthz      200 "ok" while the process serves HTTP
//	GET /readyz       200 when Ready() is nil, else 503; the body names the
//	                  link state either way
//	GET /api/status   Status as JSON
//	GET /             the status page (self-contained; polls /api/status)
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
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, _ *http.Request) {
		st := o.Metrics.Status()
		if err := ready(); err != nil {
			st.NotReady = err.Error()
		} else {
			st.Ready = true
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			log.Debug("status write failed", "err", err)
		}
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
		_, _ = w.Write(statusPage)
	})
	return mux
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
