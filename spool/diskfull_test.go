package spool_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
)

const diskFullEnv = "FERRY_SPOOL_DISKFULL_DIR"

// countingHandler counts log records at Warn and above, by message.
type countingHandler struct {
	mu   sync.Mutex
	msgs map[string]int
}

func (h *countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs[r.Message]++
	h.mu.Unlock()
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

type diskFullResult struct {
	Skip                     string
	Err                      string
	Stored, Refused          int
	FirstRefusal             string
	RefusalIsFull            bool
	StatsFull, StatsDiskFull bool
	BlockErr                 string
	BlockIsFull              bool
	Resumed                  bool
	ResumedByAcks            bool
	DiskFullAfterResume      bool
	Logs                     map[string]int
	ReopenMessages           int64
	ReopenSalvaged           bool
	WantMessages             int64
	Commits, Syncs           uint64
}

// runDiskFullChild is the child of TestDiskFull (TestMain runs it when
// diskFullEnv is set): it prints "result JSON" of what diskFull found and
// exits. It never returns.
func runDiskFullChild() {
	b, _ := json.Marshal(diskFull(os.Getenv(diskFullEnv)))
	fmt.Printf("result %s\n", b)
	os.Exit(0)
}

// diskFull runs in a mount namespace of its own: it mounts a 4 MiB tmpfs
// on dir and fills a spool on it whose max_bytes is far larger.
func diskFull(dir string) (r diskFullResult) {
	if err := syscall.Mount("ferry-test", dir, "tmpfs", 0, "size=4m"); err != nil {
		r.Skip = "mount tmpfs: " + err.Error()
		return
	}
	defer func() { _ = syscall.Unmount(dir, 0) }()
	h := &countingHandler{msgs: map[string]int{}}
	path := filepath.Join(dir, "spool.db")
	// A filler takes most of the room; deleting it later frees space.
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o600); err != nil {
		r.Err = err.Error()
		return
	}
	s, err := spool.Open(path, spool.Options{MaxBytes: 64 << 20, Overflow: spool.Reject, Logger: slog.New(h)})
	if err != nil {
		r.Err = err.Error()
		return
	}
	ctx := context.Background()
	msg := bytes.Repeat([]byte("x"), 1000)
	for i := 0; i < 20000 && r.Refused < 300; i++ {
		_, err := s.Put(ctx, spool.Entry{Data: msg})
		switch {
		case err == nil:
			r.Stored++
		case r.Refused == 0:
			r.FirstRefusal, r.RefusalIsFull = err.Error(), errors.Is(err, spool.ErrFull)
			st := s.Stats()
			r.StatsFull, r.StatsDiskFull = st.Full, st.DiskFull
			fallthrough
		default:
			r.Refused++
		}
	}
	// Block: a Put waits for room, then is refused as full.
	s.Close()
	s, err = spool.Open(path, spool.Options{MaxBytes: 64 << 20, Overflow: spool.Block, BlockTimeout: 300 * time.Millisecond, Logger: slog.New(h)})
	if err != nil {
		r.Err = "reopen: " + err.Error()
		return
	}
	for range 5 {
		if _, err = s.Put(ctx, spool.Entry{Data: msg}); err != nil {
			break
		}
		r.Stored++
	}
	r.BlockErr, r.BlockIsFull = fmt.Sprint(err), errors.Is(err, spool.ErrFull)
	// The upstream takes some: their pages inside the file are free again,
	// though the file system still has no byte. Ingest resumes into them.
	items, err := s.TryLease(200)
	if err == nil && len(items) > 0 {
		ids := make([]uint64, len(items))
		for i, it := range items {
			ids[i] = it.ID
		}
		if err := s.Ack(ctx, ids...); err == nil {
			r.Stored -= len(ids)
			for range 3 {
				if _, err := s.Put(ctx, spool.Entry{Data: msg}); err == nil {
					r.Stored++
					r.ResumedByAcks = true
					break
				}
			}
		}
	}
	// Space frees: ingest resumes by itself.
	_ = os.Remove(filler)
	deadline := time.Now().Add(testkit.Timeout(20 * time.Second))
	for time.Now().Before(deadline) {
		if _, err := s.Put(ctx, spool.Entry{Data: msg}); err == nil {
			r.Stored++
			r.Resumed = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.DiskFullAfterResume = s.Stats().DiskFull
	st := s.Stats() // a commit in flight may have its fsync counted already, not yet itself
	r.Commits, r.Syncs = st.Commits, st.Syncs
	h.mu.Lock()
	r.Logs = h.msgs
	h.mu.Unlock()
	r.WantMessages = int64(r.Stored)
	if err := s.Close(); err != nil {
		r.Err = "close: " + err.Error()
		return
	}
	s, err = spool.Open(path, spool.Options{MaxBytes: 64 << 20})
	if err != nil {
		r.Err = "open after: " + err.Error()
		return
	}
	r.ReopenMessages, r.ReopenSalvaged = s.Stats().Messages, s.Salvaged() != nil
	s.Close()
	return r
}

// TestDiskFull (issue 9, defect 7): a file system that fills before
// max_bytes is the spool's full state: Puts get ErrFull (Block: after
// waiting), Stats.Full and DiskFull say so, a handful of log lines (not
// one per Put), a warning at Open that max_bytes exceeds the free space,
// ingest resumes by itself when space frees, and the file is intact.
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process on a tmpfs")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), testkit.Timeout(2*time.Minute))
	defer cancel()
	// Not testkit.StartChild: the child needs a mount namespace of its own
	// (SysProcAttr), and a refused one is a skip here, not a failure.
	cmd := testkit.CommandContext(ctx, "-test.run=^$")
	cmd.Env = append(os.Environ(), diskFullEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if os.Getuid() != 0 {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	i := bytes.Index(out, []byte("result "))
	if i < 0 {
		if err != nil && os.Getenv("CI") != "true" {
			t.Skipf("cannot run a child in a mount namespace here (%v): %s", err, stderr.String())
		}
		t.Fatalf("child: %v\n%s\n%s", err, out, stderr.String())
	}
	line := out[i+len("result "):]
	line = line[:bytes.IndexByte(line, '\n')]
	var r diskFullResult
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatal(err)
	}
	if r.Skip != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs a tmpfs in a mount namespace: %s", r.Skip)
		}
		t.Skipf("needs a tmpfs in a mount namespace: %s", r.Skip)
	}
	t.Logf("%+v", r)
	if r.Err != "" {
		t.Fatal(r.Err)
	}
	if r.Refused == 0 {
		t.Fatalf("stored %d messages of 1 kB on a 4 MiB file system and none was refused", r.Stored)
	}
	if !r.RefusalIsFull || !r.StatsFull || !r.StatsDiskFull {
		t.Errorf("a full disk: Put %q (ErrFull: %v), Stats.Full %v, Stats.DiskFull %v; want ErrFull and both set", r.FirstRefusal, r.RefusalIsFull, r.StatsFull, r.StatsDiskFull)
	}
	if !r.BlockIsFull {
		t.Errorf("Block policy on a full disk: %s, want ErrFull after the wait", r.BlockErr)
	}
	if !r.ResumedByAcks {
		t.Error("after acks freed pages inside the file, a Put was still refused (the file system stayed full, the file had room)")
	}
	if !r.Resumed || r.DiskFullAfterResume {
		t.Errorf("after space freed: resumed %v, Stats.DiskFull %v", r.Resumed, r.DiskFullAfterResume)
	}
	lines := 0
	for _, n := range r.Logs {
		lines += n
	}
	if lines > 6 {
		t.Errorf("%d warning/error log lines for %d refused Puts, want a handful: %v", lines, r.Refused, r.Logs)
	}
	if r.Logs["spool max_bytes exceeds the free space of its file system: the disk fills first (then new messages are refused)"] == 0 {
		t.Errorf("no warning at Open that max_bytes exceeds the free space: %v", r.Logs)
	}
	if r.ReopenSalvaged || r.ReopenMessages != r.WantMessages {
		t.Errorf("after the full disk, reopened with %d messages (salvaged %v), want %d intact", r.ReopenMessages, r.ReopenSalvaged, r.WantMessages)
	}
	// The commits that ran again without the refused messages (acks) are
	// answered after their fsync like every other.
	if r.Syncs < r.Commits {
		t.Errorf("%d commits, %d fsyncs: a commit of the full disk was not fsync'd", r.Commits, r.Syncs)
	}
}
