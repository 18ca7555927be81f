package ingest

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestRefusalLimiter: the first refusal of a reason is logged, the next
// ones within the interval are not, and the next line says how many were
// left out; reasons do not share a budget.
func TestRefusalLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var l RefusalLimiter
		if ok, n := l.Allow(ReasonNotAuthorized); !ok || n != 0 {
			t.Fatalf("first refusal: %v %d, want logged", ok, n)
		}
		for range 5 {
			if ok, _ := l.Allow(ReasonNotAuthorized); ok {
				t.Fatal("a refusal within the interval was let through")
			}
		}
		if ok, _ := l.Allow(ReasonTooLarge); !ok {
			t.Fatal("another reason shares the budget")
		}
		time.Sleep(RefusalLogInterval - time.Nanosecond)
		if ok, _ := l.Allow(ReasonNotAuthorized); ok {
			t.Fatal("let through before the interval passed")
		}
		time.Sleep(time.Nanosecond)
		if ok, n := l.Allow(ReasonNotAuthorized); !ok || n != 6 {
			t.Fatalf("after the interval: %v, suppressed %d, want logged with 6", ok, n)
		}
		if ok, _ := l.Allow(Reason(200)); !ok {
			t.Fatal("an unknown reason is not logged")
		}
	})
}
