package gateway

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// go-stomp's client (a real third-party peer in the end-to-end tests)
	// leaves a goroutine behind when a receipt wait times out: its leak.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/go-stomp/stomp/v3.waitWithTimeout.func1"))
}
