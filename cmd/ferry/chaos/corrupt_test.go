package chaos

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/gateway"
)

// pageSize is bbolt's page size on the machines Ferry runs on.
const pageSize = 4096

// damage is one way a spool file gets hurt: a torn write, SD-card rot, a
// careless operator. do damages the file at path and says what it did.
type damage struct {
	name, kind string
	random     bool // where it hits depends on the seed: the full form runs it more than once
	// refusable: the file holds nothing recognisable as a spool, so the
	// gateway may refuse it (spool.ErrNotSpool, file untouched) instead
	// of salvaging; spool.Open documents that choice.
	refusable bool
	do        func(rng *rand.Rand, path string, size int64) (string, error)
}

var damages = []damage{
	{name: "truncate-mid", kind: "truncate", random: true, do: func(rng *rand.Rand, path string, size int64) (string, error) {
		n := 2*pageSize + rng.Int64N(max(size-2*pageSize, 1))
		return fmt.Sprintf("truncated from %d to %d bytes", size, n), os.Truncate(path, n)
	}},
	{name: "truncate-tail", kind: "truncate", random: true, do: func(rng *rand.Rand, path string, size int64) (string, error) {
		pages := size / pageSize
		n := size - pageSize*(1+rng.Int64N(max(pages/4, 1))) - rng.Int64N(pageSize)
		n = max(n, 2*pageSize)
		return fmt.Sprintf("truncated from %d to %d bytes (the tail)", size, n), os.Truncate(path, n)
	}},
	{name: "truncate-empty", kind: "truncate", do: func(_ *rand.Rand, path string, size int64) (string, error) {
		return fmt.Sprintf("truncated from %d to 0 bytes", size), os.Truncate(path, 0)
	}},
	{name: "flip-data", kind: "flip", random: true, do: func(rng *rand.Rand, path string, size int64) (string, error) {
		return flipBits(rng, path, 2*pageSize, size, 1+rng.IntN(32))
	}},
	{name: "flip-meta", kind: "flip", random: true, do: func(rng *rand.Rand, path string, _ int64) (string, error) {
		return flipBits(rng, path, 0, 2*pageSize, 1+rng.IntN(4))
	}},
	{name: "zero-meta0", kind: "zero", do: func(_ *rand.Rand, path string, _ int64) (string, error) {
		return overwrite(path, 0, make([]byte, pageSize), "zeroed meta page 0")
	}},
	{name: "zero-meta1", kind: "zero", do: func(_ *rand.Rand, path string, _ int64) (string, error) {
		return overwrite(path, pageSize, make([]byte, pageSize), "zeroed meta page 1")
	}},
	{name: "zero-metas", kind: "zero", do: func(_ *rand.Rand, path string, _ int64) (string, error) {
		return overwrite(path, 0, make([]byte, 2*pageSize), "zeroed both meta pages")
	}},
	{name: "zero-page", kind: "zero", random: true, do: func(rng *rand.Rand, path string, size int64) (string, error) {
		pg := 2 + rng.Int64N(max(size/pageSize-2, 1))
		return overwrite(path, pg*pageSize, make([]byte, pageSize), fmt.Sprintf("zeroed page %d of %d", pg, size/pageSize))
	}},
	{name: "garbage-span", kind: "garbage", random: true, do: func(rng *rand.Rand, path string, size int64) (string, error) {
		pages := size / pageSize
		n := 1 + rng.Int64N(8)
		pg := 2 + rng.Int64N(max(pages-2-n, 1))
		buf := randomBytes(rng, int(n*pageSize))
		return overwrite(path, pg*pageSize, buf, fmt.Sprintf("garbage over pages %d..%d of %d", pg, pg+n-1, pages))
	}},
	{name: "garbage-all", kind: "garbage", refusable: true, do: func(rng *rand.Rand, path string, size int64) (string, error) {
		return overwrite(path, 0, randomBytes(rng, int(size)), fmt.Sprintf("the whole file (%d bytes) replaced by garbage", size))
	}},
}

func flipBits(rng *rand.Rand, path string, from, to int64, n int) (string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	var at []string
	for range n {
		off := from + rng.Int64N(max(to-from, 1))
		var b [1]byte
		if _, err := f.ReadAt(b[:], off); err != nil {
			return "", err
		}
		bit := byte(1) << rng.IntN(8)
		b[0] ^= bit
		if _, err := f.WriteAt(b[:], off); err != nil {
			return "", err
		}
		if len(at) < 4 {
			at = append(at, fmt.Sprintf("%d^%#02x", off, bit))
		}
	}
	more := ""
	if n > len(at) {
		more = " …"
	}
	return fmt.Sprintf("flipped %d bits at %s%s", n, strings.Join(at, " "), more), f.Sync()
}

