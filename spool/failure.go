package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Storage failures, from the writer's side.
//
// A full disk (ENOSPC, EDQUOT, EFBIG) is the spool's full state: the
// transaction is run again without its new messages, which the overflow
// policy answers (Block: they wait; otherwise ErrFull), and until a probe
// finds room again new messages are answered so without a write being
// tried; acks still commit (they free pages inside the file, which later
// messages reuse). Stats.Full and Stats.DiskFull tell, and one line is
// logged when it starts, at most one a minute while it lasts, and one when
// it ends.
//
// Anything else — a panic inside bbolt, an I/O error — leaves bbolt in a
// state nobody can vouch for (its locks may still be held, a failed meta
// write may already be in the page cache): the writer answers everything
// waiting and everything that comes with the failure (ErrClosed wrapping
// it), never touches the file again, and Close releases what it can
// within closeBound.

const (
	diskProbeEvery = time.Second // while the disk is full: how often a write is tried
	diskFullLog    = time.Minute // ... and how often it is logged
	diskProbeFree  = 256 << 10   // bytes the file system must have free for a probe
	// (closeBound is a variable, below.)
	spaceWarnSlack = int64(0) // Open warns when max_bytes exceeds free space + file by more than this
)

// closeBound is how long Close waits for the writer and for bbolt; a var
// for tests.
var closeBound = 10 * time.Second

// isDiskFull tells a full file system (or file size limit) from other
// errors; bbolt formats some of its errors with %s, so the text is looked at
// too.
func isDiskFull(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "no space left on device") || strings.Contains(msg, "disk quota exceeded") || strings.Contains(msg, "file too large")
}

// failure wraps the cause of a stopped writer for the callers it answers.
func failure(cause error) error {
	return fmt.Errorf("%w (the writer stopped after a storage failure: %w)", ErrClosed, cause)
}

// Err returns why the spool stopped working (a panic inside bbolt, an I/O
// error), nil while it works. A full disk is not a failure (see Stats).
func (s *Spool) Err() error {
	if p := s.failedErr.Load(); p != nil {
		return *p
	}
	return nil
}

// fail stops the writer: it answers the batch of the failed transaction,
// every parked Put and, from now on, every operation with the failure.
func (s *Spool) fail(batch []*op, cause error) {
	err := failure(cause)
	s.log.Error("spool writer stopped after a storage failure; restart the gateway", "path", s.path, "err", cause)
	s.failedErr.Store(&err)
	s.mu.Lock()
	close(s.avail) // wake Lease calls: they see the failure
	s.avail = make(chan struct{})
	s.mu.Unlock()
	for _, o := range batch {
		if o.kind != opPut || o.claim() {
			if !o.skip || o.err == nil {
				o.err = err
			}
			close(o.done)
		}
	}
	s.answerParked(len(s.parked), err, false)
	s.pin = nil // not rolled back: bbolt may hold its locks
}

// failedLoop answers every operation with the failure until Close.
func (s *Spool) failedLoop() {
	err := s.Err()
	for o := range s.ops {
		if o.kind != opPut || o.claim() {
			o.err = err
			close(o.done)
		}
	}
}

// fatal reports whether err from a transaction stops the writer. A full
// disk does not, unless the failed commit's meta page is already visible
// (its write went through and only its fsync failed): bbolt would then read
// a tree its freelist says is free.
func (s *Spool) fatal(err error) bool {
	if !isDiskFull(err) {
		return true
	}
	var id int
	verr := s.viewRaw(func(tx *bolt.Tx) error { id = tx.ID(); return nil })
	return verr != nil || uint64(id) != s.txid
}

// viewRaw is a read transaction for the writer itself, panics recovered.
func (s *Spool) viewRaw(fn func(*bolt.Tx) error) (err error) {
	s.dbmu.RLock()
	defer s.dbmu.RUnlock()
	defer func() {
		if r := recover(); r != nil {
			err = &boltPanic{r}
		}
	}()
	return s.db.View(fn)
}

// diskFullNow reports whether the next transaction refuses new messages
// without trying: the disk is full and it is not time for a probe.
func (s *Spool) diskFullNow() bool {
	if !s.diskFull {
		return false
	}
	if s.freedInFile {
		// Pages were freed inside the file (acks): a message may fit in
		// them although the file system has no byte left to grow into.
		s.freedInFile = false
		return false
	}
	if time.Now().Before(s.nextProbe) {
		return true
	}
	if free, ok := freeBytes(filepath.Dir(s.path)); ok && free < diskProbeFree {
		s.nextProbe = time.Now().Add(diskProbeEvery)
		return true
	}
	return false
}

// enterDiskFull records that a write found the disk full.
func (s *Spool) enterDiskFull(cause error) {
	now := time.Now()
	s.nextProbe = now.Add(diskProbeEvery)
	if !s.diskFull {
		s.diskFull, s.diskFullSince, s.diskFullLogged = true, now, now
		free, _ := freeBytes(filepath.Dir(s.path))
		s.log.Error("spool disk full: new messages are refused until space frees", "path", s.path, "err", cause, "free_bytes", free)
	} else if now.Sub(s.diskFullLogged) >= diskFullLog {
		s.diskFullLogged = now
		s.log.Warn("spool disk still full", "path", s.path, "since", s.diskFullSince.Format(time.RFC3339))
	}
	s.mu.Lock()
	s.full, s.diskFullStat = true, true
	s.mu.Unlock()
}

// leaveDiskFull records that a new message was stored again.
func (s *Spool) leaveDiskFull() {
	if !s.diskFull {
		return
	}
	s.diskFull = false
	s.log.Info("spool disk has room again", "path", s.path, "full_for", time.Since(s.diskFullSince).Round(time.Second).String())
	s.mu.Lock()
	s.diskFullStat = false
	s.mu.Unlock()
}

// freeBytes is the space an unprivileged writer may still use on the file
// system holding dir.
func freeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// warnSpace logs when MaxBytes cannot fit on the file system: the disk
// would fill before the spool reaches its own full state.
func (s *Spool) warnSpace() {
	if s.opts.MaxBytes <= 0 {
		return
	}
	free, ok := freeBytes(filepath.Dir(s.path))
	if !ok {
		return
	}
	var size int64
	if fi, err := os.Stat(s.path); err == nil {
		size = fi.Size()
	}
	if s.opts.MaxBytes > free+size+spaceWarnSlack {
		s.log.Warn("spool max_bytes exceeds the free space of its file system: the disk fills first (then new messages are refused)",
			"path", s.path, "max_bytes", s.opts.MaxBytes, "free_bytes", free, "file_bytes", size)
	}
}

// closeBounded runs fn (closing bbolt) and gives up after closeBound: a
// bbolt that failed may never release its locks, and shutdown must end.
func closeBounded(fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeBound):
		return fmt.Errorf("bbolt did not close within %s; the file lock goes with the process", closeBound)
	}
}
