package chaos

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/ferrymq/ferry/bridge/bridgetest"
)

// form is the size of a campaign: the short one runs in `make test`, the
// full one in `make chaos` (FERRY_CHAOS=full).
type form struct {
	name       string
	kills      int   // SIGKILLs in the kill phase
	linkFaults int   // faults in the link phase
	backlog    int64 // messages queued before the link phase's drain starts
	// stopModes 1: each corruption case stops the gateway one way (chosen
	// by the seed); 2: both ways. corruptRepeat: runs of each damage whose
	// place the seed chooses.
	stopModes, corruptRepeat int
	load                     loadOptions
}

var forms = map[string]form{
	"short": {
		name: "short", kills: 5, linkFaults: 12, backlog: 1500, stopModes: 1, corruptRepeat: 1,
		load: loadOptions{devices: 6, rate: 40, window: 8, payload: 200, wave: 4 * time.Second},
	},
	"full": {
		name: "full", kills: 24, linkFaults: 60, backlog: 20000, stopModes: 2, corruptRepeat: 3,
		load: loadOptions{devices: 9, rate: 80, window: 8, payload: 200, wave: 8 * time.Second},
	},
}

// campaign is one run of TestChaos: its seed, its form, the ferry binary,
// and the report every phase adds to.
type campaign struct {
	seed  uint64
	form  form
	bin   string
	start time.Time

	mu     sync.Mutex
	phases []*phase
}

// phase is one subtest of the campaign: its own seeded schedule, its
// counts for the report, and its failures, each with the command that
// runs it again.
type phase struct {
	t   *testing.T
	c   *campaign
	rng *rand.Rand

	mu                          sync.Mutex
	name                        string
	kills, faults               int
	acked, arrived, lost        int
	dupSame, dupOther, reorders int
	damageLost                  int // acknowledged ids lost to spool damage the gateway reported
	defects                     []string
	began                       time.Time
	elapsed                     time.Duration
}

func (c *campaign) phase(t *testing.T) *phase {
	name := strings.TrimPrefix(t.Name(), "TestChaos/")
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	p := &phase{t: t, c: c, name: name, rng: rand.New(rand.NewPCG(c.seed, h.Sum64())), began: time.Now()}
	c.mu.Lock()
	c.phases = append(c.phases, p)
	c.mu.Unlock()
	t.Cleanup(func() {
		p.mu.Lock()
		p.elapsed = time.Since(p.began)
		p.mu.Unlock()
	})
	return p
}

// repro is the command that runs this phase again with the same schedule.
func (p *phase) repro() string {
	parts := strings.Split(p.t.Name(), "/")
	for i, s := range parts {
		parts[i] = "^" + regexp.QuoteMeta(s) + "$"
	}
	return fmt.Sprintf("FERRY_CHAOS_SEED=%d FERRY_CHAOS=%s PATH=$PATH:/usr/sbin go test -run '%s' -count=1 -v ./cmd/ferry/chaos/",
		p.c.seed, p.c.form.name, strings.Join(parts, "/"))
}

// fail records a defect: the test fails, the phase goes on (so one run
// finds more than the first problem), and the report lists it.
func (p *phase) fail(format string, args ...any) {
	p.t.Helper()
	msg := fmt.Sprintf(format, args...)
	p.mu.Lock()
	p.defects = append(p.defects, firstLine(msg))
	p.mu.Unlock()
	p.t.Errorf("chaos %s (seed %d): %s\nreproduce: %s", p.name, p.c.seed, msg, p.repro())
}

// fatal is fail, then the phase stops.
func (p *phase) fatal(format string, args ...any) {
	p.t.Helper()
	p.fail(format, args...)
	p.t.FailNow()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// between draws a duration in [lo, hi).
func (p *phase) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(p.rng.Int64N(int64(hi-lo)))
}

