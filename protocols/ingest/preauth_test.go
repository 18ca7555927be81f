package ingest

import "testing"

func TestPreAuthEvictsOldest(t *testing.T) {
	evicted := 0
	p := NewPreAuth(2, func() { evicted++ })
	var closed []int
	a := p.Add(func() { closed = append(closed, 1) })
	b := p.Add(func() { closed = append(closed, 2) })
	c := p.Add(func() { closed = append(closed, 3) })
	if len(closed) != 1 || closed[0] != 1 || evicted != 1 {
		t.Fatalf("third connection into a set of 2: closed %v, onEvict %d times; want the oldest (1) closed once", closed, evicted)
	}
	if a.Context().Err() == nil {
		t.Error("the evicted connection's context did not end")
	}
	if b.Context().Err() != nil || c.Context().Err() != nil {
		t.Error("a connection that was not evicted has its context ended")
	}
	if p.Len() != 2 {
		t.Errorf("Len %d, want 2", p.Len())
	}
	b.Done()
	b.Done() // twice is harmless
	a.Done() // evicted, then done: harmless
	if p.Len() != 1 || b.Context().Err() == nil {
		t.Errorf("after Done: Len %d (want 1), context of the done one ended: %v", p.Len(), b.Context().Err() != nil)
	}
	p.Add(func() { closed = append(closed, 4) })
	if len(closed) != 1 {
		t.Errorf("a set with room evicted: closed %v", closed)
	}
	u := NewPreAuth(0, nil)
	for range 100 {
		u.Add(func() { t.Error("an unbounded set evicted") })
	}
}
