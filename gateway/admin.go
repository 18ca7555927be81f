package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry/spool"
)

// SpoolAdmin is the operator's view of a spool: `ferry spool …` uses it on
// the file when no gateway runs, and through the running gateway's HTTP API
// when one holds the file.
type SpoolAdmin interface {
	Stats(ctx context.Context) (spool.Stats, error)
	DLQ(ctx context.Context, afterID uint64, max int) ([]spool.DeadLetter, error)
	Requeue(ctx context.Context, ids ...uint64) (int, error)
	PurgeDLQ(ctx context.Context, ids ...uint64) (int, error)
	Replay(ctx context.Context, since time.Time) (int, error)
	Compact(ctx context.Context) (before, after int64, err error)
	// Where says what is being operated on, for messages.
	Where() string
	Close() error
}

// OpenSpoolAdmin opens the spool of cfg directly; when a running gateway
// holds it, it goes through that gateway's HTTP API instead (which must
// listen on loopback). The error names the file and the way out when
// neither works.
func OpenSpoolAdmin(cfg *Config) (SpoolAdmin, error) {
	opts := cfg.SpoolOptions(nil)
	opts.LockTimeout = 200 * time.Millisecond
	s, err := spool.Open(cfg.Spool.Path, opts)
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
	h := &httpAdmin{base: "http://" + loopbackDial(addr), client: &http.Client{Timeout: 10 * time.Minute}}
	if _, err2 := h.Stats(context.Background()); err2 != nil {
		return nil, fmt.Errorf("%w; its HTTP API at %s did not answer: %w", err, addr, err2)
	}
	return h, nil
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
func (f fileAdmin) DLQ(_ context.Context, after uint64, max int) ([]spool.DeadLetter, error) {
	return f.Spool.DLQ(after, max)
}
func (f fileAdmin) Where() string { return f.Path() }

// httpAdmin talks to the running gateway's /api/spool endpoints.
type httpAdmin struct {
	base   string
	client *http.Client
}

func (h *httpAdmin) Where() string { return "the running gateway at " + h.base }
func (h *httpAdmin) Close() error  { return nil }

func (h *httpAdmin) do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.base+path, r)
	if err != nil {
		return err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (h *httpAdmin) Stats(ctx context.Context) (spool.Stats, error) {
	var st spool.Stats
	return st, h.do(ctx, http.MethodGet, "/api/spool/stats", nil, &st)
}

func (h *httpAdmin) DLQ(ctx context.Context, after uint64, max int) ([]spool.DeadLetter, error) {
	var out []spool.DeadLetter
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
// Reads are open to whoever reaches the HTTP listener; changes are served
// only to clients on loopback (the operator on the device), since the HTTP
// listener has no login.
func spoolAPI(s *spool.Spool) http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	local := func(next http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				http.Error(w, "spool changes are served to loopback clients only", http.StatusForbidden)
				return
			}
			// Compacting or replaying a big spool on a Pi outlasts the
			// server's write timeout; the CLI waits for the answer.
			_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
			next(w, r)
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
		writeJSON(w, dl)
	})
	bulk := func(fn func(context.Context, ...uint64) (int, error)) http.HandlerFunc {
		return local(func(w http.ResponseWriter, r *http.Request) {
			list, err := ids(r)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			// No ids means every dead letter to the spool; an empty body
			// must not do that by accident: "all" is asked for explicitly.
			if len(list) == 0 && r.URL.Query().Get("all") != "1" {
				http.Error(w, "body: give a JSON array of message ids, or ?all=1 for every dead letter", http.StatusBadRequest)
				return
			}
			n, err := fn(r.Context(), list...)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			writeJSON(w, countReply{N: n})
		})
	}
	mux.HandleFunc("POST /api/spool/dlq/requeue", bulk(s.Requeue))
	mux.HandleFunc("POST /api/spool/dlq/purge", bulk(s.PurgeDLQ))
	mux.HandleFunc("POST /api/spool/replay", local(func(w http.ResponseWriter, r *http.Request) {
		since, err := time.Parse(time.RFC3339Nano, r.URL.Query().Get("since"))
		if err != nil {
			http.Error(w, "since: want an RFC 3339 time: "+err.Error(), http.StatusBadRequest)
			return
		}
		n, err := s.Replay(r.Context(), since)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, countReply{N: n})
	}))
	mux.HandleFunc("POST /api/spool/compact", local(func(w http.ResponseWriter, r *http.Request) {
		before, after, err := s.Compact(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, countReply{Before: before, After: after})
	}))
	return mux
}
