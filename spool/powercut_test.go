package spool_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spooltest"
)

// The power-cut test. A child process runs a spool workload (producers
// Put, a consumer leases, acks and nacks) under strace; every write and
// fdatasync of the file is recorded together with the lines the child
// prints after each Put returned and before each Ack. Crash images are
// built from that sequence at many cut points (everything written before
// the cut's fdatasync, plus a random subset of the later writes, some of
// them torn), and each one is opened in another child. Invariant: every
// image opens or salvages (no crash, no hang, no refusal), loses no message
// whose Put returned before the cut (unless the consumer had started to ack
// it), and an image that opens without a salvage report is consistent
// (its counts match its contents): damage is always reported.
//
// Environment: FERRY_POWERCUT_IMAGES (images per trace; default 48, 600
// with FERRY_POWERCUT=long), FERRY_POWERCUT_MESSAGES (Puts in the
// recorded run), FERRY_POWERCUT_TRACE (replay a kept trace instead of
// recording one; its spool path is read from the trace), and the spool
// tests' seed (-spool.seed / FERRY_SPOOL_SEED).

const (
	pcEnvPath     = "FERRY_POWERCUT_CHILD_PATH"
	pcEnvMode     = "FERRY_POWERCUT_CHILD_MODE"
	pcEnvMessages = "FERRY_POWERCUT_CHILD_MESSAGES"
	pcEnvImages   = "FERRY_POWERCUT_CHILD_IMAGES"
	pcProducers   = 3
)

func pcPayload(p, seq int) []byte {
	b := fmt.Appendf(nil, "pc-p%d-s%05d|", p, seq)
	return append(b, bytes.Repeat([]byte{byte('a' + (p*7+seq)%26)}, 100-len(b))...)
}

func pcParse(b []byte) (string, bool) {
	i := bytes.IndexByte(b, '|')
	if len(b) != 100 || i < 0 {
		return "", false
	}
	var p, seq int
	if _, err := fmt.Sscanf(string(b[:i+1]), "pc-p%d-s%05d|", &p, &seq); err != nil || !bytes.Equal(b, pcPayload(p, seq)) {
		return "", false
	}
	return string(b[:i]), true
}

// runPowerCutWorkloadChild is the traced child of TestPowerCut (TestMain
// runs it when pcEnvPath is set). It prints "put KEY ID" after each Put
// returned and "acking ID..." before each Ack. It never returns.
func runPowerCutWorkloadChild() {
	path := os.Getenv(pcEnvPath)
	n, _ := strconv.Atoi(os.Getenv(pcEnvMessages))
	opts := spool.Options{LowerLaneShare: -1, LeaseTimeout: time.Hour, FsyncInterval: 20 * time.Millisecond}
	if os.Getenv(pcEnvMode) == "interval" {
		opts.Durability = spool.Interval
	}
	s, err := spool.Open(path, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "open: %v\n", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		_ = out.Flush() // one write(2) per line
		mu.Unlock()
	}
	ctx := context.Background()
	// Phase 1: the producers fill half of the run quickly. Phase 2: the
	// consumer drains while they send the other half at a trickle, as
	// devices do while a backlog drains. The consumer acks what it leases
	// from lanes 0 and 4 (nacking every fifth message once first) and holds
	// lane 8's leases: lane 8 keeps a backlog, the other lanes churn.
	per := n / pcProducers
	var filled, wg sync.WaitGroup
	filled.Add(pcProducers)
	for p := range pcProducers {
		wg.Go(func() {
			for seq := 0; seq < per; seq++ {
				if seq == per/2 {
					filled.Done()
				}
				if seq >= per/2 {
					time.Sleep(2 * time.Millisecond)
				}
				r, err := s.Put(ctx, spool.Entry{Priority: uint8(p * 4), Data: pcPayload(p, seq)})
				if err != nil {
					fmt.Fprintf(os.Stderr, "put: %v\n", err)
					os.Exit(3)
				}
				key, _ := pcParse(pcPayload(p, seq))
				say("put %s %d", key, r.ID)
			}
		})
	}
	filled.Wait()
	done := make(chan struct{})
	var cw sync.WaitGroup
	cw.Go(func() {
		nacked := map[uint64]bool{}
		for {
			items, err := s.TryLease(4)
			if err != nil {
				fmt.Fprintf(os.Stderr, "lease: %v\n", err)
				os.Exit(4)
			}
			var ack, nack []uint64
			for _, it := range items {
				if it.Priority == 8 {
					continue // lane 8 is the backlog: leased, never acked
				}
				if it.ID%5 == 0 && !nacked[it.ID] {
					nacked[it.ID] = true
					nack = append(nack, it.ID)
				} else {
					ack = append(ack, it.ID)
				}
			}
			if len(ack) > 0 {
				say("acking %s", strings.Trim(fmt.Sprint(ack), "[]"))
				if err := s.Ack(ctx, ack...); err != nil {
					fmt.Fprintf(os.Stderr, "ack: %v\n", err)
					os.Exit(5)
				}
			}
			if len(nack) > 0 {
				if err := s.Nack(ctx, nack...); err != nil {
					fmt.Fprintf(os.Stderr, "nack: %v\n", err)
					os.Exit(6)
				}
			}
			if len(items) == 0 {
				select {
				case <-done:
					return
				case <-time.After(time.Millisecond):
				}
			}
		}
	})
	wg.Wait()
	close(done)
	cw.Wait()
	if err := s.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "close: %v\n", err)
		os.Exit(7)
	}
	os.Exit(0)
}

