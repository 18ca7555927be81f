package config

import (
	"os"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/ferrymq/ferry/gateway/internal/passwordhash"
)

func TestMain(m *testing.M) {
	// Fast hashes for the tests (hashSecret has cost 4).
	passwordhash.Floor = bcrypt.MinCost
	os.Exit(m.Run())
}
