package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/spool"
)

// POST /api/spool/dlq/purge with no body (or "[]", "null") must not purge
// the whole DLQ although an empty id list means "all" in the spool API:
// "all" has to be asked for with ?all=1.
func TestEmptyPurgeRequestIsRefused(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "s.db"), spool.Options{})
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
	items, _ := sp.Lease(ctx, 3)
	for _, it := range items {
		if err := sp.DeadLetter(ctx, it.ID, "poison"); err != nil {
			t.Fatal(err)
		}
	}
	req := httptest.NewRequest(http.MethodPost, "/api/spool/dlq/purge", nil)
	req.RemoteAddr = "127.0.0.1:5555"
	req.Host = "127.0.0.1:8080"
	req.Header.Set(AdminHeader, "test")
	rec := httptest.NewRecorder()
	h, _ := apiHandler(sp, config.HTTPListener{})
	h.ServeHTTP(rec, req)
	t.Logf("status %d body %s", rec.Code, rec.Body.String())
	if rec.Code != http.StatusBadRequest {
		t.Errorf("status %d, want 400", rec.Code)
	}
	if n := sp.Stats().DLQMessages; n != 3 {
		t.Fatalf("empty request purged the DLQ: %d dead letters left of 3", n)
	}
}
