package spool

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// mappedResident returns the resident bytes of this process's maps of the
// file at path (from /proc/self/smaps).
func mappedResident(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no /proc/self/smaps: %v", err)
	}
	defer f.Close()
	var total int64
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[len(fields)-1] == path
			continue
		}
		if in && strings.HasPrefix(line, "Rss:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			total += kb << 10
		}
	}
	return total
}

// TestOpenLeavesFileNotResident (issue 9, defect 9): opening a large spool
// checks every page, but leaves neither its own map nor bbolt's resident:
// after a clean Close (bbolt then reads its freelist instead of walking
// the file) and after a crash (bbolt walks it; Open drops those pages).
func TestOpenLeavesFileNotResident(t *testing.T) {
	n := 40_000
	if testing.Short() {
		n = 10_000
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path, Options{Durability: Interval, MaxBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	fillGateway(t, s, n)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	check := func(name string, opts Options) {
		t.Helper()
		s, err := Open(path, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		res := mappedResident(t, path)
		if st := s.Stats(); st.Messages != int64(n) || s.Salvaged() != nil {
			t.Fatalf("%s: %d messages, salvaged %v", name, st.Messages, s.Salvaged())
		}
		t.Logf("%s: %d KiB of the %d KiB file resident after Open (%d KiB after Stats)", name, res>>10, fi.Size()>>10, mappedResident(t, path)>>10)
		if res > fi.Size()/10 {
			t.Errorf("%s: %d KiB of the %d KiB file resident after Open, want under a tenth", name, res>>10, fi.Size()>>10)
		}
	}
	check("clean", Options{MaxBytes: 256 << 20})
	// Unclean: a copy taken while the spool is open (every commit of it is
	// fsync'd, so the copy is what a crash leaves).
	s, err = Open(path, Options{MaxBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	_ = s.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	check("after a crash (bbolt walks the file, Verify too)", Options{MaxBytes: 256 << 20})
}
