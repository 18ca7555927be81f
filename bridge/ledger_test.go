package bridge

import (
	"testing"
	"time"
)

func TestJudge(t *testing.T) {
	alone := loss{inFlight: 1, alone: true, gate: true, sinceSent: 30 * time.Millisecond, causalMin: 10 * time.Millisecond}
	with := func(f func(*loss)) loss { l := alone; f(&l); return l }
	for _, tc := range []struct {
		name string
		l    loss
		want verdict
	}{
		{"nothing in flight", loss{}, noEvidence},
		{"shutdown", with(func(l *loss) { l.shutdown, l.before = true, true }), noEvidence},
		{"window lost", loss{inFlight: 64, sinceSent: time.Second, causalMin: time.Millisecond}, hint},
		{"window stalled", loss{inFlight: 64, stalled: true}, hint},
		{"broker read it and closed", with(func(l *loss) { l.before, l.gap = true, 100*time.Microsecond }), refusal},
		{"answer, then a loss too late to be the broker's", with(func(l *loss) { l.before, l.gap = true, 5*time.Millisecond }), strike},
		{"broker read past it: the link failed", with(func(l *loss) { l.before, l.after = true, true }), noEvidence},
		{"broker read past it and stayed silent", with(func(l *loss) { l.before, l.after, l.stalled = true, true, true }), refusal},
		{"dark link", with(func(l *loss) { l.stalled = true }), noEvidence},
		{"dark link after an answer", with(func(l *loss) { l.stalled, l.before = true, true }), noEvidence},
		{"no answers, late loss", alone, strike},
		{"no answers, the link never answered on this connection", with(func(l *loss) { l.gate = false }), noEvidence},
		{"no answers, too soon to be the broker's answer", with(func(l *loss) { l.sinceSent = 5 * time.Millisecond }), noEvidence},
		{"no answers, round trip unknown", with(func(l *loss) { l.causalMin = 0 }), noEvidence},
	} {
		if got := judge(tc.l); got != tc.want {
			t.Errorf("%s: judge(%+v) = %v, want %v", tc.name, tc.l, got, tc.want)
		}
	}
}

func TestLedgerOrder(t *testing.T) {
	var l ledger
	// Batch 5 is being dispatched; a cut returns 10 and 12 of topic a.
	l.giveBack("a", 10, 5)
	l.giveBack("a", 12, 5)
	if !l.blocked("a", 11) || l.blocked("a", 10) || l.blocked("b", 11) {
		t.Fatal("blocked: want only newer ids of topic a behind 10")
	}
	if l.take("a", 10) != nil || !l.blocked("a", 13) || l.blocked("a", 11) {
		t.Fatal("after taking 10: 13 waits for 12, 11 does not")
	}
	// Batch 6 was leased after the nack: it holds 12 before anything newer.
	l.prune(6)
	if l.blocked("a", 13) || len(l.returned) != 0 {
		t.Fatalf("prune left %v", l.returned)
	}
	// A nack that completes while batch 6's Lease is in progress is
	// recorded with batch 6 and still holds batch 6 back.
	l.giveBack("a", 20, 6)
	l.prune(6)
	if !l.blocked("a", 21) {
		t.Fatal("pruned an entry the current batch needs")
	}
}

func TestLedgerSuspects(t *testing.T) {
	var l ledger
	e := l.suspect(7)
	e.refusals++
	if l.suspect(7).refusals != 1 || l.take("t", 7) != e {
		t.Fatal("evidence not kept")
	}
	l.clear(7)
	if l.take("t", 7) != nil {
		t.Fatal("cleared suspect still there")
	}
	for id := range uint64(maxSuspects + 10) {
		l.suspect(1000 + id)
	}
	if len(l.suspects) != maxSuspects || l.suspects[1000] != nil || l.suspects[1000+maxSuspects+9] == nil {
		t.Fatalf("%d suspects kept; want the newest %d", len(l.suspects), maxSuspects)
	}
}
