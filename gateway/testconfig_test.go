package gateway

import (
	"testing"

	"github.com/ferrymq/ferry/gateway/config"
)

// minimal is the smallest valid configuration.
const minimal = "gateway_id: gw1\nbridge:\n  upstream: tcp://127.0.0.1:1884\n"

// hashSecret is bcrypt("secret") at the minimum cost.
const hashSecret = "$2a$04$77og0tde3kc353pfuKN9semMFqgEWeTxMlzEJCAIHVamDRxcnEXdm"

func mustParse(t *testing.T, src string) *config.Config {
	t.Helper()
	c, err := config.Parse("ferry.yaml", []byte(src), nil)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	return c
}
