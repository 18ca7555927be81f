package spool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testkit"
	"github.com/ferrymq/ferry/spool"
	"github.com/ferrymq/ferry/spool/spooltest"
)

func stateMap(t *testing.T, s *spool.Spool, kind spool.StateKind, prefix string) map[string]string {
	t.Helper()
	m := map[string]string{}
	if err := s.IterateState(kind, []byte(prefix), func(k, v []byte) error {
		m[string(k)] = string(v)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestStateApplyIterateReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	must := func(ops ...spool.StateOp) {
		t.Helper()
		if err := s.ApplyState(ctx, ops...); err != nil {
			t.Fatal(err)
		}
	}
	must(spool.StatePut(spool.StateRetained, []byte("a/b"), []byte("one")),
		spool.StatePut(spool.StateRetained, []byte("a/c"), []byte("two")),
		spool.StatePut(spool.StateSubscriptions, []byte("dash\x00x/#"), []byte("s1")),
		spool.StatePut(spool.StateSubscriptions, []byte("dash\x00y/+"), []byte("s2")),
		spool.StatePut(spool.StateSubscriptions, []byte("dashboard\x00z"), []byte("s3")))
	must(spool.StatePut(spool.StateRetained, []byte("a/b"), []byte("three")), // replace
		spool.StateDelete(spool.StateRetained, []byte("a/c")),
		spool.StateDeletePrefix(spool.StateSubscriptions, []byte("dash\x00")))
	// Stamps: an older write of a key never replaces a newer one.
	must(spool.StateOp{Kind: spool.StateRetained, Key: []byte("s"), Value: []byte("new"), Stamp: 20})
	must(spool.StateOp{Kind: spool.StateRetained, Key: []byte("s"), Value: []byte("old"), Stamp: 10})
	must(spool.StateOp{Kind: spool.StateRetained, Key: []byte("s"), Stamp: 15}) // an older clear
	want := map[string]string{"a/b": "three", "s": "new"}
	check := func(s *spool.Spool) {
		t.Helper()
		if got := stateMap(t, s, spool.StateRetained, ""); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("retained = %v, want %v", got, want)
		}
		if got := stateMap(t, s, spool.StateSubscriptions, ""); len(got) != 1 || got["dashboard\x00z"] != "s3" {
			t.Fatalf("subscriptions = %q, want only dashboard's", got)
		}
		st := s.StateStats()
		if st[spool.StateRetained].Records != 2 || st[spool.StateSubscriptions].Records != 1 {
			t.Fatalf("stats = %+v", st)
		}
		if b := st[spool.StateRetained].Bytes; b != int64(len("a/b")+len("three")+len("s")+len("new")+2*12) {
			t.Fatalf("retained bytes = %d", b)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = spool.Open(path, spool.Options{Verify: spool.VerifyAlways})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if s.Salvaged() != nil {
		t.Fatalf("salvaged: %v", s.Salvaged())
	}
	check(s)

	for _, bad := range []spool.StateOp{
		{Kind: spool.StateKinds, Key: []byte("k"), Value: []byte("v")},
		{Kind: spool.StateRetained, Value: []byte("v")},
		{Kind: spool.StateRetained, Key: bytes.Repeat([]byte("k"), spool.MaxStateKey+1), Value: []byte("v")},
		{Kind: spool.StateRetained, Key: []byte("k"), Value: []byte("v"), Prefix: true},
	} {
		if err := s.ApplyState(ctx, bad); !errors.Is(err, spool.ErrInvalid) {
			t.Errorf("ApplyState(%+v) = %v, want ErrInvalid", bad.Kind, err)
		}
	}
}

// The cap of a kind: over it a write is refused (ErrStateFull, which is
// ErrFull), a BestEffort one skipped and counted, a Put carrying state
// refused whole; a replacement that does not grow, and a delete, always
// pass.
func TestStateCap(t *testing.T) {
	ctx := t.Context()
	var caps [spool.StateKinds]int64
	caps[spool.StateRetained] = 100
	s, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{StateMaxBytes: caps})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	v40 := bytes.Repeat([]byte("v"), 40)
	if err := s.ApplyState(ctx, spool.StatePut(spool.StateRetained, []byte("t1"), v40)); err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyState(ctx, spool.StatePut(spool.StateRetained, []byte("t2"), v40)); !errors.Is(err, spool.ErrStateFull) || !errors.Is(err, spool.ErrFull) {
		t.Fatalf("over the cap: %v, want ErrStateFull", err)
	}
	if err := s.ApplyState(ctx, spool.StateOp{Kind: spool.StateRetained, Key: []byte("t2"), Value: v40, BestEffort: true}); err != nil {
		t.Fatalf("best effort: %v", err)
	}
	res, err := s.Put(ctx, spool.Entry{Data: []byte("m"), State: []spool.StateOp{spool.StatePut(spool.StateRetained, []byte("t3"), v40)}})
	if !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Put with state over the cap = %v, %v; want ErrFull", res, err)
	}
	if err := s.ApplyState(ctx, spool.StatePut(spool.StateRetained, []byte("t1"), bytes.Repeat([]byte("w"), 40))); err != nil {
		t.Fatalf("replacement of the same size: %v", err)
	}
	st := s.StateStats()[spool.StateRetained]
	if st.Records != 1 || st.Skipped != 1 || st.Refused != 2 {
		t.Fatalf("stats %+v, want 1 record, 1 skipped, 2 refused", st)
	}
	if s.Stats().Messages != 0 {
		t.Fatal("the refused Put was stored")
	}
	if err := s.ApplyState(ctx, spool.StateDelete(spool.StateRetained, []byte("t1")), spool.StatePut(spool.StateRetained, []byte("t2"), v40)); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
}

// A Put's state commits with the message: after Put returns both are
// there, also when the process dies without Close (the next Open sees an
// unclean file); a duplicate changes no state.
func TestStateWithPut(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	put := func(data, key, dedupe string) {
		t.Helper()
		if _, err := s.Put(ctx, spool.Entry{Data: []byte(data), DedupeKey: dedupe,
			State: []spool.StateOp{spool.StatePut(spool.StateRetained, []byte(key), []byte(data))}}); err != nil {
			t.Fatal(err)
		}
	}
	put("on", "pump1/state", "d1")
	put("off", "pump1/state", "d1") // a duplicate of d1: neither stored nor retained
	put("42", "pump2/state", "")
	if got := stateMap(t, s, spool.StateRetained, ""); got["pump1/state"] != "on" || got["pump2/state"] != "42" {
		t.Fatalf("retained = %v", got)
	}
	// Simulate a crash: copy the file as it is on disk while open.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	crashed := filepath.Join(t.TempDir(), "crashed.db")
	if err := os.WriteFile(crashed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := spool.Open(crashed, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s2.Close() }()
	if s2.Salvaged() != nil {
		t.Fatalf("salvaged: %v", s2.Salvaged())
	}
	if got := stateMap(t, s2, spool.StateRetained, ""); got["pump1/state"] != "on" || got["pump2/state"] != "42" || s2.Stats().Messages != 2 {
		t.Fatalf("after the crash: retained %v, %d messages", got, s2.Stats().Messages)
	}
}

// A damaged state record is damage like a damaged message: Open salvages,
// keeps the messages and the intact state, and reports it.
func TestStateSalvage(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := s.Put(ctx, spool.Entry{Data: fmt.Appendf(nil, "message-%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.ApplyState(ctx, spool.StatePut(spool.StateRetained, []byte("good"), []byte("intact-value")),
		spool.StatePut(spool.StateClients, []byte("victim"), []byte("DAMAGE-ME-PLEASE"))); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every copy (copy-on-write leaves older pages in the file).
	if bytes.Count(b, []byte("DAMAGE-ME-PLEASE")) == 0 {
		t.Fatal("the state record is not in the file")
	}
	b = bytes.ReplaceAll(b, []byte("DAMAGE-ME-PLEASE"), []byte("damage-me-please"))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	rep := s.Salvaged()
	if rep == nil || !strings.Contains(rep.Cause, "state") {
		t.Fatalf("salvage report %+v, want one naming the state record", rep)
	}
	if rep.Kept != 20 || rep.StateKept != 1 || s.Stats().Messages != 20 {
		t.Fatalf("kept %d messages and %d state records (want 20, 1); %d queued", rep.Kept, rep.StateKept, s.Stats().Messages)
	}
	// The damaged record is counted, and the kinds of state whose pages
	// were all read are not named as damaged.
	if rep.StateLost != 1 || len(rep.StateDamaged) != 0 || !strings.Contains(rep.String(), "local state: kept 1, lost 1") {
		t.Fatalf("report %+v (%s): want 1 state record lost, no kind damaged", rep, rep)
	}
	if got := stateMap(t, s, spool.StateRetained, ""); got["good"] != "intact-value" {
		t.Fatalf("retained after salvage = %v", got)
	}
	if got := stateMap(t, s, spool.StateClients, ""); len(got) != 0 {
		t.Fatalf("the damaged record came back: %v", got)
	}
}

const stEnvPath = "FERRY_STATE_POWERCUT_PATH"

// runStatePowerCutChild is the traced child of TestStatePowerCut (TestMain
// runs it when stEnvPath is set): it keeps writing the state of 8 topics
// (a Put with its state, or an ApplyState, from 4 goroutines, one per
// kind: retained messages, session records, subscriptions, inflight
// messages) and prints "state KIND KEY SEQ" after each returned. It never
// returns.
func runStatePowerCutChild() {
	path := os.Getenv(stEnvPath)
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "open: %v\n", err)
		os.Exit(2)
	}
	ctx := context.Background()
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for seq := range 150 {
				topic := fmt.Sprintf("t%d", (g*2+seq)%8)
				v := fmt.Appendf(nil, "%s|%06d|%d|%s", topic, seq, g, bytes.Repeat([]byte("x"), 60+seq%40))
				var err error
				kind := spool.StateKind(g % int(spool.StateKinds))
				op := spool.StateOp{Kind: kind, Key: []byte(topic + "/" + strconv.Itoa(g)), Value: v}
				if seq%2 == 0 {
					_, err = s.Put(ctx, spool.Entry{Data: v, State: []spool.StateOp{op}})
				} else {
					err = s.ApplyState(ctx, op)
				}
				if err != nil {
					fmt.Printf("error %v\n", err)
					return
				}
				fmt.Printf("state %d %s/%d %d\n", kind, topic, g, seq)
			}
		}()
	}
	for range 4 {
		<-done
	}
	os.Exit(0) // no Close: as a crash would leave it
}

