package spooltest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// Power-cut crash images.
//
// SIGKILL does not test fsync ordering: the page cache survives it. A power
// cut keeps what an fdatasync made durable and any subset of what was
// written after it, some pages only in part. Record runs a process under
// strace and keeps the ordered sequence of its writes, truncates and
// fdatasyncs of the files it names, plus every line it printed on stdout;
// Image replays that sequence into the file a power cut at a given point
// could leave behind. The test decides, from the printed lines that precede
// the cut, what must have survived.

// EventKind says what a traced system call did.
type EventKind uint8

// Kinds of traced events.
const (
	EvWrite    EventKind = iota + 1 // pwrite64/write of Data at Off
	EvTruncate                      // ftruncate to Size
	EvSync                          // fdatasync or fsync
	EvOutput                        // a write to the process's stdout: Text
)

// Event is one traced system call.
type Event struct {
	Kind EventKind
	File string // the traced file (not for EvOutput)
	Off  int64  // EvWrite
	Data []byte // EvWrite
	Size int64  // EvTruncate
	Text string // EvOutput: the bytes written to stdout
	// Entry and Exit are the positions in the trace where the call started
	// and returned. Positions are comparable across threads: strace orders
	// every line it prints.
	Entry, Exit int
}

// Trace is a recorded run: its events in the order they started.
type Trace struct {
	Events []Event
}

// StraceArgs are the strace options Record uses: follow threads, decode fds
// to paths, every byte in hex, whole buffers.
var StraceArgs = []string{"-f", "-qq", "-y", "-xx", "-s", "1100000", "-e", "signal=none",
	"-e", "trace=pwrite64,write,fdatasync,fsync,ftruncate"}

