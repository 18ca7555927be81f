package spool

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzDecodeRecord: decodeRecord never panics, and whatever it accepts
// encodes back to the same bytes under the same key.
func FuzzDecodeRecord(f *testing.F) {
	r := record{kind: kindQueued, priority: 3, attempts: 2, enqueued: 1, expires: 2, data: []byte("payload")}
	f.Add(u64(7), r.encode(7))
	d := record{kind: kindDead, priority: 9, stamp: 5, text: "poison: too large", data: []byte{0}}
	f.Add(u64(1), d.encode(1))
	f.Add(u64(1), []byte{})
	f.Add([]byte{1, 2, 3}, r.encode(7))
	f.Fuzz(func(t *testing.T, key, v []byte) {
		got, err := decodeRecord(key, v)
		if err != nil {
			return
		}
		if again := got.encode(idOf(key)); !bytes.Equal(again, v) {
			t.Fatalf("decode/encode not stable:\n in %x\nout %x", v, again)
		}
	})
}

// FuzzOpenDamagedFile: whatever bytes a spool file holds, Open returns a
// working spool (salvaged or not) or an error; it never panics or faults,
// and a spool it returns can be leased from.
func FuzzOpenDamagedFile(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "seed.db")
	s, err := Open(path, Options{})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 40 {
		if _, err := s.Put(context.Background(), Entry{Priority: uint8(i % 3), Data: bytes.Repeat([]byte{byte(i)}, 40+i*7)}); err != nil {
			f.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, uint32(0), byte(0))
	f.Add(good, uint32(4096*2+100), byte(0xff))
	f.Add(good[:len(good)/2], uint32(0), byte(0))
	f.Add([]byte("not a spool"), uint32(0), byte(0))
	f.Fuzz(func(t *testing.T, file []byte, at uint32, xor byte) {
		if len(file) > 1<<20 {
			return
		}
		b := append([]byte(nil), file...)
		if len(b) > 0 {
			b[int(at)%len(b)] ^= xor
		}
		p := filepath.Join(t.TempDir(), "s.db")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(p, Options{LockTimeout: 100 * time.Millisecond, Durability: Interval})
		if err != nil {
			return
		}
		defer s.Close()
		if _, err := s.TryLease(1000); err != nil {
			t.Fatalf("lease from an opened spool: %v", err)
		}
	})
}
