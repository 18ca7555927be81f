package firmwaresim

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that devices, sessions and verifiers leave no goroutine
// behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
