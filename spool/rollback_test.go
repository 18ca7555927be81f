package spool

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// cutCommitImage returns the file as a power cut during the fsync of one
// more commit can leave it: every page of the commit before (state), and
// the next commit's meta page (from next) without the pages it points to.
// grown: the file has next's size (bbolt grows a file and fsyncs that
// before it writes into it), its new pages zeros; else state's.
func cutCommitImage(t *testing.T, state, next []byte, grown bool) []byte {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "next.db")
	if err := os.WriteFile(path, next, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := openBoltFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	if o := b.other(); o < 0 || b.metas[o].txid+1 != b.metas[b.cur].txid {
		t.Fatalf("the next image's meta pages are not one commit apart: %+v", b.metas)
	}
	off := int64(b.cur) * b.psize
	img := append([]byte(nil), state...)
	if grown && len(next) > len(img) {
		img = append(img, make([]byte, len(next)-len(img))...)
	}
	copy(img[off:off+b.psize], next[off:off+b.psize])
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

// fortyAndABatch stores 40 messages one commit each (dedupe keys k00…
// k39), then the 300 of dedupeEntries(keyRange(0, 300)) in one commit, and
// returns the file as it was before that last commit (state) and after it
// (next), both fsync'd; then it closes the spool.
func fortyAndABatch(t *testing.T, path string) (state, next []byte) {
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
	// Every Put returned after its fsync: what the file holds now is on
	// disk. Then one more commit.
	state = readFile(t, path)
	if _, err := s.PutBatch(ctx, dedupeEntries(keyRange(0, 300)...)); err != nil {
		t.Fatal(err)
	}
	next = readFile(t, path)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return state, next
}

// TestCutCommitRollsBack: a commit is fsync'd once, pages and meta page
// together, so a power cut during that fsync can leave its meta page on
// disk without its pages. Open returns to the commit before it — every
// message, dedupe key and count of that commit kept, nothing salvaged —
// and the file works on: the next commit and the next Open are clean.
func TestCutCommitRollsBack(t *testing.T) {
	for _, grown := range []bool{false, true} {
		t.Run(fmt.Sprintf("grown=%v", grown), func(t *testing.T) { testCutCommitRollsBack(t, grown) })
	}
}

func testCutCommitRollsBack(t *testing.T, grown bool) {
	dir := t.TempDir()
	state, next := fortyAndABatch(t, filepath.Join(dir, "spool.db"))
	cut := filepath.Join(dir, "cut.db")
	if err := os.WriteFile(cut, cutCommitImage(t, state, next, grown), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := checkedTree(cut); err == nil {
		t.Fatal("the cut image passes the check: the test builds no cut commit")
	}
	s, err := Open(cut, Options{LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Salvage != nil {
		t.Fatalf("the cut commit was salvaged (%+v), not rolled back", st.Salvage)
	}
	if st.RolledBack == 0 || st.Rescued != 0 {
		t.Fatalf("Stats.RolledBack %d, Rescued %d; want the commit before the cut one, and none of the cut one's messages (none of its pages is there)", st.RolledBack, st.Rescued)
	}
	if st.Messages != 40 || st.DedupeEntries != 40 {
		t.Fatalf("after the rollback: %d queued, %d dedupe keys; want 40 and 40", st.Messages, st.DedupeEntries)
	}
	items, err := s.TryLease(100)
	if err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		if want := fmt.Sprintf("m%02d", i); string(it.Data) != want {
			t.Fatalf("item %d is %q, want %q", i, it.Data, want)
		}
	}
	if len(items) != 40 {
		t.Fatalf("leased %d, want the 40 of the commit before the cut", len(items))
	}
	if !isDuplicate(t, s, "k07") {
		t.Fatal("a dedupe key of the kept commits was lost")
	}
	if isDuplicate(t, s, "key-0007") {
		t.Fatal("a dedupe key of the cut commit is known")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(cut, Options{LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if st := s.Stats(); st.RolledBack != 0 || st.Salvage != nil || st.Messages != 41 {
		t.Fatalf("the Open after: rolled back %d, salvage %v, %d queued; want 0, none, 41", st.RolledBack, st.Salvage, st.Messages)
	}
}

// TestCutCommitNeedsAWholeOlderTree: when the older tree is damaged too,
// the damage is not one cut commit, and Open salvages as before.
func TestCutCommitNeedsAWholeOlderTree(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	state, next := fortyAndABatch(t, path)
	img := cutCommitImage(t, state, next, true)
	// Damage the older tree as well: zero its root's page.
	b, err := openBoltFile(path)
	if err != nil {
		t.Fatal(err)
	}
	psize := b.psize
	b.close()
	cut := filepath.Join(dir, "cut.db")
	if err := os.WriteFile(cut, img, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err = openBoltFile(cut)
	if err != nil {
		t.Fatal(err)
	}
	root := b.metas[b.other()].root
	b.close()
	clear(img[int64(root)*psize : int64(root+1)*psize])
	if err := os.WriteFile(cut, img, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rollBackCutCommit(cut, fmt.Errorf("test")); err == nil {
		t.Fatal("rolled back onto a damaged older tree")
	}
	s, err := Open(cut, Options{LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if st := s.Stats(); st.RolledBack != 0 || st.Salvage == nil {
		t.Fatalf("rolled back %d, salvage %v; want a salvage", st.RolledBack, st.Salvage)
	}
}

// TestRolledBackCommitKeepsItsIntactMessages: damage to pages only the
// last commit wrote looks like a cut commit, but may hit a commit that
// was answered (a bit flip after the fsync). Open returns to the commit
// before it and stores the last commit's intact messages again, so that
// only the damaged record is lost.
func TestRolledBackCommitKeepsItsIntactMessages(t *testing.T) {
	dir := t.TempDir()
	_, img := fortyAndABatch(t, filepath.Join(dir, "spool.db"))
	i := bytes.Index(img, []byte("m-key-0150"))
	if i < 0 || bytes.Contains(img[i+1:], []byte("m-key-0150")) {
		t.Fatal("want exactly one copy of the record to damage")
	}
	img[i+7] ^= 1
	damaged := filepath.Join(dir, "damaged.db")
	if err := os.WriteFile(damaged, img, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(damaged, Options{LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	st := s.Stats()
	if st.RolledBack == 0 || st.Salvage != nil || st.Rescued != 299 {
		t.Fatalf("rolled back %d, salvage %v, rescued %d; want a rollback that stores the 299 intact messages again", st.RolledBack, st.Salvage, st.Rescued)
	}
	items, err := s.TryLease(1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 40+299 {
		t.Fatalf("leased %d, want 339", len(items))
	}
	next := 0
	for j, it := range items[40:] {
		if next == 150 {
			next++ // the damaged one
		}
		if want := fmt.Sprintf("m-key-%04d", next); string(it.Data) != want {
			t.Fatalf("rescued item %d is %q, want %q (in order)", j, it.Data, want)
		}
		next++
	}
}
