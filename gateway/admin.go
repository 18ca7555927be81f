package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// SpoolAdmin is the operator's view of a spool: `ferry spool …` uses it on
// the file when no gateway runs, and through the running gateway's HTTP API
// when one holds the file.
type SpoolAdmin interface {
	Stats(ctx context.Context) (spool.Stats, error)
	DLQ(ctx context.Context, afterID uint64, max int) ([]DeadLetter, error)
	Requeue(ctx context.Context, ids ...uint64) (int, error)
	PurgeDLQ(ctx context.Context, ids ...uint64) (int, error)
	Replay(ctx context.Context, since time.Time) (int, error)
	Compact(ctx context.Context) (before, after int64, err error)
	// Where says what is being operated on, for messages.
	Where() string
	Close() error
}

// DeadLetter is a dead-lettered message as an operator sees it (`ferry
// spool dlq ls`, GET /api/spool/dlq): the spool's bookkeeping and the
// message's own fields, decoded from the stored record.
type DeadLetter struct {
	ID         uint64    `json:"id"`
	Lane       uint8     `json:"lane"`
	Attempts   uint32    `json:"attempts"` // deliveries that ended in a refusal or a lease expiry
	Reason     string    `json:"reason"`
	EnqueuedAt time.Time `json:"enqueued_at"` // accepted into the spool
	DeadAt     time.Time `json:"dead_at"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`

	MsgID         string             `json:"msg_id,omitempty"`
	Topic         string             `json:"topic"`
	UpstreamTopic string             `json:"upstream_topic,omitempty"`
	QoS           byte               `json:"qos"`
	ContentType   string             `json:"content_type,omitempty"`
	Headers       []DeadLetterHeader `json:"headers,omitempty"` // STOMP headers, MQTT 5 user properties
	Protocol      string             `json:"protocol,omitempty"`
	ClientID      string             `json:"client_id,omitempty"`
	Username      string             `json:"username,omitempty"`
	PayloadBytes  int                `json:"payload_bytes"`
	Payload       []byte             `json:"payload"` // base64 in JSON

	// DecodeError says why the stored record is not a message this build
	// reads (the message fields are then empty); Record holds its bytes.
	DecodeError string `json:"decode_error,omitempty"`
	Record      []byte `json:"record,omitempty"`
}

// DeadLetterHeader is one header of a DeadLetter, in the message's order.
type DeadLetterHeader struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func deadLetterOf(d spool.DeadLetter) DeadLetter {
	out := DeadLetter{
		ID: d.ID, Lane: d.Priority, Attempts: d.Attempts, Reason: d.Reason,
		EnqueuedAt: d.EnqueuedAt, DeadAt: d.DeadAt, ExpiresAt: d.ExpiresAt,
	}
	m, err := message.Decode(d.Data)
	if err != nil {
		out.DecodeError, out.Record = err.Error(), d.Data
		return out
	}
	out.MsgID, out.Topic, out.UpstreamTopic, out.QoS, out.ContentType = m.ID, m.Topic, m.UpstreamTopic, m.QoS, m.ContentType
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, DeadLetterHeader{Key: h.Key, Value: h.Value})
	}
	if m.Source.Protocol != message.ProtoUnknown {
		out.Protocol = m.Source.Protocol.String()
	}
	out.ClientID, out.Username = m.Source.ClientID, m.Source.Username
	out.PayloadBytes, out.Payload = len(m.Payload), m.Payload
	return out
}

func deadLettersOf(dl []spool.DeadLetter) []DeadLetter {
	out := make([]DeadLetter, len(dl))
	for i, d := range dl {
		out[i] = deadLetterOf(d)
	}
	return out
}

// AdminOptions say how to log in to a running gateway's HTTP API when it
// has listeners.http.auth. Nothing set: no login is sent.
type AdminOptions struct {
	// Upstream names the spool: "" or "main" the gateway's, else the
	// upstreams entry's own file.
	Upstream string
	Token    string // bearer token; wins over Password
	Username string // basic; "": listeners.http.auth.username
	Password string // basic
}