func overwrite(path string, off int64, b []byte, what string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	if _, err := f.WriteAt(b, off); err != nil {
		return "", err
	}
	return what, f.Sync()
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// testCorruption runs the corruption matrix: for every damage, a gateway
// spools a backlog with the link down, is stopped (SIGTERM or SIGKILL), its
// file damaged, and started again. The short form stops each case one way
// (chosen by the seed); the full form both ways, and runs the damages whose
// place depends on the seed c.form.corruptRepeat times.
func testCorruption(t *testing.T, c *campaign) {
	for _, d := range damages {
		repeat := 1
		if d.random {
			repeat = max(c.form.corruptRepeat, 1)
		}
		for n := range repeat {
			modes := []string{"term", "kill"}
			if c.form.stopModes == 1 {
				h := fnv.New64a()
				_, _ = h.Write([]byte(d.name))
				i := (h.Sum64() ^ c.seed) & 1
				modes = modes[i : i+1]
			}
			for _, mode := range modes {
				name := d.name + "/" + mode
				if repeat > 1 {
					name = fmt.Sprintf("%s/%s-%d", d.name, mode, n+1)
				}
				t.Run(name, func(t *testing.T) { testDamage(t, c, d, mode) })
			}
		}
	}
}

// salvage is the report the gateway gave of a salvage, from its log: the
// line whose message mentions the salvage and that has a numeric "kept";
// "lost" a number (-1: unknown) or a text with "at least N", or a lower
// bound in "lost_at_least"/"lost_min"; the damaged file in "damaged" or
// "damaged_file".
type salvage struct {
	kept, lost int // lost -1: unknown
	atLeast    int // a lower bound of lost when lost is unknown; -1: none given
	damaged    string
	raw        logEntry
}

func findSalvage(entries []logEntry) *salvage {
	for _, e := range entries {
		kept, ok := e["kept"].(float64)
		if !ok || !strings.Contains(strings.ToLower(e.str("msg")), "salvag") {
			continue
		}
		s := &salvage{kept: int(kept), lost: -1, atLeast: -1, damaged: e.str("damaged"), raw: e}
		if s.damaged == "" {
			s.damaged = e.str("damaged_file")
		}
		switch v := e["lost"].(type) {
		case float64:
			s.lost = int(v)
		case string: // "2" (exact: spool.SalvageReport.LostText) or "unknown, at least 217"
			if n, err := strconv.Atoi(v); err == nil {
				s.lost = n
			} else if i := strings.Index(v, "at least "); i >= 0 {
				_, _ = fmt.Sscanf(v[i+len("at least "):], "%d", &s.atLeast)
			}
		}
		for _, k := range []string{"lost_at_least", "lost_min"} {
			if v, ok := e[k].(float64); ok {
				s.atLeast = int(v)
			}
		}
		return s
	}
	return nil
}

// testDamage: the gateway must start on the damaged file, and either
// report the damage and deliver exactly what it says it kept, or (damage
// in pages not in use) report none and deliver everything.
func testDamage(t *testing.T, c *campaign, d damage, mode string) {
	p := c.phase(t)
	r := newRig(p, rigOptions{linkDown: true})
	o := c.form.load
	o.wave = p.between(time.Second, 2*time.Second)
	l := r.startLoad(o)
	l.Stop()
	acked := l.Acked()
	held := r.status().Spool.Messages
	if mode == "term" {
		if err := r.gw.stop(); err != nil {
			p.fail("graceful stop: %v", err)
		}
	} else {
		r.gw.kill()
	}
	fi, err := os.Stat(r.spoolPath)
	if err != nil {
		t.Fatal(err)
	}
	what, err := d.do(p.rng, r.spoolPath, fi.Size())
	if err != nil {
		t.Fatalf("damage %s: %v", d.name, err)
	}
	p.mu.Lock()
	p.faults++
	p.mu.Unlock()
	t.Logf("%d messages queued (%d acknowledged to devices), gateway stopped by %s, spool file %s", held, len(acked), mode, what)

	damaged, err := os.ReadFile(r.spoolPath)
	if err != nil {
		t.Fatal(err)
	}
	off := r.gw.logSize()
	if err := r.gw.start(false); err != nil {
		if d.refusable && strings.Contains(err.Error(), "not a ferry spool") && strings.Contains(err.Error(), r.spoolPath) {
			if now, rerr := os.ReadFile(r.spoolPath); rerr != nil || !bytes.Equal(now, damaged) {
				p.fail("the gateway refused a spool file %s as not a spool, but changed it (%v)", what, rerr)
			}
			t.Logf("refused, as spool.Open documents for a file without a Ferry record (file untouched): %s", firstLine(err.Error()))
			p.mu.Lock()
			p.acked += len(acked)
			p.damageLost += len(acked)
			p.mu.Unlock()
			return
		}
		p.fatal("the gateway does not start on a spool file %s (%d messages queued, stopped by %s): %v", what, held, mode, err)
	}
	sal := findSalvage(r.gw.logSince(off))
	queued := r.status().Spool.Messages
	want := held
	switch {
	case sal != nil:
		want = int64(sal.kept)
		t.Logf("salvage report: %v", sal.raw)
		if queued != want {
			p.fail("spool file %s: the salvage reports %d kept, the spool holds %d", what, sal.kept, queued)
		}
		if sal.lost >= 0 && int64(sal.kept+sal.lost) != held {
			p.fail("spool file %s: the salvage reports %d kept and %d lost, but %d were queued (%d unaccounted for)",
				what, sal.kept, sal.lost, held, held-int64(sal.kept+sal.lost))
		}
		if sal.lost < 0 && sal.atLeast < 0 && int64(sal.kept) < held {
			p.fail("spool file %s: the salvage kept %d of %d queued messages but reports the loss as unknown (lost=-1) with no lower bound (issue 9 defect 5: \"unknown, at least N\")",
				what, sal.kept, held)
		}
		if sal.atLeast >= 0 && int64(sal.kept+sal.atLeast) > held {
			p.fail("spool file %s: the salvage reports %d kept and at least %d lost, but only %d were queued", what, sal.kept, sal.atLeast, held)
		}
		if sal.damaged == "" {
			p.fail("spool file %s: the salvage report does not say where the damaged file went", what)
		} else if _, err := os.Stat(sal.damaged); err != nil {
			p.fail("spool file %s: the damaged file is not where the report says: %v", what, err)
		}
		out, _ := exec.Command(c.bin, "spool", "stats", "-c", r.gw.cfg).CombinedOutput()
		t.Logf("ferry spool stats:\n%s", out)
		if !strings.Contains(strings.ToLower(string(out)), "salvag") {
			p.fail("spool file %s: `ferry spool stats` says nothing of the salvage (docs/operations.md: \"the log and ferry spool stats say how many were kept and lost\")", what)
		}
	case queued != held:
		p.fail("spool file %s: no damage reported, but the spool holds %d of the %d messages queued before", what, queued, held)
	}

	r.proxy.Heal()
	st, ok := r.pollStatus(testkit60, func(st *gateway.Status) bool {
		return st.Spool.Messages == 0 && st.Spool.Leased == 0 && st.Link.InFlight == 0
	})
	if !ok {
		p.fatal("spool file %s: the salvaged spool does not drain: %s", what, brief(st))
	}
	r.barrier()
	rep := r.v.Report(acked)
	t.Logf("after the damage: %s", rep)
	p.mu.Lock()
	p.acked += rep.Acked
	p.arrived += rep.Arrived
	p.dupSame += rep.DupSameEnvelope
	p.dupOther += rep.DupNewEnvelope + rep.DupNoEnvelope
	p.reorders += rep.OrderViolations
	if sal != nil {
		p.damageLost += rep.Lost
	} else {
		p.lost += rep.Lost
	}
	p.mu.Unlock()
	if int64(rep.Arrived) != want {
		p.fail("spool file %s: %s %d messages, the recorder received %d distinct readings",
			what, map[bool]string{true: "the salvage reports it kept", false: "the spool held"}[sal != nil], want, rep.Arrived)
	}
	// Each kept message goes out once; a second copy needs a bridge resend
	// to explain it (a stall on a loaded machine), else the spool held it
	// twice.
	if dups := rep.Deliveries - rep.Arrived; uint64(dups) > st.Link.Resent {
		p.fail("spool file %s: %d duplicate deliveries but only %d bridge resends: the salvaged spool holds messages twice", what, dups, st.Link.Resent)
	}
	if sal == nil && rep.Lost > 0 {
		p.fail("spool file %s: %d acknowledged ids were lost and no damage was reported, e.g. %s", what, rep.Lost, sample(rep.LostIDs))
	}
	if rep.OrderViolations > 0 {
		p.fail("spool file %s: %d first arrivals out of order: %s", what, rep.OrderViolations, strings.Join(rep.OrderSamples, "; "))
	}
	if rep.Malformed > 0 {
		p.fail("spool file %s: %d payloads upstream were not readings (a damaged record delivered?)", what, rep.Malformed)
	}
}
