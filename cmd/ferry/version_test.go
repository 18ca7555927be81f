package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/spool"
)

// TestVersion: ferry version names the version, commit, build date, Go
// version and spool format (it printed the version alone).
func TestVersion(t *testing.T) {
	defer func(c, d string) { commit, buildDate = c, d }(commit, buildDate)
	commit, buildDate = "0123456789abcdef0123456789abcdef01234567", "2026-01-02T03:04:05Z"
	code, out, _ := runCLI(t, "", "version")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{
		"ferry ",
		"commit        " + commit,
		"built         " + buildDate,
		"go            " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		"spool format  " + strconv.Itoa(spool.FormatVersion),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}

// TestVersionFromMakefile builds ferry with the -ldflags of `make build`
// and checks that they reach `ferry version` (an -X naming a variable that
// does not exist is silently ignored by the linker).
func TestVersionFromMakefile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dry, err := exec.Command("make", "-s", "-n", "-C", "../..", "build", "VERSION=v9.8.7", "COMMIT=feedc0de", "BUILD_DATE=2026-01-02T03:04:05Z").Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	m := regexp.MustCompile(`-ldflags '([^']*)'`).FindSubmatch(dry)
	if m == nil {
		t.Fatalf("no -ldflags in make build:\n%s", dry)
	}
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-ldflags", string(m[1]), "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ferry v9.8.7\n", "commit        feedc0de\n", "built         2026-01-02T03:04:05Z\n", "spool format  "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}
