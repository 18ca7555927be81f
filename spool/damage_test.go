package spool_test

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrymq/ferry/spool"
)

// fillAndClose makes a closed spool holding n messages in lane 0.
func fillAndClose(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{Durability: spool.Interval})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := s.Put(t.Context(), spool.Entry{Data: fmt.Appendf(nil, "message-%04d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// editBolt changes the file with bbolt directly, behind the spool's back,
// and commits once more, so that the trees of both meta pages have the
// change: a salvage finds no older, intact copy of what it damaged.
func editBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(*bolt.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func leaseCount(t *testing.T, s *spool.Spool) int {
	t.Helper()
	n := 0
	for {
		items, err := s.TryLease(500)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			return n
		}
		n += len(items)
	}
}

// TestCountsMismatchIsDamage (issue 9, defect 2): a file whose records do
// not add up to its stored counts (a tree some of whose pages are older
// than its meta bucket) is damage: it is salvaged and reported, and the
// spool it leaves says what it holds.
func TestCountsMismatchIsDamage(t *testing.T) {
	path := fillAndClose(t, 200)
	editBolt(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("lane0"))
		var keys [][]byte
		c := b.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < 60; k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		// As in a file of a build before commit records: the counts are
		// what must catch it.
		return tx.Bucket([]byte("meta")).Delete([]byte("commit"))
	})
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep := s.Salvaged()
	if rep == nil {
		t.Fatalf("opened a file whose lane holds 140 messages and whose counts say 200 without a damage report (Stats.Messages %d)", s.Stats().Messages)
	}
	t.Logf("report: %s", rep)
	if !strings.Contains(rep.Cause, `"lane0"`) {
		t.Errorf("cause %q does not say where (bucket lane0)", rep.Cause)
	}
	if st, n := s.Stats(), leaseCount(t, s); st.Messages != int64(n) {
		t.Errorf("after salvage Stats says %d messages, %d can be leased", st.Messages, n)
	}
}

// TestNoMetaBucketButRecordsIsSalvaged (defect 4): a file with a valid
// bbolt header and Ferry's records but no meta bucket (a damaged root) is a
// damaged spool, salvaged; not "not a ferry spool".
func TestNoMetaBucketButRecordsIsSalvaged(t *testing.T) {
	path := fillAndClose(t, 100)
	editBolt(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("meta")) })
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("Open: %v (want a salvage: every record is still there)", err)
	}
	defer s.Close()
	if s.Salvaged() == nil {
		t.Fatal("not salvaged")
	}
	if n := leaseCount(t, s); n != 100 {
		t.Fatalf("%d messages after salvage, want 100", n)
	}
}

// TestSalvageReportKept (defect 5): the report says kept and lost (or
// "unknown, at least N" after a raw scan) and where the file went, and it
// stays in the file: a later Open (ferry spool stats, metrics) shows it.
func TestSalvageReportKept(t *testing.T) {
	path := fillAndClose(t, 300)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	clear(b[:4096]) // meta page 0: the last transaction's meta, maybe: raw scan
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep := s.Salvaged()
	if rep == nil {
		t.Fatal("not salvaged")
	}
	t.Logf("report: %s", rep)
	if rep.Kept != 300 || !rep.RawScan || !rep.LostUnknown || rep.Lost != 0 {
		t.Errorf("report %+v: want kept 300, raw scan, lost unknown (at least 0)", rep)
	}
	if !strings.Contains(rep.String(), "lost unknown, at least 0") || !strings.Contains(rep.String(), rep.Damaged) {
		t.Errorf("report text %q", rep)
	}
	if _, err := os.Stat(rep.Damaged); err != nil {
		t.Errorf("damaged file: %v", err)
	}
	same := func(a, b *spool.SalvageReport) bool {
		return a != nil && a.Kept == b.Kept && a.Lost == b.Lost && a.LostUnknown == b.LostUnknown && a.Damaged == b.Damaged &&
			a.Cause == b.Cause && a.RawScan == b.RawScan && a.Completed.Equal(b.Completed)
	}
	if st := s.Stats(); !same(st.Salvage, rep) {
		t.Errorf("Stats.Salvage = %+v, want the report", st.Salvage)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Salvaged() != nil {
		t.Error("the salvaged file was salvaged again")
	}
	if got := s.Stats().Salvage; !same(got, rep) {
		t.Fatalf("after reopening, Stats.Salvage = %+v, want %+v", s.Stats().Salvage, rep)
	}
}

// TestCorruptionErrorSaysWhere: a damaged record is named by bucket and key.
func TestCorruptionErrorSaysWhere(t *testing.T) {
	path := fillAndClose(t, 10)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every copy of the record, so that no intact one is left to salvage.
	for off := 0; ; {
		i := strings.Index(string(b[off:]), "message-0007")
		if i < 0 {
			break
		}
		b[off+i+9] ^= 1
		off += i + 1
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, rep := spool.OpenSalvaged(t, path, spool.Options{})
	key := make([]byte, 8)
	binary.BigEndian.PutUint64(key, 8)
	if want := fmt.Sprintf(`bucket "lane0", key %x`, key); !strings.Contains(rep.Cause, want) {
		t.Fatalf("cause %q does not say %s", rep.Cause, want)
	}
}

// TestInterruptedCreateIsStarted: a power cut while the file was being
// created leaves a few pages of zeros and bbolt header; Open starts over
// (moving the remains aside) instead of refusing "not a ferry spool".
func TestInterruptedCreateIsStarted(t *testing.T) {
	init := spool.BboltCreated(t)
	if len(init) != 4*os.Getpagesize() {
		t.Fatalf("bbolt created a file of %d bytes, want 4 pages", len(init))
	}
	ps := os.Getpagesize()
	torn := func(keep ...int) []byte { // the init write with only these 512-byte sectors on disk
		b := make([]byte, len(init))
		for _, i := range keep {
			copy(b[i*512:(i+1)*512], init[i*512:])
		}
		return b
	}
	magicOnly := make([]byte, 16384)
	binary.LittleEndian.PutUint32(magicOnly[16:], 0xED0CDAED) // a meta page's magic, the rest lost
	for name, b := range map[string][]byte{
		"magic only": magicOnly,
		"zeros":      make([]byte, 16384),
		// A torn create: both meta pages lost, the freelist's and the
		// leaf's headers written (found by TestPowerCut: "not a ferry
		// spool").
		"freelist and leaf, no meta": torn(2*ps/512, 3*ps/512),
		"leaf only":                  torn(3 * ps / 512),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := spool.Open(path, spool.Options{})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			if s.Salvaged() == nil {
				t.Fatal("no report: the remains were not moved aside")
			}
			if d := s.Salvaged().StateDamaged; len(d) != 0 {
				t.Fatalf("StateDamaged = %q: a file whose creation was cut short never held state", d)
			}
			if _, err := s.Put(t.Context(), spool.Entry{Data: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEmptyFileIsReported: a spool file truncated to 0 bytes used to start
// empty without a word, its acknowledged messages gone. Now Open salvages
// it: the empty file is moved aside and the report says so.
func TestEmptyFileIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	rep := s.Salvaged()
	if rep == nil || !strings.Contains(rep.Cause, "empty") || rep.Damaged == "" {
		t.Fatalf("report %+v: an emptied spool must be reported", rep)
	}
	if _, err := os.Stat(rep.Damaged); err != nil {
		t.Fatalf("the empty file was not moved aside: %v", err)
	}
}
