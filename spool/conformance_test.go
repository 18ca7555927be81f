package spool_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spooltest"
)

// openSpool opens a bbolt spool in a fresh directory and closes it in
// Cleanup.
func openSpool(t *testing.T, opts spool.Options) (spooltest.Queue, func() spooltest.Queue) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	open := func() *spool.Spool {
		t.Helper()
		s, err := spool.Open(path, opts)
		if err != nil {
			t.Fatalf("Open(%s): %v", path, err)
		}
		return s
	}
	cur := open()
	t.Cleanup(func() {
		if err := cur.Close(); err != nil && !errors.Is(err, spool.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	reopen := func() spooltest.Queue {
		t.Helper()
		if err := cur.Close(); err != nil && !errors.Is(err, spool.ErrClosed) {
			t.Fatalf("Close before reopen: %v", err)
		}
		cur = open()
		return cur
	}
	return cur, reopen
}

func TestConformanceMemory(t *testing.T) {
	spooltest.Run(t, func(t *testing.T, opts spool.Options) (spooltest.Queue, func() spooltest.Queue) {
		m := spooltest.NewMemory(opts)
		t.Cleanup(func() { m.Close() })
		return m, func() spooltest.Queue { return m.Restart() }
	})
}

func TestConformanceBolt(t *testing.T) {
	spooltest.Run(t, openSpool)
}
