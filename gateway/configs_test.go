package gateway

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrymq/ferry/gateway/config"
)

// TestConfigsDir loads every configuration in configs/ and builds a router
// and an authorizer from each. File existence is not checked (pi.yaml names
// certificates of the target machine), and ${ENV} references resolve to
// their defaults.
func TestConfigsDir(t *testing.T) {
	files, err := filepath.Glob("../configs/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("configs: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			c, err := config.Parse(f, data, func(string) (string, bool) { return "", false })
			if err != nil {
				t.Fatalf("\n%v", err)
			}
			if _, err := NewRouter(c); err != nil {
				t.Fatal(err)
			}
			if _, err := NewAuth(c); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// FuzzLoadConfig feeds arbitrary documents to the loader: it must never
// panic, and a configuration it accepts must build a router and an
// authorizer and validate again unchanged.
func FuzzLoadConfig(f *testing.F) {
	files, _ := filepath.Glob("../configs/*.yaml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(minimal))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse("fuzz.yaml", data, func(k string) (string, bool) { return "v", k == "SET" })
		if err != nil {
			var ce *config.Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error is not a *config.Error with problems: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not validate again: %v", err)
		}
		r, err := NewRouter(c)
		if err != nil {
			t.Fatalf("NewRouter on a valid config: %v", err)
		}
		r.Route("sensors/x")
		if _, err := NewAuth(c); err != nil {
			t.Fatalf("NewAuth on a valid config: %v", err)
		}
		_ = c.SpoolOptions(nil)
	})
}
