package spool

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// stateImage stores 20 messages and then 300 retained records in one
// commit (several leaf pages, one copy of each in the file), closes the
// spool and returns the file's path and its page size.
func stateImage(t *testing.T) (string, int64) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := s.Put(ctx, Entry{Data: fmt.Appendf(nil, "message-%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	ops := make([]StateOp, 300)
	for i := range ops {
		ops[i] = StatePut(StateRetained, fmt.Appendf(nil, "sensors/%04d", i), bytes.Repeat([]byte{'v'}, 100))
	}
	if err := s.ApplyState(ctx, ops...); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := openBoltFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	return path, b.psize
}

// TestSalvageReportsLostState: local state (retained messages, sessions)
// that a salvage could not copy is reported, as lost messages are: which
// kinds may have lost records, in the report, its text and the log. Before,
// the report counted the state records kept and said nothing of the rest:
// a device's retained message or session vanished without a word.
func TestSalvageReportsLostState(t *testing.T) {
	for _, c := range []struct {
		name string
		// damage damages img and returns how many retained records are
		// still intact in it.
		damage func(t *testing.T, img []byte, path string, psize int64) int
		want   []string // StateDamaged
	}{
		{"a page of retained records zeroed", func(t *testing.T, img []byte, _ string, psize int64) int {
			i := bytes.Index(img, []byte("sensors/0150"))
			if i < 0 || bytes.Contains(img[i+1:], []byte("sensors/0150")) {
				t.Fatal("want exactly one copy of the record to damage")
			}
			p := int64(i) / psize * psize
			n := bytes.Count(img[p:p+psize], []byte("sensors/"))
			clear(img[p : p+psize])
			return 300 - n // the records of the other pages are kept
		}, []string{"retained"}},
		{"the newest tree's root page zeroed", func(t *testing.T, img []byte, path string, psize int64) int {
			b, err := openBoltFile(path)
			if err != nil {
				t.Fatal(err)
			}
			root := int64(b.meta().root)
			b.close()
			clear(img[root*psize : (root+1)*psize])
			return 0 // the older tree's state may be stale: not brought back
		}, []string{"retained", "clients", "subscriptions", "inflight"}},
		// The tree of the other meta page may be a commit older: its state
		// is kept, and every kind named (it may be stale or short).
		{"the newest meta page damaged", func(t *testing.T, img []byte, path string, psize int64) int {
			b, err := openBoltFile(path)
			if err != nil {
				t.Fatal(err)
			}
			cur := int64(b.cur)
			b.close()
			img[cur*psize+pageHeaderSize+20] ^= 1 // inside the checksummed fields
			return 300                            // the older tree is the one before the last commit (Close's): it has them all
		}, []string{"retained", "clients", "subscriptions", "inflight"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, psize := stateImage(t)
			img := readFile(t, path)
			intact := c.damage(t, img, path, psize)
			if err := os.WriteFile(path, img, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path, Options{Verify: VerifyAlways})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			rep := s.Salvaged()
			if rep == nil {
				t.Fatal("no salvage report")
			}
			kept := 0
			if err := s.IterateState(StateRetained, nil, func(_, _ []byte) error { kept++; return nil }); err != nil {
				t.Fatal(err)
			}
			if rep.StateKept != intact || kept != intact {
				t.Fatalf("report %s; %d retained records after it: want the %d intact ones (of 300)", rep, kept, intact)
			}
			if !slices.Equal(rep.StateDamaged, c.want) {
				t.Fatalf("StateDamaged = %q, want %q (report %s)", rep.StateDamaged, c.want, rep)
			}
			if txt := rep.String(); !strings.Contains(txt, "local state") || !strings.Contains(txt, c.want[0]) {
				t.Fatalf("report text %q does not say which local state may be lost", txt)
			}
		})
	}
}
