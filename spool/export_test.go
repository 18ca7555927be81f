package spool

import (
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Children are the child processes of this package's own tests (the
// package-internal ones), by the environment variable that makes the test
// binary one of them. TestMain is in package spool_test (main_test.go),
// which sees only exported names: this is how it finds them. Each runs its
// job and exits; none returns.
var Children = map[string]func(){
	batchKillEnv:  runPutBatchKillChild,
	failEnv:       runWriterFailureChild,
	openReportEnv: runOpenReportChild,
}

// OpenSalvaged opens the spool at path, which must be salvaged on the way,
// and returns it (closed when the test ends) with the salvage report.
func OpenSalvaged(t *testing.T, path string, o Options) (*Spool, *SalvageReport) {
	t.Helper()
	s, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	rep := s.Salvaged()
	if rep == nil {
		t.Fatal("not salvaged")
	}
	return s, rep
}

// BboltCreated returns the file bbolt writes when it creates one: two meta
// pages, an empty freelist and an empty leaf, in one write.
func BboltCreated(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "created.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
