package spool

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// lastCommitImage stores 40 messages one commit each, then the 300 of
// dedupeEntries(keyRange(0, 300)) in one commit, and returns the file
// after it, read before Close as a SIGKILL leaves it: every Put returned
// after its fsync, so all 340 were acknowledged.
func lastCommitImage(t *testing.T, path string) []byte {
	t.Helper()
	ctx := context.Background()
	s, err := Open(path, Options{LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if _, err := s.Put(ctx, Entry{DedupeKey: fmt.Sprintf("k%02d", i), Data: fmt.Appendf(nil, "m%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutBatch(ctx, dedupeEntries(keyRange(0, 300)...)); err != nil {
		t.Fatal(err)
	}
	img := readFile(t, path)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return img
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDamagedLastCommitIsReported: damage to pages that only the last
// commit wrote, after that commit was fsync'd and answered (a bit flip, a
// disk that lost a write it confirmed), is damage like any other: Open
// salvages and reports the messages it could not read as lost. (With one
// fsync per commit such a file looked like a commit cut by a power loss,
// and Open returned to the commit before it and lost the damaged records
// without a word: the chaos rig's zero-page after SIGKILL found it.)
func TestDamagedLastCommitIsReported(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(img []byte, i int, psize int64)
	}{
		{"bit flip in a record", func(img []byte, i int, _ int64) { img[i+7] ^= 1 }},
		{"its page zeroed", func(img []byte, i int, psize int64) {
			p := int64(i) / psize * psize
			clear(img[p : p+psize])
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "spool.db")
			img := lastCommitImage(t, path)
			b, err := openBoltFile(path)
			if err != nil {
				t.Fatal(err)
			}
			psize := b.psize
			b.close()
			i := bytes.Index(img, []byte("m-key-0150"))
			if i < 0 || bytes.Contains(img[i+1:], []byte("m-key-0150")) {
				t.Fatal("want exactly one copy of the record to damage: the last commit's")
			}
			c.damage(img, i, psize)
			damaged := filepath.Join(dir, "damaged.db")
			if err := os.WriteFile(damaged, img, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(damaged, Options{LowerLaneShare: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			rep := s.Stats().Salvage
			if rep == nil {
				t.Fatal("no salvage report: an acknowledged message was damaged and nothing says so")
			}
			items, err := s.TryLease(1000)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Kept != len(items) || rep.Kept+rep.Lost != 340 {
				t.Fatalf("report %s; leased %d: want kept = leased and kept + lost = the 340 acknowledged", rep, len(items))
			}
			if rep.Lost == 0 {
				t.Fatalf("report %s: the damaged record is not counted lost", rep)
			}
			for _, it := range items {
				if string(it.Data) == "m-key-0150" {
					t.Fatalf("the damaged record came back intact: the test damaged nothing")
				}
			}
		})
	}
}
