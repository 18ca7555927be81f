package testkit

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// ScaleEnv is the environment variable that multiplies every hang guard.
const ScaleEnv = "FERRY_TEST_TIMEOUT_SCALE"

// DefaultWait is the hang guard of Wait: long enough that only a hang
// reaches it on any machine this project runs on.
const DefaultWait = 60 * time.Second

// Scale returns the factor from FERRY_TEST_TIMEOUT_SCALE: 1 when unset or
// not a positive number.
func Scale() float64 {
	if v, err := strconv.ParseFloat(os.Getenv(ScaleEnv), 64); err == nil && v > 0 {
		return v
	}
	return 1
}

// Timeout returns d multiplied by Scale: the bound of a hang guard.
func Timeout(d time.Duration) time.Duration {
	return time.Duration(float64(d) * Scale())
}

// After is time.After(Timeout(d)), for a select that guards a wait.
func After(d time.Duration) <-chan time.Time { return time.After(Timeout(d)) }

// WaitUntil polls cond until it holds. It fails the test when cond still
// does not hold after Timeout(guard): a hang guard, not a statement about
// how fast anything is.
func WaitUntil(t testing.TB, guard time.Duration, what string, cond func() bool) {
	t.Helper()
	d := Timeout(guard)
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("hang guard: still waiting for %s after %v (%s=%g)", what, d, ScaleEnv, Scale())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Wait is WaitUntil with DefaultWait.
func Wait(t testing.TB, what string, cond func() bool) {
	t.Helper()
	WaitUntil(t, DefaultWait, what, cond)
}