// TestChaos is the campaign: the whole gateway as a child process, real
// mosquitto, faults, devices and an upstream recorder (see the package
// doc and docs/chaos.md). The short form runs in `make test`; `make chaos`
// runs the full one.
func TestChaos(t *testing.T) {
	bridgetest.RequireMosquitto(t) // skips under -short; fails without mosquitto when CI=true
	name := os.Getenv("FERRY_CHAOS")
	if name == "" {
		name = "short"
	}
	f, ok := forms[name]
	if !ok {
		t.Fatalf("FERRY_CHAOS=%q: want short or full", name)
	}
	seed := rand.Uint64() >> 1 // printable as a positive int64
	if s := os.Getenv("FERRY_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_CHAOS_SEED=%q: not a number", s)
		}
		seed = v
	}
	t.Logf("chaos: form %s, seed %d (FERRY_CHAOS_SEED=%d reproduces the schedule)", f.name, seed, seed)
	c := &campaign{seed: seed, form: f, bin: buildFerry(t), start: time.Now()}
	defer func() {
		rep := c.report()
		t.Log("\n" + rep)
		if path := os.Getenv("FERRY_CHAOS_REPORT"); path != "" {
			if err := os.WriteFile(path, []byte(rep), 0o644); err != nil {
				t.Errorf("FERRY_CHAOS_REPORT: %v", err)
			}
		}
	}()

	t.Run("kill", func(t *testing.T) { testKills(t, c, false, c.form.kills) })
	t.Run("kill-fanout", func(t *testing.T) { testKills(t, c, true, max(3, c.form.kills/2)) })
	t.Run("link", func(t *testing.T) { testLinkFaults(t, c) })
	t.Run("diskfull", func(t *testing.T) {
		t.Run("above", func(t *testing.T) { testDiskFullAbove(t, c) })
		t.Run("below", func(t *testing.T) { testDiskFullBelow(t, c) })
	})
	t.Run("corrupt", func(t *testing.T) { testCorruption(t, c) })
}

// report is the table `make chaos` prints: per phase and in total, the
// cycles (SIGKILLs), faults, acknowledged ids, lost, duplicates (with the
// original envelope id / with another), reordered first arrivals, and the
// defects found.
func (c *campaign) report() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "chaos report: form %s, seed %d, %v\n", c.form.name, c.seed, time.Since(c.start).Round(time.Second))
	fmt.Fprintf(&b, "reproduce: FERRY_CHAOS_SEED=%d FERRY_CHAOS=%s PATH=$PATH:/usr/sbin go test -run '^TestChaos$' -count=1 -v ./cmd/ferry/chaos/\n", c.seed, c.form.name)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tcycles\tfaults\tacknowledged\tarrived\tlost\tduplicates\tdup-new-id\treordered\tlost-to-damage\ttime\tresult\t")
	var tot phase
	var defects []string
	for _, p := range c.phases {
		p.mu.Lock()
		res := "ok"
		if len(p.defects) > 0 {
			res = fmt.Sprintf("%d defect(s)", len(p.defects))
		} else if p.t.Skipped() {
			res = "skipped"
		} else if p.t.Failed() {
			res = "failed"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%v\t%s\t\n", p.name, p.kills, p.faults, p.acked, p.arrived, p.lost,
			p.dupSame+p.dupOther, p.dupOther, p.reorders, p.damageLost, p.elapsed.Round(100*time.Millisecond), res)
		tot.kills += p.kills
		tot.faults += p.faults
		tot.acked += p.acked
		tot.arrived += p.arrived
		tot.lost += p.lost
		tot.dupSame += p.dupSame
		tot.dupOther += p.dupOther
		tot.reorders += p.reorders
		tot.damageLost += p.damageLost
		for _, d := range p.defects {
			defects = append(defects, p.name+": "+d)
		}
		p.mu.Unlock()
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\t\t\n", tot.kills, tot.faults, tot.acked, tot.arrived, tot.lost,
		tot.dupSame+tot.dupOther, tot.dupOther, tot.reorders, tot.damageLost)
	_ = tw.Flush()
	if len(defects) > 0 {
		fmt.Fprintf(&b, "defects (%d):\n", len(defects))
		for _, d := range defects {
			fmt.Fprintf(&b, "  - %s\n", d)
		}
	}
	return b.String()
}
