package spool

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	bolt "go.etcd.io/bbolt"
)

func dedupeEntries(keys ...string) []Entry {
	es := make([]Entry, len(keys))
	for i, k := range keys {
		es[i] = Entry{DedupeKey: k, Data: []byte("m-" + k)}
	}
	return es
}

func keyRange(from, to int) []string {
	var ks []string
	for i := from; i < to; i++ {
		ks = append(ks, fmt.Sprintf("key-%04d", i))
	}
	return ks
}

// isDuplicate puts key as a checking Put and reports whether the spool
// still knew it (a duplicate) or stored it anew.
func isDuplicate(t *testing.T, s *Spool, key string) bool {
	t.Helper()
	r, err := s.Put(context.Background(), Entry{DedupeKey: key, Data: []byte("again-" + key)})
	if err != nil {
		t.Fatalf("Put %s: %v", key, err)
	}
	return r.Duplicate
}

// TestDedupeCap: at DedupeMaxEntries the oldest keys are forgotten first.
// A dedupe_exp entry lists the keys of one commit, and the cap forgets
// whole entries: after a commit of 40 keys over a cap of 100 the count
// may end up to 40 under it, never over it, and every key of the newest
// commits is still known.
func TestDedupeCap(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{DedupeMaxEntries: 100})
	for c := range 6 { // six commits of 40 keys: 240 recorded
		if _, err := s.PutBatch(ctx, dedupeEntries(keyRange(c*40, c*40+40)...)); err != nil {
			t.Fatal(err)
		}
		if n := s.Stats().DedupeEntries; n > 100 || (c >= 2 && n < 100-40) {
			t.Fatalf("after commit %d: %d dedupe keys, want between 60 and 100", c+1, n)
		}
	}
	for _, k := range keyRange(200, 240) {
		if !isDuplicate(t, s, k) {
			t.Fatalf("%s of the newest commit was forgotten", k)
		}
	}
	for _, k := range keyRange(0, 40) {
		if isDuplicate(t, s, k) {
			t.Fatalf("%s of the oldest commit is still known with a cap of 100", k)
		}
	}
}

// TestDedupeRenewedKeyOutlivesItsFirstListing: a key recorded again
// (a reused MQTT packet id) expires at its new time, though its first
// dedupe_exp entry, with the old time, is swept before.
func TestDedupeRenewedKeyOutlivesItsFirstListing(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	s := openTest(t, Options{DedupeWindow: time.Minute, Now: clk.Now})
	ctx := context.Background()
	if _, err := s.Put(ctx, Entry{DedupeKey: "pid-7", DedupeRecordOnly: true, Data: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	clk.Add(40 * time.Second)
	if _, err := s.Put(ctx, Entry{DedupeKey: "pid-7", DedupeRecordOnly: true, Data: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, Entry{DedupeKey: "other", Data: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	clk.Add(30 * time.Second)                                                                      // the first listing (at 60 s) is due, the renewal (100 s) is not
	testkit.Wait(t, "the first listing swept", func() bool { return dedupeExpEntries(t, s) == 2 }) // the renewal's and other's
	if n := s.Stats().DedupeEntries; n != 2 {
		t.Fatalf("%d dedupe keys after the first listing was swept, want 2 (pid-7 renewed, other)", n)
	}
	if !isDuplicate(t, s, "pid-7") {
		t.Fatal("the renewed key was forgotten with its first listing")
	}
	clk.Add(time.Minute)
	testkit.Wait(t, "every key swept", func() bool { return s.Stats().DedupeEntries == 0 })
}

// dedupeExpEntries counts the entries of dedupe_exp.
func dedupeExpEntries(t *testing.T, s *Spool) int {
	t.Helper()
	n := 0
	_ = s.view(func(tx *bolt.Tx) error {
		n = tx.Bucket(bktDedupeExp).Stats().KeyN
		return nil
	})
	return n
}

// TestDedupeFormat2Entries: a format 2 file lists one key per dedupe_exp
// entry (expires_at ‖ key → nil). This build reads such entries in the
// sweep and the cap, and marks the file format 3 when it opens it.
func TestDedupeFormat2Entries(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_000_000, 0)}
	path := filepath.Join(t.TempDir(), "s.db")
	opts := Options{DedupeWindow: time.Minute, DedupeMaxEntries: 3, Now: clk.Now}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutBatch(context.Background(), dedupeEntries("a", "b")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Rewrite the index as format 2 wrote it.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		xb := tx.Bucket(bktDedupeExp)
		var lists [][]byte
		_ = xb.ForEach(func(k, _ []byte) error { lists = append(lists, append([]byte(nil), k...)); return nil })
		for _, k := range lists {
			if err := xb.Delete(k); err != nil {
				return err
			}
		}
		for _, key := range []string{"a", "b"} {
			v := tx.Bucket(bktDedupe).Get([]byte(key))
			if err := xb.Put(timeKey(int64(idOf(v[:8])), []byte(key)), nil); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bktMeta)
		if err := meta.Put(keyFormat, u64(2)); err != nil {
			return err
		}
		_, next, c, err := decodeCommit(meta.Get(keyCommit))
		if err != nil {
			return err
		}
		return stamp(tx, next, &c) // this transaction is ours, not damage
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var format uint64
	_ = s.view(func(tx *bolt.Tx) error { format = idOf(tx.Bucket(bktMeta).Get(keyFormat)); return nil })
	if format != formatVersion {
		t.Fatalf("format %d after opening a format 2 file, want %d", format, formatVersion)
	}
	if rep := s.Salvaged(); rep != nil {
		t.Fatalf("the rewritten file was salvaged: %+v", rep)
	}
	clk.Add(time.Second)
	// Two more keys pass the cap of 3: the oldest format 2 entry goes.
	if _, err := s.PutBatch(context.Background(), dedupeEntries("c", "d")); err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().DedupeEntries; n != 3 {
		t.Fatalf("%d dedupe keys over a cap of 3 with format 2 entries, want 3", n)
	}
	// b first: a is stored anew, and, over the cap again, forgets b.
	if !isDuplicate(t, s, "b") || isDuplicate(t, s, "a") {
		t.Fatal("the cap did not forget the oldest format 2 key (a) alone")
	}
	clk.Add(2 * time.Minute)
	testkit.Wait(t, "format 2 and 3 entries swept", func() bool { return s.Stats().DedupeEntries == 0 && dedupeExpEntries(t, s) == 0 })
}
