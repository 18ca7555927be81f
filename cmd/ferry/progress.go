package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progressEvery is how often a long operation's state is sampled and
// redrawn on a terminal.
const progressEvery = 250 * time.Millisecond

// progress shows a long operation: a line redrawn in place on a terminal,
// plain lines (at most one a second) otherwise, so logs stay readable.
type progress struct {
	w     io.Writer
	tty   bool
	mu    sync.Mutex // during draws from a ticker goroutine
	last  time.Time
	drawn bool
}

func newProgress(w io.Writer) *progress {
	_, tty := terminal(w)
	return &progress{w: w, tty: tty}
}

// bar draws done of total (total 0: no bar).
func bar(done, total int) string {
	if total <= 0 {
		return ""
	}
	n := min(30, max(0, 30*done/total))
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", 30-n) + "] "
}

// step reports done of total (total 0: unknown).
func (p *progress) step(what string, done, total int) {
	p.line(fmt.Sprintf("%s%s %d/%d", bar(done, total), what, done, total))
}

// line shows the operation's current state.
func (p *progress) line(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", s)
		p.drawn = true
		return
	}
	if time.Since(p.last) < time.Second {
		return
	}
	p.last = time.Now()
	fmt.Fprintln(p.w, s)
}

// during runs op, showing sample() at its start and every progressEvery
// until it returns.
func (p *progress) during(sample func() string, op func()) {
	p.line(sample())
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				p.line(sample())
			}
		}
	}()
	op()
	close(stop)
	<-stopped
}

func (p *progress) done(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, msg)
}
