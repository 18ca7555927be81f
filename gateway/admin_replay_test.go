package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/spool"
)

// POST /api/spool/replay?since=9999-01-01T00:00:00Z asks for what was
// accepted after the year 9999: nothing. The time does not fit int64
// nanoseconds, and the wrapped value made the spool replay every retained
// message (issue 11, item 10).
func TestReplaySinceFarFutureReplaysNothing(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{RetainDelivered: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	ctx := context.Background()
	for range 3 {
		if _, err := sp.Put(ctx, spool.Entry{Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	items, err := sp.Lease(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if err := sp.Ack(ctx, it.ID); err != nil {
			t.Fatal(err)
		}
	}
	if n := sp.Stats().Retained; n != 3 {
		t.Fatalf("retained %d, want 3", n)
	}
	h, _ := apiHandler(sp, config.HTTPListener{})
	for _, since := range []string{"9999-01-01T00:00:00Z", "2262-04-12T00:00:00Z", "3000-01-01T00:00:00+02:00"} {
		req := httptest.NewRequest(http.MethodPost, "/api/spool/replay?since="+url.QueryEscape(since), nil)
		req.RemoteAddr = "127.0.0.1:5555"
		req.Host = "127.0.0.1:8080"
		req.Header.Set(AdminHeader, "1")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		t.Logf("since %s: status %d body %s", since, rec.Code, rec.Body.String())
		if rec.Code != http.StatusOK {
			t.Fatalf("since %s: status %d", since, rec.Code)
		}
		if st := sp.Stats(); st.Messages != 0 || st.Retained != 3 {
			t.Fatalf("since %s replayed: %d queued, %d retained (want 0, 3)", since, st.Messages, st.Retained)
		}
	}
	// The far past still means "everything retained".
	n, err := sp.Replay(ctx, time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Second))
	if err != nil || n != 3 {
		t.Fatalf("Replay(year 1) = %d, %v; want 3", n, err)
	}
}
