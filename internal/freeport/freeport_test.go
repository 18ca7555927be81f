package freeport

import "testing"

func TestLoopbackNeverTwice(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		p, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d given twice", p)
		}
		seen[p] = true
	}
}