// TestStatePowerCut builds crash images from a syscall trace of state
// writes (the spool's power-cut tool, spooltest) and opens each: every one
// opens or salvages, and every key of every kind holds a value at least as
// new as the last write of it that returned before the cut.
func TestStatePowerCut(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	if err := spooltest.HaveStrace(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		dir = d
	}
	path := filepath.Join(dir, "spool.db")
	// Not testkit.StartChild: the child runs under strace (spooltest.Record),
	// which starts and reaps it and hands back its output in the trace.
	cmd := testkit.Command("-test.run=^$")
	cmd.Env = append(os.Environ(), stEnvPath+"="+path)
	ctx, cancel := context.WithTimeout(t.Context(), testkit.Timeout(2*time.Minute))
	defer cancel()
	tr, err := spooltest.Record(ctx, cmd, filepath.Join(dir, "trace.txt"), path)
	if err != nil {
		t.Fatalf("recording: %v", err)
	}
	type write struct {
		key string
		seq int
		at  int
	}
	var writes []write
	for _, l := range tr.Lines() {
		f := strings.Fields(l.Text)
		if len(f) == 4 && f[0] == "state" {
			n, _ := strconv.Atoi(f[3])
			writes = append(writes, write{f[1] + " " + f[2], n, l.At})
		} else if len(f) > 0 && f[0] == "error" {
			t.Fatalf("child: %s", l.Text)
		}
	}
	cuts := tr.Cuts(path)
	if len(writes) < 300 || len(cuts) < 10 {
		t.Fatalf("%d writes, %d syncs: nothing to test", len(writes), len(cuts))
	}
	rng := rand.New(rand.NewPCG(7, 16))
	images := 24
	clean, salvaged := 0, 0
	for i := range images {
		c := cuts[rng.IntN(len(cuts))]
		if i == 0 {
			c = cuts[len(cuts)-1]
		}
		b, desc := tr.Image(path, c, rng, spooltest.ImageOptions{Keep: -1})
		p := filepath.Join(dir, fmt.Sprintf("image-%02d.db", i))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		want := map[string]int{}
		for _, w := range writes {
			if w.at < c.Horizon {
				want[w.key] = max(want[w.key], w.seq)
			}
		}
		s, err := spool.Open(p, spool.Options{LockTimeout: 100 * time.Millisecond})
		if err != nil {
			t.Errorf("image %d (%s): Open: %v", i, desc, err)
			continue
		}
		if s.Salvaged() != nil {
			salvaged++
		} else {
			clean++
		}
		got := map[string]int{}
		for kind := range spool.StateKinds {
			err := s.IterateState(kind, nil, func(k, v []byte) error {
				f := strings.Split(string(v), "|")
				if len(f) != 4 {
					t.Errorf("image %d: %s: garbled value %q", i, spool.StateKindNames[kind], v)
					return nil
				}
				got[fmt.Sprintf("%d %s", kind, k)], _ = strconv.Atoi(f[1])
				return nil
			})
			if err != nil {
				t.Errorf("image %d: %s: %v", i, spool.StateKindNames[kind], err)
			}
		}
		for k, n := range want {
			if g, ok := got[k]; !ok || g < n {
				t.Errorf("image %d (%s): %s holds seq %d (present %v), but seq %d had returned before the cut", i, desc, k, g, ok, n)
			}
		}
		_ = s.Close()
	}
	t.Logf("%d state writes, %d syncs; %d images: %d clean, %d salvaged", len(writes), len(cuts)-1, images, clean, salvaged)
}
