// Package passwordhash holds the bounds of the bcrypt hashes Ferry accepts,
// shared by the configuration (which refuses a hash out of bounds) and the
// gateway's Auth and HashPassword. It is internal so that the gateway's
// tests, and only they, can lower the minimum to use fast hashes.
package passwordhash

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/bcrypt"
)

// DefaultCost is the cost a new hash gets when none is asked for: bcrypt's
// default, about 50–80 ms per check on a Raspberry Pi 4.
const DefaultCost = bcrypt.DefaultCost

// MinCost and MaxCost bound the cost of a password hash. Below the minimum
// a stolen hash is cheap to crack, and a wrong password answers measurably
// faster than an unknown user (whose check runs against a hash of the
// users' usual cost), which tells who exists; above the maximum each login
// takes seconds on a Raspberry Pi.
const (
	MinCost = 10
	MaxCost = 13
)

// Floor is the minimum in force: MinCost, lowered by tests only.
var Floor = MinCost

// Check returns the cost of a bcrypt hash, or why it is refused.
func Check(h string) (int, error) {
	cost, err := bcrypt.Cost([]byte(h))
	if err != nil {
		return 0, errors.New("not a bcrypt hash (ferry passwd prints one)")
	}
	if cost < Floor || cost > MaxCost {
		return 0, fmt.Errorf("bcrypt cost must be %d..%d (got %d): make a new hash with ferry passwd", Floor, MaxCost, cost)
	}
	return cost, nil
}
