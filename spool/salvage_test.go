package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestSalvageTakesAnIntactCopyOfADamagedRecord: in Interval durability a
// power cut can tear a page of an unsynced commit whose meta page reached
// the disk, so that the newest trees are whole but for a damaged record
// while its last synced copy is intact on a page no tree uses any more
// (the pin kept it from being overwritten; see repin). Salvage must take
// that copy: the message was acknowledged. It must not take the other
// records of that old page: one of them was delivered and acked since.
// Found by TestPowerCut/interval (seed 1796412382816709722, image 681:
// lane4's record 809 torn in the two newest trees, intact on the page the
// last fsync left it on); the salvage reported it lost, exactly, without
// looking for it.
func TestSalvageTakesAnIntactCopyOfADamagedRecord(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path, Options{LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if _, err := s.Put(ctx, Entry{Data: fmt.Appendf(nil, "message-%04d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The lane's leaf as the last fsync left it (all 40 records).
	b := readFile(t, path)
	psize := int64(4096)
	at := bytes.Index(b, []byte("message-0007"))
	if at < 0 || bytes.Contains(b[at+1:], []byte("message-0007")) {
		t.Fatal("setup: want the record once in the file")
	}
	old := append([]byte(nil), b[int64(at)/psize*psize:][:psize]...)

	// Since then message-0003 was delivered and acknowledged.
	s, err = Open(path, Options{LowerLaneShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	items, err := s.TryLease(100)
	if err != nil || len(items) != 40 {
		t.Fatalf("lease: %d items, %v", len(items), err)
	}
	for _, it := range items {
		if string(it.Data) == "message-0003" {
			if err := s.Ack(ctx, it.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The old leaf is on a page neither meta page's tree uses, and the
	// record's copy in the trees is torn.
	b = readFile(t, path)
	bf, err := openBoltFile(path)
	if err != nil {
		t.Fatal(err)
	}
	used := map[uint64]bool{0: true, 1: true}
	for _, i := range []int{bf.cur, bf.other()} {
		_, _, w, err := bf.walkContents(&bf.metas[i], false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for pg := range bf.metas[bf.cur].pgid {
			if w.seen.has(pg) {
				used[pg] = true
			}
		}
		if fl := bf.metas[i].freelist; fl != pgidNoFreelist {
			over := uint64(binary.LittleEndian.Uint32(b[int64(fl)*psize+12:]))
			for pg := fl; pg <= fl+over; pg++ {
				used[pg] = true
			}
		}
	}
	high := bf.metas[bf.cur].pgid
	bf.close()
	free := high // the first page no tree uses, else the one past the high-water mark
	for pg := uint64(2); pg < high; pg++ {
		if !used[pg] {
			free = pg
			break
		}
	}
	if need := int64(free+1) * psize; int64(len(b)) < need {
		b = append(b, make([]byte, need-int64(len(b)))...)
	}
	at = bytes.Index(b, []byte("message-0007"))
	if at < 0 || !used[uint64(int64(at)/psize)] || bytes.Contains(b[at+1:], []byte("message-0007")) {
		t.Fatal("setup: want the record once in the file, on a page of the trees")
	}
	b[at+len("message-000")] ^= 0x01 // under the record's checksum
	binary.LittleEndian.PutUint64(old, free)
	copy(b[int64(free)*psize:], old)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}

	s, rep := OpenSalvaged(t, path, Options{LowerLaneShare: -1})
	t.Logf("report: %s", rep)
	if rep.Kept != 39 || rep.Lost != 0 || rep.LostUnknown || rep.RawScan {
		t.Errorf("report: kept %d, lost %d (unknown: %v), raw scan %v; want kept 39, lost exactly 0, nothing delivered brought back",
			rep.Kept, rep.Lost, rep.LostUnknown, rep.RawScan)
	}
	seen := map[string]bool{}
	for _, d := range leaseAll(t, s) {
		seen[d] = true
	}
	if len(seen) != 39 || !seen["message-0007"] || seen["message-0003"] {
		t.Fatalf("after the salvage the spool holds %d distinct messages (message-0007: %v, the acked message-0003: %v), want the 39 not acked",
			len(seen), seen["message-0007"], seen["message-0003"])
	}
}

// TestCreatedFileIsBboltsOwn: interruptedCreate compares a file with
// createdFile, which must be byte for byte what bbolt writes when it
// creates one.
func TestCreatedFileIsBboltsOwn(t *testing.T) {
	if got, want := BboltCreated(t), createdFile(os.Getpagesize()); !bytes.Equal(got, want) {
		t.Fatalf("bbolt created %d bytes that differ from createdFile's %d", len(got), len(want))
	}
	if interruptedCreate([]byte("not a spool, just text")) {
		t.Fatal("a small text file taken for an interrupted create")
	}
}

// TestRawScanFindsInlineBuckets: bbolt keeps a small bucket (under a
// quarter page) inline, inside its parent's leaf, flagged as a bucket. The
// raw page scan skipped such elements, so the records of a spool holding a
// few messages could not be found there: with both meta pages destroyed
// Open refused the file as "not a ferry spool", and a salvage that needed
// the scan counted them lost.
func TestRawScanFindsInlineBuckets(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		if _, err := s.Put(ctx, Entry{Data: fmt.Appendf(nil, "small-%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	img := readFile(t, path)
	clear(img[:2*os.Getpagesize()]) // both meta pages
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer func() { _ = s.Close() }()
	rep := s.Salvaged()
	if rep == nil || rep.Kept != 12 {
		t.Fatalf("report %v: want the 12 messages kept", rep)
	}
	items, err := s.TryLease(100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, it := range items {
		got[string(it.Data)] = true
	}
	for i := range 12 {
		if !got[fmt.Sprintf("small-%02d", i)] {
			t.Fatalf("small-%02d not leased after the salvage (leased %d)", i, len(items))
		}
	}
}
