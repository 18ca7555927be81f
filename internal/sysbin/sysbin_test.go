package sysbin

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFind(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "ferry-test-prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FERRY_TEST_PROG", prog)
	if got := Find("FERRY_TEST_PROG", "no-such-program-here"); got != prog {
		t.Errorf("with the variable set: %q, want %q", got, prog)
	}
	t.Setenv("FERRY_TEST_PROG", "")
	t.Setenv("PATH", dir)
	if got := Find("FERRY_TEST_PROG", "ferry-test-prog"); got != prog {
		t.Errorf("from PATH: %q, want %q", got, prog)
	}
	if got := Find("FERRY_TEST_PROG", "no-such-program-here"); got != "" {
		t.Errorf("a program that is nowhere: %q", got)
	}
}
