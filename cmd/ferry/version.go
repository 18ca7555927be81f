package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/ferrymq/ferry/gateway"
	"github.com/ferrymq/ferry/spool"
)

// Set by the Makefile: -ldflags '-X main.commit=… -X main.buildDate=…'. A
// plain `go build` or `go install` leaves them empty; the Go toolchain's
// own stamp (runtime/debug.ReadBuildInfo) fills in what it knows.
var (
	commit    string
	buildDate string
)

// build says what this binary is.
type build struct {
	Version  string
	Commit   string
	Modified bool   // built from a work tree with uncommitted changes
	Date     string // when it was built; from the VCS stamp: when the commit was made
	DateIs   string // "built" or "committed"
	Go       string
	Platform string
	Spool    int // spool file format version
}

func currentBuild() build {
	b := build{
		Version: gateway.Version, Commit: commit, Date: buildDate, DateIs: "built",
		Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH, Spool: spool.FormatVersion,
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if b.Version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		b.Version = info.Main.Version // go install github.com/ferrymq/ferry/cmd/ferry@v1.2.3
	}
	stamped := b.Commit == ""
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision" && stamped:
			b.Commit = s.Value
		case s.Key == "vcs.modified" && stamped:
			b.Modified = s.Value == "true"
		case s.Key == "vcs.time" && b.Date == "":
			b.Date, b.DateIs = s.Value, "committed"
		}
	}
	return b
}

func printVersion(w io.Writer) {
	b := currentBuild()
	or := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	fmt.Fprintf(w, "ferry %s\n", b.Version)
	mod := ""
	if b.Modified {
		mod = " (with uncommitted changes)"
	}
	fmt.Fprintf(w, "  commit        %s%s\n", or(b.Commit), mod)
	if b.Date == "" {
		fmt.Fprintf(w, "  built         unknown\n")
	} else {
		fmt.Fprintf(w, "  %-13s %s\n", b.DateIs, b.Date)
	}
	fmt.Fprintf(w, "  go            %s %s\n", b.Go, b.Platform)
	fmt.Fprintf(w, "  spool format  %d\n", b.Spool)
}
