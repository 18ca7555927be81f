package gateway

import (
	"os"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry/gateway/internal/passwordhash"
)

func TestMain(m *testing.M) {
	if p := os.Getenv(downstreamChildEnv); p != "" {
		os.Exit(runDownstreamChild(p))
	}
	// Fast hashes for the tests (hashSecret has cost 4); TestBcryptCostRange
	// checks the real bound.
	passwordhash.Floor = bcrypt.MinCost
	// go-stomp's client (a real third-party peer in the end-to-end tests)
	// leaves a goroutine behind when a receipt wait times out: its leak.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/go-stomp/stomp/v3.waitWithTimeout.func1"))
}