// HaveStrace reports whether strace is on PATH and may trace a child here.
func HaveStrace() error {
	path, err := exec.LookPath("strace")
	if err != nil {
		return fmt.Errorf("strace not found (apt-get install strace): %w", err)
	}
	out, err := exec.Command(path, "-qq", "-e", "trace=none", "true").CombinedOutput()
	if err != nil {
		return fmt.Errorf("strace cannot trace here: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Record runs cmd under strace, writing the raw trace to traceFile, and
// returns the parsed events that touch the files in files (absolute paths)
// and the process's stdout. cmd must not have Stdout set: Record reads the
// lines from the trace. cmd's error (exit status) is returned along with the
// trace.
func Record(ctx context.Context, cmd *exec.Cmd, traceFile string, files ...string) (*Trace, error) {
	args := append(append([]string(nil), StraceArgs...), "-o", traceFile, "--", cmd.Path)
	args = append(args, cmd.Args[1:]...)
	sc := exec.CommandContext(ctx, "strace", args...)
	sc.Env, sc.Dir, sc.Stderr = cmd.Env, cmd.Dir, cmd.Stderr
	runErr := sc.Run()
	f, err := os.Open(traceFile)
	if err != nil {
		return nil, errors.Join(runErr, err)
	}
	defer func() { _ = f.Close() }()
	tr, err := ParseStrace(f, files...)
	if err != nil {
		return nil, errors.Join(runErr, err)
	}
	return tr, runErr
}

// ParseStrace reads a trace written with StraceArgs and keeps the writes,
// truncates and syncs of files (no files: of every file), and the writes to
// fd 1 (stdout) as EvOutput. Calls that failed are dropped.
func ParseStrace(r io.Reader, files ...string) (*Trace, error) {
	want := func(string) bool { return true }
	if len(files) > 0 {
		set := map[string]bool{}
		for _, f := range files {
			set[f] = true
		}
		want = func(p string) bool { return set[p] }
	}
	tr := &Trace{}
	pending := map[string]int{} // pid → index in tr.Events of its unfinished call
	br := bufio.NewReaderSize(r, 1<<20)
	for pos := 0; ; pos++ {
		line, err := br.ReadString('\n')
		if len(line) == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
		line = strings.TrimSuffix(line, "\n")
		pid, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		rest = strings.TrimLeft(rest, " ")
		if strings.HasPrefix(rest, "<... ") {
			// "<... pwrite64 resumed>, 4096, 8192) = 4096"
			i, ok := pending[pid]
			if !ok {
				continue
			}
			delete(pending, pid)
			res := result(rest)
			if i >= 0 {
				if res < 0 {
					tr.Events[i].Kind = 0 // failed: dropped below
				}
				tr.Events[i].Exit = pos
			}
			continue
		}
		name, args, ok := strings.Cut(rest, "(")
		if !ok {
			continue
		}
		unfinished := strings.HasSuffix(args, "<unfinished ...>")
		ev, keep, err := parseCall(name, args, want)
		if err != nil {
			return nil, fmt.Errorf("trace line %d: %w", pos+1, err)
		}
		idx := -1
		if keep {
			ev.Entry, ev.Exit = pos, pos
			if !unfinished && result(args) < 0 {
				keep = false
			}
		}
		if keep {
			tr.Events = append(tr.Events, ev)
			idx = len(tr.Events) - 1
		}
		if unfinished {
			pending[pid] = idx
		}
	}
	tr.Events = slices.DeleteFunc(tr.Events, func(e Event) bool { return e.Kind == 0 })
	return tr, nil
}

// result returns the number after the last " = " of a finished call, -1 for
// an error or none.
func result(s string) int64 {
	i := strings.LastIndexByte(s, ')') // strings and paths are hex: no ')' inside
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 || f[0] != "=" {
		return -1
	}
	f = f[1:]
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// parseCall decodes "FD<path>, ARGS...) = RET" of the calls Record traces.
func parseCall(name, args string, want func(string) bool) (Event, bool, error) {
	var ev Event
	fd, path, rest, err := fdArg(args)
	if err != nil {
		return ev, false, nil // not a call on a decoded fd
	}
	switch name {
	case "write", "pwrite64":
		if fd != 1 && !want(path) {
			return ev, false, nil
		}
		data, rest, err := hexString(rest)
		if err != nil {
			return ev, false, fmt.Errorf("%s: %w", name, err)
		}
		if fd == 1 {
			return Event{Kind: EvOutput, Text: string(data)}, true, nil
		}
		ev = Event{Kind: EvWrite, File: path, Data: data}
		if name == "pwrite64" {
			f := strings.Split(strings.TrimPrefix(rest, ", "), ",")
			if len(f) < 2 {
				return ev, false, fmt.Errorf("pwrite64: no offset in %q", rest)
			}
			off, err := strconv.ParseInt(strings.Fields(strings.SplitN(f[1], ")", 2)[0])[0], 10, 64)
			if err != nil {
				return ev, false, fmt.Errorf("pwrite64 offset: %w", err)
			}
			ev.Off = off
		} else {
			if !strings.HasPrefix(path, "/") || strings.HasPrefix(path, "/dev/") {
				return ev, false, nil // a pipe, socket, eventfd or terminal
			}
			return ev, false, fmt.Errorf("write(2) to %s: the file position is not traced, only pwrite64", path)
		}
		return ev, true, nil
	case "ftruncate":
		if !want(path) {
			return ev, false, nil
		}
		f := strings.TrimPrefix(rest, ", ")
		n, err := strconv.ParseInt(strings.Fields(strings.SplitN(f, ")", 2)[0] + " x")[0], 10, 64)
		if err != nil {
			return ev, false, fmt.Errorf("ftruncate size: %w", err)
		}
		return Event{Kind: EvTruncate, File: path, Size: n}, true, nil
	case "fdatasync", "fsync":
		if !want(path) {
			return ev, false, nil
		}
		return Event{Kind: EvSync, File: path}, true, nil
	}
	return ev, false, nil
}

// fdArg parses `3<\x2f...>` at the start of args.
func fdArg(args string) (int, string, string, error) {
	i := strings.IndexByte(args, '<')
	if i < 0 {
		return 0, "", "", errors.New("no fd path")
	}
	fd, err := strconv.Atoi(args[:i])
	if err != nil {
		return 0, "", "", err
	}
	j := strings.IndexByte(args[i:], '>')
	if j < 0 {
		return 0, "", "", errors.New("unterminated fd path")
	}
	p, err := unhex(args[i+1 : i+j])
	if err != nil {
		return 0, "", "", err
	}
	return fd, string(p), args[i+j+1:], nil
}

// hexString parses `, "\x.."..."` (an -xx string argument) at the start of s.
func hexString(s string) ([]byte, string, error) {
	s = strings.TrimPrefix(s, ", ")
	if !strings.HasPrefix(s, `"`) {
		return nil, s, fmt.Errorf("no string argument in %.40q", s)
	}
	end := strings.IndexByte(s[1:], '"')
	if end < 0 {
		return nil, s, errors.New("unterminated string")
	}
	b, err := unhex(s[1 : 1+end])
	rest := s[2+end:]
	if strings.HasPrefix(rest, "...") {
		return nil, rest, errors.New("buffer truncated by strace: raise -s")
	}
	return b, rest, err
}

func unhex(s string) ([]byte, error) {
	if len(s)%4 != 0 {
		return nil, fmt.Errorf("bad hex escape %.20q", s)
	}
	b := make([]byte, len(s)/4)
	for i := range b {
		e := s[i*4 : i*4+4]
		if e[0] != '\\' || e[1] != 'x' {
			return nil, fmt.Errorf("bad hex escape %q", e)
		}
		v, err := strconv.ParseUint(e[2:], 16, 8)
		if err != nil {
			return nil, err
		}
		b[i] = byte(v)
	}
	return b, nil
}

// Lines returns the complete lines the process printed, each with the trace
// position where the write that completed it started.
func (t *Trace) Lines() []Line {
	var out []Line
	var buf strings.Builder
	for _, e := range t.Events {
		if e.Kind != EvOutput {
			continue
		}
		text := e.Text
		for {
			i := strings.IndexByte(text, '\n')
			if i < 0 {
				buf.WriteString(text)
				break
			}
			buf.WriteString(text[:i])
			out = append(out, Line{Text: buf.String(), At: e.Entry})
			buf.Reset()
			text = text[i+1:]
		}
	}
	return out
}

// Line is one line of the traced process's stdout.
type Line struct {
	Text string
	At   int // trace position of the write that ended it
}

// Cut is a point where the power may fail: after sync Sync of the file
// completed and before the next one did.
type Cut struct {
	Sync int // index of the file's sync (0-based); -1: before the first
	// Durable: every write of the file that returned before this trace
	// position is on disk (the sync's start).
	Durable int
	// Horizon: nothing started at or after this position is on disk (the
	// next sync's completion, or the end of the trace).
	Horizon int
}

// Cuts returns one cut per sync of file, in order, and one before the first.
func (t *Trace) Cuts(file string) []Cut {
	var syncs []Event
	for _, e := range t.Events {
		if e.Kind == EvSync && e.File == file {
			syncs = append(syncs, e)
		}
	}
	end := int(^uint(0) >> 2) // past every event
	cuts := []Cut{{Sync: -1, Durable: -1, Horizon: end}}
	if len(syncs) > 0 {
		cuts[0].Horizon = syncs[0].Exit
	}
	for i, s := range syncs {
		c := Cut{Sync: i, Durable: s.Entry, Horizon: end}
		if i+1 < len(syncs) {
			c.Horizon = syncs[i+1].Exit
		}
		cuts = append(cuts, c)
	}
	return cuts
}

// ImageOptions shape the writes after the cut's sync that reach the disk.
type ImageOptions struct {
	// Keep is the chance that each later write reached the disk; <0: a
	// random chance per image.
	Keep float64
	// Torn is the chance that a write that reached the disk did so only in
	// part: a random subset of its sectors. Default 0.2.
	Torn float64
	// Sector is the unit of a torn write; default 512.
	Sector int
}

// Image builds the file a power cut at c could leave: every write and
// truncate of file that returned before c.Durable, then each one started
// between it and c.Horizon with chance Keep, some of those torn. It returns
// the image and a description of what it applied after the durable part.
func (t *Trace) Image(file string, c Cut, rng *rand.Rand, o ImageOptions) ([]byte, string) {
	if o.Sector <= 0 {
		o.Sector = 512
	}
	if o.Torn == 0 {
		o.Torn = 0.2
	}
	keep := o.Keep
	if keep < 0 {
		keep = rng.Float64()
	}
	var img []byte
	apply := func(e *Event, sectors func(int) bool) {
		switch e.Kind {
		case EvTruncate:
			if int64(len(img)) < e.Size {
				img = append(img, make([]byte, int(e.Size)-len(img))...)
			} else {
				img = img[:e.Size]
			}
		case EvWrite:
			end := int(e.Off) + len(e.Data)
			if len(img) < end {
				img = append(img, make([]byte, end-len(img))...)
			}
			for s := 0; s < len(e.Data); s += o.Sector {
				if sectors == nil || sectors(s/o.Sector) {
					copy(img[int(e.Off)+s:], e.Data[s:min(s+o.Sector, len(e.Data))])
				}
			}
		}
	}
	later, torn := 0, 0
	for i := range t.Events {
		e := &t.Events[i]
		if e.File != file || (e.Kind != EvWrite && e.Kind != EvTruncate) {
			continue
		}
		switch {
		case e.Exit < c.Durable:
			apply(e, nil)
		case e.Entry < c.Horizon && rng.Float64() < keep:
			later++
			if e.Kind == EvWrite && len(e.Data) > o.Sector && rng.Float64() < o.Torn {
				torn++
				mask := rng.Uint64()
				apply(e, func(s int) bool { return mask&(1<<(s%64)) != 0 })
				continue
			}
			apply(e, nil)
		}
	}
	return img, fmt.Sprintf("sync %d, keep %.2f: %d later writes applied, %d of them torn", c.Sync, keep, later, torn)
}

// Files returns the files the trace wrote to, in the order of their first
// write.
func (t *Trace) Files() []string {
	var out []string
	for _, e := range t.Events {
		if e.Kind == EvWrite && !slices.Contains(out, e.File) {
			out = append(out, e.File)
		}
	}
	return out
}
