package spool_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ferrymq/ferry/spool"
)

// TestOpenFormat1File: a spool written by the previous format (version 1
// records, testdata/format1.db, made by commit 27a3a37: 40 messages in
// lanes 0 and 5, some with a TTL or a dedupe key, one nacked, one dead
// letter, one acked and retained) opens without damage, keeps everything,
// takes new messages and reopens clean.
func TestOpenFormat1File(t *testing.T) {
	b, err := os.ReadFile("testdata/format1.db")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	opts := spool.Options{RetainDelivered: 24 * 365 * time.Hour, LowerLaneShare: -1, Verify: spool.VerifyAlways}
	s, err := spool.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if r := s.Salvaged(); r != nil {
		t.Fatalf("a format 1 file was salvaged: %v", r)
	}
	st := s.Stats()
	if st.Messages != 38 || st.DLQMessages != 1 || st.Retained != 1 {
		t.Fatalf("Stats: %d queued, %d dead, %d retained; want 38, 1, 1", st.Messages, st.DLQMessages, st.Retained)
	}
	if _, err := s.Put(t.Context(), spool.Entry{Priority: 5, Data: []byte("format2")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = spool.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r := s.Salvaged(); r != nil {
		t.Fatalf("salvaged after writing format 2 records into it: %v", r)
	}
	var got []string
	attempts := 0
	for {
		items, err := s.TryLease(100)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			got = append(got, string(it.Data))
			attempts += int(it.Attempts)
		}
	}
	if len(got) != 39 || got[len(got)-1] != "format2" || !slices.Contains(got, "format1-39") || attempts != 2 {
		t.Fatalf("leased %d (%v), attempts %d; want the 38 old messages and the new one, two nacked once", len(got), got, attempts)
	}
	dl, err := s.DLQ(0, 10)
	if err != nil || len(dl) != 1 || dl[0].Reason != "poison" {
		t.Fatalf("DLQ: %v %v", dl, err)
	}
	if n, err := s.Replay(t.Context(), time.Time{}); err != nil || n != 1 {
		t.Fatalf("Replay of the retained message: %d, %v", n, err)
	}
}
