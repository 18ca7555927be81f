package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress shows a long operation: a bar redrawn in place on a terminal,
// plain lines (at most one a second) otherwise, so logs stay readable.
type progress struct {
	w     io.Writer
	tty   bool
	last  time.Time
	drawn bool
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

// step reports done of total (total 0: unknown).
func (p *progress) step(what string, done, total int) {
	if p.tty {
		bar := ""
		if total > 0 {
			n := min(30, 30*done/total)
			bar = "[" + strings.Repeat("=", n) + strings.Repeat(" ", 30-n) + "] "
		}
		fmt.Fprintf(p.w, "\r%s%s %d/%d", bar, what, done, total)
		p.drawn = true
		return
	}
	if time.Since(p.last) < time.Second {
		return
	}
	p.last = time.Now()
	if total > 0 {
		fmt.Fprintf(p.w, "%s: %d/%d\n", what, done, total)
	} else {
		fmt.Fprintf(p.w, "%s…\n", what)
	}
}

func (p *progress) done(msg string) {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, msg)
}