// ErrHTTPLogin is returned when the running gateway's HTTP API refuses the
// login (or its absence).
var ErrHTTPLogin = errors.New("the gateway's HTTP API refused the login (listeners.http.auth)")

// OpenSpoolAdmin opens the spool of cfg directly; when a running gateway
// holds it, it goes through that gateway's HTTP API instead (changes need a
// loopback connection or a login). The error names the file and the way
// out when neither works.
func OpenSpoolAdmin(cfg *config.Config, o AdminOptions) (SpoolAdmin, error) {
	path, opts, api := cfg.Spool.Path, cfg.SpoolOptions(nil), ""
	if o.Upstream != "" && o.Upstream != config.MainUpstream {
		i := slices.Index(cfg.UpstreamNames(), o.Upstream) - 1
		if i < 0 {
			return nil, fmt.Errorf("no upstream named %q (have %s)", o.Upstream, strings.Join(cfg.UpstreamNames(), ", "))
		}
		path, opts, api = cfg.UpstreamSpoolPath(i), cfg.UpstreamSpoolOptions(i, nil), "/api/upstreams/"+o.Upstream
	}
	opts.LockTimeout = 200 * time.Millisecond
	s, err := spool.Open(path, opts)
	if err == nil {
		return fileAdmin{s}, nil
	}
	if !errors.Is(err, spool.ErrLocked) {
		return nil, err
	}
	addr := cfg.Listeners.HTTP.Address
	if addr == "" {
		return nil, fmt.Errorf("%w; the gateway holding it has no HTTP listener: stop it to work on the file", err)
	}
	h := &httpAdmin{base: "http://" + loopbackDial(addr), api: api, client: &http.Client{Timeout: 10 * time.Minute}}
	if t := cfg.ListenerTLS("http"); t != nil {
		tc, err := pinnedTLS(t.CertFile)
		if err != nil {
			return nil, fmt.Errorf("listeners.http.tls.cert_file: %w", err)
		}
		h.base = "https://" + loopbackDial(addr)
		h.client.Transport = &http.Transport{TLSClientConfig: tc}
	}
	switch {
	case o.Token != "":
		h.auth = "Bearer " + o.Token
	case o.Password != "":
		user := o.Username
		if user == "" {
			user = cfg.Listeners.HTTP.Auth.Username
		}
		h.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+o.Password))
	}
	if _, err2 := h.Stats(context.Background()); err2 != nil {
		if errors.Is(err2, ErrHTTPLogin) {
			return nil, fmt.Errorf("%s holds the spool; %w", h.Where(), err2)
		}
		return nil, fmt.Errorf("%w; its HTTP API at %s did not answer: %w", err, addr, err2)
	}
	return h, nil
}

// pinnedTLS trusts exactly the first certificate in certFile: the one the
// gateway serves on its HTTP listener, read from the same configuration.
// The CA behind it may be unknown here and the certificate need not name
// the loopback address that `ferry spool` dials.
func pinnedTLS(certFile string) (*tls.Config, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate in it", certFile)
	}
	want := b.Bytes
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], want) {
				return fmt.Errorf("the HTTP listener's certificate is not the one in %s", certFile)
			}
			return nil
		},
	}, nil
}

