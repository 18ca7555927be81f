package chaos

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// smallFS is a small real filesystem mounted for one test: a loop-mounted
// ext4 image (block allocation, journal and fsync like an SD card) or,
// where loop devices are missing, a tmpfs. FERRY_CHAOS_FS=ext4|tmpfs
// forces one.
type smallFS struct {
	dir  string
	kind string
	size int64 // bytes the filesystem can hold (statfs at mount)
}

// mountSmallFS mounts a filesystem of about size bytes. When the machine
// cannot (not root, no mount), the test says so and is skipped, or fails
// when CI=true: CI must run the disk-full phase.
func mountSmallFS(t *testing.T, size int64) *smallFS {
	t.Helper()
	kinds := []string{"ext4", "tmpfs"}
	if k := os.Getenv("FERRY_CHAOS_FS"); k != "" {
		kinds = []string{k}
	}
	var errs []error
	for _, kind := range kinds {
		fs, err := tryMount(t, kind, size)
		if err == nil {
			return fs
		}
		errs = append(errs, fmt.Errorf("%s: %w", kind, err))
	}
	msg := fmt.Sprintf("cannot create a small filesystem for the disk-full phase (needs root and mount: loop-mounted ext4 or tmpfs): %v", errors.Join(errs...))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}

func tryMount(t *testing.T, kind string, size int64) (*smallFS, error) {
	base := t.TempDir() // removed after the unmount below (cleanups run last-in first-out)
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return nil, err
	}
	var cmds [][]string
	switch kind {
	case "ext4":
		img := filepath.Join(base, "fs.img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			return nil, err
		}
		if err := os.Truncate(img, size); err != nil {
			return nil, err
		}
		// -m 0: no blocks reserved for root (the gateway runs as root
		// here and would otherwise get 5% more than a real service user).
		cmds = [][]string{{"mkfs.ext4", "-q", "-F", "-m", "0", img}, {"mount", "-o", "loop", img, mnt}}
	case "tmpfs":
		cmds = [][]string{{"mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", mnt}}
	default:
		return nil, fmt.Errorf("FERRY_CHAOS_FS=%q: want ext4 or tmpfs", kind)
	}
	for _, c := range cmds {
		path, err := lookSbin(c[0])
		if err != nil {
			return nil, err
		}
		if out, err := exec.Command(path, c[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	t.Cleanup(func() { unmount(t, mnt) })
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		return nil, err
	}
	fs := &smallFS{dir: mnt, kind: kind, size: int64(st.Blocks) * st.Bsize}
	t.Logf("disk-full phase on %s: %s, %d KiB", kind, mnt, fs.size>>10)
	return fs, nil
}

func unmount(t *testing.T, mnt string) {
	umount, err := lookSbin("umount")
	if err != nil {
		t.Errorf("unmount %s: %v", mnt, err)
		return
	}
	var out []byte
	for range 20 {
		if out, err = exec.Command(umount, mnt).CombinedOutput(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // a process that had files open there is still exiting
	}
	if out2, err2 := exec.Command(umount, "-l", mnt).CombinedOutput(); err2 != nil {
		t.Errorf("unmount %s: %v: %s; lazy: %v: %s", mnt, err, out, err2, out2)
	}
}

func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(d, name); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (PATH and /usr/sbin, /sbin)", name)
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// free is the space left for an unprivileged-equivalent writer.
func (fs *smallFS) free() int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(fs.dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * st.Bsize
}

// ballast writes a file of n random bytes (incompressible, really
// allocated) and syncs it; removing it is how space frees.
func (fs *smallFS) ballast(t *testing.T, n int64) string {
	t.Helper()
	p := filepath.Join(fs.dir, "ballast")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for left := n; left > 0; left -= int64(len(buf)) {
		_, _ = rand.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), left)]); err != nil {
			t.Fatalf("ballast: %v", err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}
