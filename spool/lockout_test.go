package spool

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSalvageAfterBoltPanicAtOpen: when bbolt panics inside Open after it
// locked and mapped the file (here: a freelist page that was never
// written, with Open's own check skipped so that bbolt sees it), the
// salvage that follows is not locked out by bbolt's abandoned lock.
func TestSalvageAfterBoltPanicAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), Entry{Data: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // a clean Close writes a freelist page
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bf, err := openBoltFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fl := bf.meta().freelist
	bf.close()
	if fl == pgidNoFreelist {
		t.Skip("no freelist page written at Close")
	}
	clear(b[fl*4096 : (fl+1)*4096]) // bbolt panics reading it at Open
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	skipCheckForTest = true
	t.Cleanup(func() { skipCheckForTest = false })
	s, err = Open(path, Options{LockTimeout: 100e6})
	if err != nil {
		t.Fatalf("Open after bbolt panicked: %v", err)
	}
	defer s.Close()
	if s.Salvaged() == nil {
		t.Fatal("bbolt panicked on the file, yet it was not salvaged")
	}
	items, err := s.TryLease(10)
	if err != nil || len(items) != 1 || string(items[0].Data) != "kept" {
		t.Fatalf("after salvage: %v %v, want the one message", items, err)
	}
}
