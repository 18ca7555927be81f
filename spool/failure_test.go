package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
)

const failEnv = "FERRY_SPOOL_FAILURE_CHILD"

type failResult struct {
	BigPutErr, PutErr, AckErr, LeaseErr, CloseErr, Err, StatsFailure string
	PutClosed                                                        bool
	PutMillis, CloseMillis                                           int64
}

// runWriterFailureChild is the child of TestWriterStopsAfterBboltPanic
// (TestMain runs it, through Children, when failEnv is set): it prints
// "result JSON" of what writerFailure found and exits. It never returns.
func runWriterFailureChild() {
	b, _ := json.Marshal(writerFailure(os.Getenv(failEnv)))
	fmt.Printf("result %s\n", b)
	os.Exit(0)
}

// writerFailure damages the spool at path behind bbolt's back so that
// bbolt panics inside a commit, and records how the spool behaves after.
func writerFailure(path string) (r failResult) {
	closeBound = time.Second
	s, err := Open(path, Options{MaxBytes: -1})
	if err != nil {
		r.Err = err.Error()
		return
	}
	ctx := context.Background()
	for i := range 300 {
		if _, err := s.Put(ctx, Entry{Priority: 5, Data: bytes.Repeat([]byte{byte(i)}, 100)}); err != nil {
			r.Err = err.Error()
			return
		}
	}
	// Damage a leaf of lane 5 behind bbolt's back (its map sees it): its
	// first key made the largest, out of order.
	b, err := openBoltFile(path)
	if err != nil {
		r.Err = err.Error()
		return
	}
	leaf := uint64(0)
	w := b.newWalk(b.meta())
	subs, _, _ := w.buckets()
	for _, sb := range subs {
		if sb.name == "lane5" {
			leaf = sb.root
		}
	}
	for {
		p, err := b.page(b.meta(), leaf)
		if err != nil || binary.LittleEndian.Uint16(p[8:]) != branchPageFlag {
			break
		}
		leaf = binary.LittleEndian.Uint64(p[pageHeaderSize+8:]) // first child
	}
	psize := b.psize
	b.close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		r.Err = err.Error()
		return
	}
	hdr := make([]byte, pageHeaderSize+elemSize)
	_, _ = f.ReadAt(hdr, int64(leaf)*psize)
	pos := binary.LittleEndian.Uint32(hdr[pageHeaderSize+4:])
	_, _ = f.WriteAt(bytes.Repeat([]byte{0xff}, 8), int64(leaf)*psize+pageHeaderSize+int64(pos))
	_ = f.Close()
	// Let the file not grow: the next commit that needs room fails, and
	// bbolt's rollback of it walks the damaged tree and panics.
	fi, _ := os.Stat(path)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: uint64(fi.Size()), Max: ^uint64(0)}); err != nil {
		r.Err = err.Error()
		return
	}
	_, err = s.Put(ctx, Entry{Data: make([]byte, 1<<20)})
	r.BigPutErr = fmt.Sprint(err)
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = s.Put(pctx, Entry{Data: []byte("after")})
	r.PutMillis = time.Since(start).Milliseconds()
	r.PutErr, r.PutClosed = fmt.Sprint(err), errors.Is(err, ErrClosed)
	r.AckErr = fmt.Sprint(s.Ack(pctx, 1))
	_, err = s.TryLease(1)
	r.LeaseErr = fmt.Sprint(err)
	r.Err = fmt.Sprint(s.Err())
	r.StatsFailure = s.Stats().Failure
	start = time.Now()
	r.CloseErr = fmt.Sprint(s.Close())
	r.CloseMillis = time.Since(start).Milliseconds()
	return r
}

// TestWriterStopsAfterBboltPanic (issue 9, defect 6): after bbolt panics
// inside a commit (leaving its writer lock held), the writer fails every
// waiter and everything after at once, and Close ends within its bound:
// nothing hangs.
func TestWriterStopsAfterBboltPanic(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process")
	}
	path := filepath.Join(t.TempDir(), "spool.db")
	c := testkit.StartChild(t, failEnv+"="+path)
	var result string
	for i := 0; result == ""; i++ {
		l, err := c.Line(i, 60*time.Second)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.Kill()
			t.Fatalf("hang guard: the child still ran after %v: the spool hung after a bbolt panic; output:\n%s", testkit.Timeout(60*time.Second), strings.Join(c.Lines(), "\n"))
		}
		if err != nil {
			break // stdout ended without a result
		}
		result, _ = strings.CutPrefix(l, "result ")
	}
	if err := c.Wait(); err != nil || result == "" {
		t.Fatalf("child: %v\n%s\n%s", err, strings.Join(c.Lines(), "\n"), c.Stderr())
	}
	var r failResult
	if err := json.Unmarshal([]byte(result), &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", r)
	if !r.PutClosed || strings.Contains(r.PutErr, "deadline") {
		t.Errorf("Put after the failure: %s (after %d ms), want ErrClosed wrapping the failure at once", r.PutErr, r.PutMillis)
	}
	if r.Err == "<nil>" || r.StatsFailure == "" {
		t.Errorf("Err() = %s, Stats.Failure = %q: the failure is not reported", r.Err, r.StatsFailure)
	}
	if r.LeaseErr == "<nil>" || r.AckErr == "<nil>" {
		t.Errorf("Lease %s, Ack %s after the failure: want errors", r.LeaseErr, r.AckErr)
	}
}