// loopbackDial turns a listen address into one to dial (":8080" and
// "0.0.0.0:8080" listen on loopback too).
func loopbackDial(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

type fileAdmin struct{ *spool.Spool }

func (f fileAdmin) Stats(context.Context) (spool.Stats, error) { return f.Spool.Stats(), nil }
func (f fileAdmin) DLQ(_ context.Context, after uint64, max int) ([]DeadLetter, error) {
	dl, err := f.Spool.DLQ(after, max)
	return deadLettersOf(dl), err
}
func (f fileAdmin) Where() string { return f.Path() }

// httpAdmin talks to the running gateway's /api/spool endpoints.
type httpAdmin struct {
	base   string
	api    string // "" for the main spool, /api/upstreams/NAME for an upstream's
	auth   string // Authorization header, "" for none
	client *http.Client
}

func (h *httpAdmin) Where() string {
	if h.api != "" {
		return "the running gateway at " + h.base + " (" + strings.TrimPrefix(h.api, "/api/") + ")"
	}
	return "the running gateway at " + h.base
}
func (h *httpAdmin) Close() error { return nil }

func (h *httpAdmin) do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	if h.api != "" {
		path = h.api + strings.TrimPrefix(path, "/api") // /api/upstreams/NAME/spool/…
	}
	req, err := http.NewRequestWithContext(ctx, method, h.base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set(AdminHeader, "ferry/"+Version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if h.auth != "" {
		req.Header.Set("Authorization", h.auth)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		err := fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(msg)))
		if resp.StatusCode == http.StatusUnauthorized {
			err = fmt.Errorf("%w: %w", ErrHTTPLogin, err)
		}
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (h *httpAdmin) Stats(ctx context.Context) (spool.Stats, error) {
	var st spool.Stats
	return st, h.do(ctx, http.MethodGet, "/api/spool/stats", nil, &st)
}

func (h *httpAdmin) DLQ(ctx context.Context, after uint64, max int) ([]DeadLetter, error) {
	var out []DeadLetter
	q := url.Values{"after": {strconv.FormatUint(after, 10)}, "max": {strconv.Itoa(max)}}
	return out, h.do(ctx, http.MethodGet, "/api/spool/dlq?"+q.Encode(), nil, &out)
}

type countReply struct {
	N      int   `json:"n"`
	Before int64 `json:"before,omitempty"`
	After  int64 `json:"after,omitempty"`
}

func (h *httpAdmin) Requeue(ctx context.Context, ids ...uint64) (int, error) {
	var r countReply
	return r.N, h.do(ctx, http.MethodPost, "/api/spool/dlq/requeue"+allIfNone(ids), ids, &r)
}

func (h *httpAdmin) PurgeDLQ(ctx context.Context, ids ...uint64) (int, error) {
	var r countReply
	return r.N, h.do(ctx, http.MethodPost, "/api/spool/dlq/purge"+allIfNone(ids), ids, &r)
}

// allIfNone keeps the SpoolAdmin contract (no ids: all) over HTTP, where an
// empty list alone is refused.
func allIfNone(ids []uint64) string {
	if len(ids) == 0 {
		return "?all=1"
	}
	return ""
}

func (h *httpAdmin) Replay(ctx context.Context, since time.Time) (int, error) {
	var r countReply
	return r.N, h.do(ctx, http.MethodPost, "/api/spool/replay?since="+url.QueryEscape(since.Format(time.RFC3339Nano)), nil, &r)
}

func (h *httpAdmin) Compact(ctx context.Context) (int64, int64, error) {
	var r countReply
	err := h.do(ctx, http.MethodPost, "/api/spool/compact", nil, &r)
	return r.Before, r.After, err
}

// spoolAPI serves /api/spool/… for `ferry spool` against a running gateway.
// Reads are served to whoever passes the guard (Host names, login). Changes
// (POST) must also be non-simple requests from this origin (AdminHeader,
// http.CrossOriginProtection) and come from a loopback client or one that
// logged in; each is logged with the client and what it changed.
func spoolAPI(s *spool.Spool, g *httpGuard) http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_ = json.NewEncoder(w).Encode(v)
	}
	cop := http.NewCrossOriginProtection()
	// change wraps a spool change: fn does it and returns what it did as
	// log attributes.
	change := func(op string, fn func(w http.ResponseWriter, r *http.Request) ([]any, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if err := cop.Check(r); err != nil {
				g.refuse(w, r, http.StatusForbidden, "cross_origin", "spool changes are refused to other origins: "+err.Error())
				return
			}
			client := r.Header.Get(AdminHeader)
			if client == "" {
				g.refuse(w, r, http.StatusForbidden, "no_admin_header",
					"spool changes need the "+AdminHeader+" header (ferry spool sends it)")
				return
			}
			user := httpUser(r)
			if host, _, _ := net.SplitHostPort(r.RemoteAddr); user == "" {
				if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
					g.refuse(w, r, http.StatusForbidden, "not_loopback",
						"spool changes are served to loopback clients, or to clients that log in (listeners.http.auth)")
					return
				}
			}
			// Compacting or replaying a big spool on a Pi outlasts the
			// server's write timeout; the CLI waits for the answer.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
			what, err := fn(w, r)
			attrs := append([]any{"op", op, "remote", r.RemoteAddr, "client", client, "user", user}, what...)
			if err != nil {
				g.log.Warn("spool change failed", append(attrs, "err", err)...)
				return
			}
			g.log.Info("spool changed", attrs...)
		}
	}
	ids := func(r *http.Request) ([]uint64, error) {
		var ids []uint64
		if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&ids); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("body: want a JSON array of message ids: %w", err)
		}
		return ids, nil
	}
	mux.HandleFunc("GET /api/spool/stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, s.Stats()) })
	mux.HandleFunc("GET /api/spool/dlq", func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		max, err := strconv.Atoi(r.URL.Query().Get("max"))
		switch {
		case err != nil || max <= 0:
			max = 100
		case max > 100_000:
			max = 100_000
		}
		dl, err := s.DLQ(after, max)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, deadLettersOf(dl))
	})
	// failed answers an error and hands it to change for the log.
	failed := func(w http.ResponseWriter, code int, err error) ([]any, error) {
		http.Error(w, err.Error(), code)
		return nil, err
	}
	bulk := func(op string, fn func(context.Context, ...uint64) (int, error)) http.HandlerFunc {
		return change(op, func(w http.ResponseWriter, r *http.Request) ([]any, error) {
			list, err := ids(r)
			if err != nil {
				return failed(w, http.StatusBadRequest, err)
			}
			// No ids means every dead letter to the spool; an empty body
			// must not do that by accident: "all" is asked for explicitly.
			all := r.URL.Query().Get("all") == "1"
			if len(list) == 0 && !all {
				return failed(w, http.StatusBadRequest, errors.New("body: give a JSON array of message ids, or ?all=1 for every dead letter"))
			}
			n, err := fn(r.Context(), list...)
			what := []any{"ids", len(list), "all", len(list) == 0, "n", n}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return what, err
			}
			writeJSON(w, countReply{N: n})
			return what, nil
		})
	}
	mux.HandleFunc("POST /api/spool/dlq/requeue", bulk("dlq_requeue", s.Requeue))
	mux.HandleFunc("POST /api/spool/dlq/purge", bulk("dlq_purge", s.PurgeDLQ))
	mux.HandleFunc("POST /api/spool/replay", change("replay", func(w http.ResponseWriter, r *http.Request) ([]any, error) {
		since, err := time.Parse(time.RFC3339Nano, r.URL.Query().Get("since"))
		if err != nil {
			return failed(w, http.StatusBadRequest, fmt.Errorf("since: want an RFC 3339 time: %w", err))
		}
		n, err := s.Replay(r.Context(), since)
		what := []any{"since", since, "n", n}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return what, err
		}
		writeJSON(w, countReply{N: n})
		return what, nil
	}))
	mux.HandleFunc("POST /api/spool/compact", change("compact", func(w http.ResponseWriter, r *http.Request) ([]any, error) {
		before, after, err := s.Compact(r.Context())
		if err != nil {
			return failed(w, http.StatusInternalServerError, err)
		}
		writeJSON(w, countReply{Before: before, After: after})
		return []any{"bytes_before", before, "bytes_after", after}, nil
	}))
	return mux
}
