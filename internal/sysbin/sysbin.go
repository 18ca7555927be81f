// Package sysbin finds the system programs Ferry's tests and benchmarks run
// next to it (mosquitto, nats-server): Debian installs servers in /usr/sbin,
// outside a normal user's PATH.
package sysbin

import (
	"os"
	"os/exec"
	"path/filepath"
)

// Find returns the path of the program name ("" if none): the environment
// variable env when set, else PATH, else /usr/sbin, /usr/local/sbin and
// /usr/local/bin.
func Find(env, name string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/usr/local/bin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