// pcResult is what the opening child found in one image.
type pcResult struct {
	Image      int
	OpenErr    string
	Salvaged   bool
	Report     string
	Found      []string // payload keys, queue and DLQ
	Garbled    int
	Messages   int64 // Stats after Open: queued
	DLQ        int64
	Leased     int // messages TryLease handed out
	DeadLeft   int // DLQ entries listed
	WorkErr    string
	CloseErr   string
	OpenMillis int64
}

// runPowerCutOpenChild (TestMain runs it when pcEnvImages is set) opens
// each image listed (one path per line) in the file named by
// FERRY_POWERCUT_CHILD_IMAGES and prints "begin N" before and a JSON
// pcResult after each. It never returns.
func runPowerCutOpenChild() {
	list := os.Getenv(pcEnvImages)
	b, err := os.ReadFile(list)
	if err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(0)
	}
	skip, _ := strconv.Atoi(os.Getenv("FERRY_POWERCUT_CHILD_SKIP"))
	for i, path := range strings.Fields(string(b)) {
		if i < skip {
			continue
		}
		fmt.Printf("begin %d\n", i)
		r := pcOpen(path)
		r.Image = i
		j, _ := json.Marshal(r)
		fmt.Printf("%s\n", j)
	}
	os.Exit(0)
}

func pcOpen(path string) (r pcResult) {
	defer func() {
		if p := recover(); p != nil {
			r.OpenErr = fmt.Sprintf("panic: %v", p)
		}
	}()
	start := time.Now()
	s, err := spool.Open(path, spool.Options{LowerLaneShare: -1, LeaseTimeout: time.Hour, LockTimeout: 100 * time.Millisecond})
	r.OpenMillis = time.Since(start).Milliseconds()
	if err != nil {
		r.OpenErr = err.Error()
		return r
	}
	if rep := s.Salvaged(); rep != nil {
		r.Salvaged, r.Report = true, rep.String()
	}
	st := s.Stats()
	r.Messages, r.DLQ = st.Messages, st.DLQMessages
	for range 10000 {
		items, err := s.TryLease(500)
		if err != nil {
			r.WorkErr = err.Error()
			break
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			r.Leased++
			if k, ok := pcParse(it.Data); ok {
				r.Found = append(r.Found, k)
			} else {
				r.Garbled++
			}
		}
	}
	var after uint64
	for range 10000 {
		d, err := s.DLQ(after, 500)
		if err != nil {
			r.WorkErr = err.Error()
			break
		}
		if len(d) == 0 {
			break
		}
		for _, x := range d {
			r.DeadLeft++
			if k, ok := pcParse(x.Data); ok {
				r.Found = append(r.Found, k)
			}
			after = x.ID
		}
	}
	if r.WorkErr == "" {
		if _, err := s.Put(context.Background(), spool.Entry{Data: []byte("after-open")}); err != nil {
			r.WorkErr = "Put after Open: " + err.Error()
		}
	}
	if err := s.Close(); err != nil {
		r.CloseErr = err.Error()
	}
	return r
}

func pcEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestPowerCut(t *testing.T) {
	if testing.Short() {
		t.Skip("power-cut test: skipped under -short (it records a child under strace)")
	}
	if err := spooltest.HaveStrace(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("power-cut test needs strace: %v", err)
		}
		t.Skipf("power-cut test needs strace: %v", err)
	}
	long := os.Getenv("FERRY_POWERCUT") == "long"
	images := pcEnvInt("FERRY_POWERCUT_IMAGES", map[bool]int{false: 64, true: 800}[long])
	messages := pcEnvInt("FERRY_POWERCUT_MESSAGES", map[bool]int{false: 600, true: 1500}[long])
	modes := []string{"sync"}
	if long {
		modes = append(modes, "interval")
	}
	if kept := os.Getenv("FERRY_POWERCUT_TRACE"); kept != "" {
		modes = []string{"sync"} // the kept trace's durability is in its name
		if strings.Contains(filepath.Base(kept), "-interval-") {
			modes = []string{"interval"}
		}
	}
	seed := testSeed(t)
	for mi, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			runPowerCut(t, mode, seed+uint64(mi), images, messages)
		})
	}
}

func runPowerCut(t *testing.T, mode string, seed uint64, images, messages int) {
	dir := t.TempDir()
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		dir = d
	}
	path := filepath.Join(dir, "spool.db")
	traceFile := filepath.Join(dir, "trace.txt")
	if kept := os.Getenv("FERRY_POWERCUT_TRACE"); kept != "" {
		traceFile = kept
	}
	var tr *spooltest.Trace
	if os.Getenv("FERRY_POWERCUT_TRACE") != "" {
		f, err := os.Open(traceFile)
		if err != nil {
			t.Fatal(err)
		}
		tr, err = spooltest.ParseStrace(f)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		path = ""
		for _, p := range tr.Files() {
			if strings.HasSuffix(p, "/spool.db") {
				path = p
			}
		}
		if path == "" {
			t.Fatalf("%s: no spool.db written in the trace", traceFile)
		}
	} else {
		// Not testkit.StartChild: the child runs under strace
		// (spooltest.Record), which starts and reaps it and hands back its
		// output in the trace.
		cmd := testkit.Command("-test.run=^$")
		cmd.Env = append(os.Environ(), pcEnvPath+"="+path, pcEnvMode+"="+mode, pcEnvMessages+"="+strconv.Itoa(messages))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		ctx, cancel := context.WithTimeout(t.Context(), testkit.Timeout(3*time.Minute))
		defer cancel()
		start := time.Now()
		var err error
		tr, err = spooltest.Record(ctx, cmd, traceFile, path)
		if err != nil {
			t.Fatalf("recording the workload under strace: %v\n%s", err, stderr.String())
		}
		t.Logf("recorded %d events in %v", len(tr.Events), time.Since(start).Round(time.Millisecond))
	}

	// What the child said, and when.
	type putAt struct {
		key string
		id  uint64
		at  int
	}
	var puts []putAt
	ackingAt := map[uint64]int{} // id → first "acking" position
	for _, l := range tr.Lines() {
		f := strings.Fields(l.Text)
		switch {
		case len(f) == 3 && f[0] == "put":
			id, _ := strconv.ParseUint(f[2], 10, 64)
			puts = append(puts, putAt{f[1], id, l.At})
		case len(f) > 1 && f[0] == "acking":
			for _, s := range f[1:] {
				id, _ := strconv.ParseUint(s, 10, 64)
				if _, ok := ackingAt[id]; !ok {
					ackingAt[id] = l.At
				}
			}
		}
	}
	cuts := tr.Cuts(path)
	if len(puts) < messages/2 || len(cuts) < 10 {
		t.Fatalf("the recorded run has %d acknowledged Puts and %d syncs: nothing to test", len(puts), len(cuts)-1)
	}
	t.Logf("%s durability: %d Puts acknowledged, %d acks started, %d fdatasyncs, %d commits whose meta page was not synced at once; seed %d; trace %s",
		mode, len(puts), len(ackingAt), len(cuts)-1, pcUnsyncedCommits(tr, path), seed, traceFile)

	// Build the images.
	rng := rand.New(rand.NewPCG(seed, 0x9c07))
	type image struct {
		path, desc string
		cut        spooltest.Cut
		required   []string
	}
	var imgs []image
	// Half of the cuts uniformly, half weighted by how many writes are in
	// flight after them: the more that can be reordered, the more a cut
	// can expose.
	weights := make([]int, len(cuts))
	totalW := 0
	for i, c := range cuts {
		for _, e := range tr.Events {
			if e.File == path && e.Kind == spooltest.EvWrite && e.Exit >= c.Durable && e.Entry < c.Horizon {
				weights[i]++
			}
		}
		totalW += weights[i]
	}
	pick := func() spooltest.Cut {
		if rng.IntN(2) == 0 || totalW == 0 {
			return cuts[rng.IntN(len(cuts))]
		}
		w := rng.IntN(totalW)
		for i, x := range weights {
			if w < x {
				return cuts[i]
			}
			w -= x
		}
		return cuts[len(cuts)-1]
	}
	for i := range images {
		c := pick()
		if i == 0 {
			c = cuts[len(cuts)-1] // the file as the child left it, more or less
		}
		b, desc := tr.Image(path, c, rng, spooltest.ImageOptions{Keep: -1})
		p := filepath.Join(dir, fmt.Sprintf("image-%03d.db", i))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if os.Getenv("FERRY_POWERCUT_KEEP") != "" {
			_ = os.WriteFile(p+".orig", b, 0o600)
		}
		// Must survive: Puts acknowledged before the cut could have
		// happened (Sync: before the next fdatasync returned; Interval:
		// before this fdatasync started), unless their ack had begun.
		bound := c.Horizon
		if mode == "interval" {
			bound = c.Durable
		}
		var req []string
		for _, p := range puts {
			if a, acking := ackingAt[p.id]; p.at < bound && (!acking || a >= c.Horizon) {
				req = append(req, p.key)
			}
		}
		imgs = append(imgs, image{p, desc, c, req})
	}
	list := filepath.Join(dir, "images.txt")
	var lb strings.Builder
	for _, im := range imgs {
		lb.WriteString(im.path + "\n")
	}
	if err := os.WriteFile(list, []byte(lb.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	results := pcOpenAll(t, list, len(imgs))
	failed, salvaged, clean := 0, 0, 0
	var failures []string
	for i, im := range imgs {
		r := results[i]
		var why []string
		switch {
		case r == nil:
			why = append(why, "no result")
		case r.OpenErr != "":
			why = append(why, "Open failed: "+r.OpenErr)
		default:
			found := map[string]int{}
			for _, k := range r.Found {
				found[k]++
			}
			var lost []string
			for _, k := range im.required {
				if found[k] == 0 {
					lost = append(lost, k)
				}
			}
			if len(lost) > 0 {
				why = append(why, fmt.Sprintf("%d of %d acknowledged messages lost (e.g. %v), salvage report: %q", len(lost), len(im.required), lost[:min(3, len(lost))], r.Report))
			}
			for k, n := range found {
				if n > 1 {
					why = append(why, fmt.Sprintf("%s found %d times", k, n))
					break
				}
			}
			if mode == "sync" && r.Salvaged && im.cut.Sync >= 0 {
				// Every commit is fsync'd, its pages before its meta
				// page, before the next begins: a cut leaves at most one
				// unfinished, whose meta page is not there or fails its
				// checksum, and the tree before is whole. (Before the
				// first fsync the file's creation may be cut short: that
				// is moved aside with a report.)
				why = append(why, "salvaged in sync durability: "+r.Report)
			}
			if r.Garbled > 0 {
				why = append(why, fmt.Sprintf("%d garbled messages leased", r.Garbled))
			}
			if r.WorkErr != "" || r.CloseErr != "" {
				why = append(why, "the opened spool does not work: "+r.WorkErr+" "+r.CloseErr)
			}
			if !r.Salvaged && (int64(r.Leased) != r.Messages || int64(r.DeadLeft) != r.DLQ) {
				why = append(why, fmt.Sprintf("opened without a damage report, but Stats says %d queued and %d dead, and %d were leased and %d listed",
					r.Messages, r.DLQ, r.Leased, r.DeadLeft))
			}
		}
		switch {
		case len(why) > 0:
			failed++
			failures = append(failures, fmt.Sprintf("image %d (%s): %s", i, im.desc, strings.Join(why, "; ")))
			if keep := os.Getenv("FERRY_POWERCUT_KEEP"); keep != "" {
				// The image as built (the opening child may have salvaged it).
				if data, err := os.ReadFile(im.path + ".orig"); err == nil {
					_ = os.WriteFile(filepath.Join(keep, fmt.Sprintf("image-%03d.db", i)), data, 0o600)
				}
			}
		case r.Salvaged:
			salvaged++
		default:
			clean++
		}
	}
	t.Logf("%d images: %d opened clean, %d salvaged, %d failed", len(imgs), clean, salvaged, failed)
	if failed > 0 {
		keep := filepath.Join(os.TempDir(), fmt.Sprintf("ferry-powercut-%s-%d.trace", mode, seed))
		if os.Getenv("FERRY_POWERCUT_TRACE") == "" {
			if b, err := os.ReadFile(traceFile); err == nil && os.WriteFile(keep, b, 0o600) == nil {
				traceFile = keep
			}
		}
		for _, f := range failures[:min(len(failures), 12)] {
			t.Error(f)
		}
		t.Fatalf("%d of %d power-cut images failed (seed %d; reproduce with FERRY_SPOOL_SEED=%d FERRY_POWERCUT_TRACE=%s FERRY_POWERCUT_IMAGES=%d)",
			failed, len(imgs), seed, seed, traceFile, len(imgs))
	}
}

// pcOpenAll opens the listed images in child processes: one child opens
// them in turn; when one crashes or hangs on an image, that image gets its
// failure and a new child goes on with the next.
func pcOpenAll(t *testing.T, list string, n int) []*pcResult {
	t.Helper()
	res := make([]*pcResult, n)
	next := 0
	for next < n {
		c := testkit.StartChild(t, pcEnvImages+"="+list, "FERRY_POWERCUT_CHILD_SKIP="+strconv.Itoa(next))
		current := -1
		hung := false
		for i := 0; ; i++ {
			l, err := c.Line(i, 30*time.Second)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				hung = true
				c.Kill()
			}
			if err != nil {
				break
			}
			if strings.HasPrefix(l, "begin ") {
				current, _ = strconv.Atoi(strings.TrimPrefix(l, "begin "))
				continue
			}
			if strings.HasPrefix(l, "{") {
				var r pcResult
				if err := json.Unmarshal([]byte(l), &r); err == nil && r.Image < n {
					res[r.Image] = &r
					next = r.Image + 1
					current = -1
				}
			}
		}
		werr := c.Wait()
		stderr := c.Stderr()
		if current >= 0 {
			what := "crashed"
			if hung {
				what = "hung (hang guard)"
			}
			res[current] = &pcResult{Image: current, OpenErr: fmt.Sprintf("the process opening it %s (%v): %s", what, werr, firstLines(stderr, 6))}
			next = current + 1
		} else if next < n && res[next] == nil {
			t.Fatalf("the opening child stopped before image %d: %v\n%s", next, werr, stderr)
		}
	}
	return res
}

func firstLines(s string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "panic") || strings.HasPrefix(l, "fatal") || strings.HasPrefix(l, "unexpected") || strings.HasPrefix(l, "[signal") {
			out = append(out, l)
		}
		if len(out) >= n {
			break
		}
	}
	if len(out) == 0 && len(s) > 0 {
		return s[:min(len(s), 400)]
	}
	return strings.Join(out, " | ")
}

// pcUnsyncedCommits counts meta page writes (bbolt's commit points: pages 0
// and 1) that the next call on the file does not sync.
func pcUnsyncedCommits(tr *spooltest.Trace, path string) int {
	n, pending := 0, false
	for _, e := range tr.Events {
		if e.File != path {
			continue
		}
		switch e.Kind {
		case spooltest.EvSync:
			pending = false
		case spooltest.EvWrite:
			if pending {
				n++
			}
			pending = (e.Off == 0 || e.Off == 4096) && len(e.Data) == 4096
		}
	}
	return n
}
